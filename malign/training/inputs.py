"""The training inputs: random smoke batches, synthetic demo data, record shards under a strategy."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tensorflow as tf

from malign.config import ExperimentConfig, ModelConfig
from malign.training.checkpoints import write_text_atomically


def random_dataset(model_config: ModelConfig, batch_size: int, seed: int = 0,
                   pipeline_id: int = 0, start_step: int = 0) -> tf.data.Dataset:
    """Endless random batches shaped like real ones; batch k is a function of (seed, k).

    Images are uniform in [0, 1]; captions are ``[CLS] random ids [SEP]`` of random
    length, padded with 0 (the fixed special ids [PAD]=0, [CLS]=2, [SEP]=3).

    Args:
        model_config: gives image size, sequence length and vocabulary size.
        batch_size: rows per batch (per replica under a strategy).
        seed: random seed.
        pipeline_id: input pipeline index (different pipelines get different data).
        start_step: first batch index (to resume in place).

    Example:
        >>> from malign.presets import get_preset
        >>> batch = next(iter(random_dataset(get_preset("tiny"), 2)))
        >>> batch["image"].shape, batch["token_ids"].dtype
        (TensorShape([2, 32, 32, 3]), tf.int32)
    """
    size = model_config.image.image_size
    length = model_config.text.sequence_length
    vocab = model_config.text.vocabulary_size

    def make(step):
        base = tf.stack([tf.cast(seed, tf.int64), step * 1024 + pipeline_id])
        images = tf.random.stateless_uniform([batch_size, size, size, 3], base)
        lengths = tf.random.stateless_uniform([batch_size, 1], base + 1, 3, length + 1, tf.int32)
        ids = tf.random.stateless_uniform([batch_size, length], base + 2, 5, vocab, tf.int32)
        positions = tf.range(length)[None, :]
        ids = tf.where(positions == 0, 2, ids)
        ids = tf.where(positions == lengths - 1, 3, ids)
        mask = tf.cast(positions < lengths, tf.int32)
        return {"image": images, "token_ids": ids * mask, "padding_mask": mask}

    return tf.data.Dataset.range(start_step, 2**62).map(make).prefetch(2)


def synthetic_patterns(directory: Path) -> tuple[str, str]:
    """The shard patterns of the synthetic train and held-out sets in ``directory``."""
    from malign.data import schema

    return (schema.shard_pattern(str(directory / "train")),
            schema.shard_pattern(str(directory / "heldout")))


def prepare_synthetic(directory: Path, experiment: ExperimentConfig,
                      label: str = "malign train") -> tuple[str, str]:
    """Writes the synthetic train and held-out sets (again if their settings changed).

    Each set's ``<name>.done`` records the scene count, image size and seed it was
    written with.

    Returns:
        Their shard patterns.
    """
    import glob

    from malign.data import synthetic

    n = experiment.data.synthetic_examples
    size = experiment.model.image.image_size
    seed = experiment.training.seed
    patterns = synthetic_patterns(directory)
    for name, count, split_seed, pattern in (
            ("train", n, seed, patterns[0]),
            ("heldout", max(100, n // 10), seed + 100_003, patterns[1])):
        prefix = directory / name
        done = directory / f"{name}.done"
        settings = {"count": count, "image_size": size, "seed": split_seed}
        if done.exists() and _done_settings(done) == settings:
            continue
        directory.mkdir(parents=True, exist_ok=True)
        for stale in glob.glob(pattern):
            os.remove(stale)
        print(f"{label}: writing {count} synthetic scenes to {prefix}-*", flush=True)
        synthetic.write_synthetic(prefix, count, image_size=size, seed=split_seed,
                                  verbose=False)
        write_text_atomically(done, json.dumps(settings) + "\n")
    return patterns


def _done_settings(done: Path) -> dict | None:
    """The settings a ``.done`` marker records (None for a marker that records only a count,
    as written before the settings were recorded: the set is written again)."""
    try:
        value = json.loads(done.read_text())
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def data_patterns(experiment: ExperimentConfig, workdir: Path) -> tuple[str, str]:
    data = experiment.data
    if data.train_pattern == "synthetic":
        train_pattern, heldout = synthetic_patterns(workdir / "data")
        return train_pattern, data.eval_pattern or heldout
    return data.train_pattern, data.eval_pattern


def dataset_factory(experiment: ExperimentConfig, train_pattern: str, start_step: int,
                     tokenizer: Any) -> Callable[[tf.distribute.InputContext], tf.data.Dataset]:
    data = experiment.data
    training = experiment.training

    if train_pattern == "random":
        def random_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
            batch = ctx.get_per_replica_batch_size(training.global_batch_size)
            return random_dataset(experiment.model, batch, seed=training.seed,
                                  pipeline_id=ctx.input_pipeline_id, start_step=start_step)
        return random_fn

    from malign import data as data_lib

    def files_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        return data_lib.make_dataset(
            train_pattern, tokenizer,
            image_size=experiment.model.image.image_size,
            global_batch_size=training.global_batch_size,
            training=True,
            input_context=ctx,
            languages=data.languages or None,
            seed=training.seed + start_step,
            shuffle_buffer=data.shuffle_buffer,
        )
    return files_fn


