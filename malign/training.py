"""Optimizer, learning-rate schedule, callbacks and the fit wrapper.

``train(experiment, workdir)`` runs a whole experiment with Keras ``fit`` under
the configured ``tf.distribute`` strategy: it writes the resolved config to
``workdir/config.json``, checkpoints every ``steps_per_checkpoint`` steps
(``workdir/checkpoints/step_XXXXXXXX.keras``, written atomically), keeps a
``BackupAndRestore`` state in ``workdir/backup`` so a killed run resumes at its
last checkpoint, logs to TensorBoard in ``workdir/logs``, and saves the final
model as ``workdir/model.keras``.

A Keras "epoch" here is one checkpoint interval over a repeated dataset:
Keras 3 restores at epoch boundaries only. A resumed run also restores its place
in the data: random smoke data is a function of the step, and file data is
reshuffled with a seed derived from the resumed step, so no example from the
start of the run is replayed in order.

Example:
    >>> from malign.config import ExperimentConfig, TrainingConfig
    >>> from malign.presets import get_preset
    >>> exp = ExperimentConfig(model=get_preset("tiny"), training=TrainingConfig(
    ...     global_batch_size=4, steps=2, steps_per_checkpoint=2, warmup_steps=1))
    >>> import tempfile
    >>> model, history = train(exp, tempfile.mkdtemp())  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from malign import distributed
from malign.config import ConfigError, ExperimentConfig, ModelConfig, TrainingConfig
from malign.models.align_model import AlignModel

__all__ = [
    "WarmupDecay",
    "make_schedule",
    "make_optimizer",
    "FusedLamb",
    "FusedAdamW",
    "combine_duplicate_rows",
    "random_dataset",
    "StepCheckpoint",
    "train",
    "resolve_jit_compile",
]

# Parameters matched by these names get no weight decay: biases, norm scales and
# offsets, and the temperature / logit bias.
NO_DECAY_NAMES = ("bias", "gamma", "beta", "temperature")


@keras.saving.register_keras_serializable(package="malign")
class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to ``peak``, then linear or cosine decay to ``end`` at ``total_steps``.

    Args:
        peak: learning rate at the end of warm-up.
        warmup_steps: steps of linear warm-up from 0.
        total_steps: step at which the decay reaches ``end``.
        end: final learning rate.
        decay: "linear", "cosine" or "constant".

    Example:
        >>> s = WarmupDecay(1e-3, 10, 110)
        >>> [round(float(s(k)), 6) for k in (0, 5, 10, 60, 110)]
        [0.0, 0.0005, 0.001, 0.0005, 0.0]
    """

    def __init__(self, peak: float, warmup_steps: int, total_steps: int, end: float = 0.0,
                 decay: str = "linear"):
        self.peak = float(peak)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)
        self.end = float(end)
        self.decay = decay

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        warm = float(max(self.warmup_steps, 1))
        warmup_lr = self.peak * step / warm
        span = float(max(self.total_steps - self.warmup_steps, 1))
        progress = keras.ops.clip((step - self.warmup_steps) / span, 0.0, 1.0)
        if self.decay == "cosine":
            factor = 0.5 * (1.0 + keras.ops.cos(math.pi * progress))
        elif self.decay == "linear":
            factor = 1.0 - progress
        else:
            factor = keras.ops.ones_like(progress)
        decayed = self.end + (self.peak - self.end) * factor
        if self.warmup_steps == 0:
            return decayed
        return keras.ops.where(step < self.warmup_steps, warmup_lr, decayed)

    def get_config(self) -> dict:
        return {"peak": self.peak, "warmup_steps": self.warmup_steps,
                "total_steps": self.total_steps, "end": self.end, "decay": self.decay}


def make_schedule(cfg: TrainingConfig) -> WarmupDecay:
    """The learning-rate schedule of a training config."""
    return WarmupDecay(cfg.learning_rate, cfg.warmup_steps, cfg.steps, cfg.end_learning_rate,
                       cfg.decay)


# Variables with at least this many elements get the fused update on CPU (see
# _FusedLargeVariableUpdates): the 250k-row token embeddings of the multilingual presets.
FUSED_MIN_SIZE = 1 << 20


def _local_variable(variable):
    """The plain tf.Variable behind a Keras variable, on this device inside an update."""
    if isinstance(variable, keras.Variable):
        variable = variable.value
    if hasattr(variable, "_get_on_device_or_primary"):  # a tf.distribute variable
        variable = variable._get_on_device_or_primary()
    return variable


def combine_duplicate_rows(gradient):
    """An IndexedSlices gradient with each row once, holding the sum of its slices.

    Rows repeat in the gradient of a gather (a token used twice in a batch, or by
    several replicas: their slices are concatenated, not summed). The row's gradient is
    the sum. Keras' Adam and LAMB densify ``g`` for the first moment, but square the
    IndexedSlices *values* before densifying for the second (``ops.square`` maps over the
    values), which would put ``sum(g_i ** 2)`` in ``v`` instead of ``(sum g_i) ** 2``:
    frequent tokens ([CLS], [SEP], common words) would get too small a second moment and
    too large a step. Combining rows first makes the update equal to the dense-gradient
    one. Dense gradients pass through.

    Example:
        >>> g = tf.IndexedSlices(tf.constant([[1.0], [2.0], [3.0]]), tf.constant([4, 1, 4]))
        >>> c = combine_duplicate_rows(g)
        >>> c.indices.numpy().tolist(), c.values.numpy().ravel().tolist()
        ([4, 1], [4.0, 2.0])
    """
    if not isinstance(gradient, tf.IndexedSlices):
        return gradient
    rows, position = tf.unique(gradient.indices)
    values = tf.math.unsorted_segment_sum(gradient.values, position, tf.shape(rows)[0])
    return tf.IndexedSlices(values, rows, gradient.dense_shape)


def _unique_rows(gradient: tf.IndexedSlices):
    """Rows of a gather gradient: (rows [N], sums [N, C], squared sums [N, C]), N = len(indices).

    A repeated row's gradient is the sum of its slices (``combine_duplicate_rows``), and
    its second-moment term the square of that sum, as for a dense gradient. The sums are
    taken in order of occurrence with ``unsorted_segment_sum`` as TensorFlow densifies.
    The shape stays static: slots beyond the number of distinct rows repeat the first
    row and its sums (a scatter of equal values to one row is deterministic).
    """
    n = tf.shape(gradient.indices)[0]
    combined = combine_duplicate_rows(gradient)
    slot = tf.range(n)
    slot = tf.where(slot < tf.shape(combined.indices)[0], slot, 0)
    sums = tf.gather(combined.values, slot)
    return tf.gather(tf.cast(combined.indices, tf.int32), slot), sums, tf.square(sums)


def _row_moments(m_var, v_var, rows, sums, squares, one_minus_beta_1, one_minus_beta_2):
    """Keras' moment expressions on the rows a gradient touches (small, plain TensorFlow)."""
    m_rows = tf.gather(m_var, rows)
    v_rows = tf.gather(v_var, rows)
    return (m_rows + (sums - m_rows) * one_minus_beta_1,
            v_rows + (squares - v_rows) * one_minus_beta_2)


@tf.function(jit_compile=True, autograph=False)
def _fused_moments(m_var, v_var, rows, m_rows, v_rows, g_dense, one_minus_beta_1,
                   one_minus_beta_2):
    """Keras' moment updates ``m + (g - m) * (1 - beta_1)``, ``v + (g^2 - v) * (1 - beta_2)``, in place.

    With a dense gradient this is the Keras expression. With a row gradient, rows it does
    not touch have g = 0, so they get ``m + (-m) * (1 - beta_1)`` (bit-identical to
    ``m + (0 - m) * (1 - beta_1)``), and the touched rows are then overwritten with their
    values from ``_row_moments``: Keras' dense result, without a dense gradient.
    """
    m = m_var.read_value()
    v = v_var.read_value()
    if g_dense is not None:
        m_var.assign(m + (g_dense - m) * one_minus_beta_1)
        v_var.assign(v + (tf.square(g_dense) - v) * one_minus_beta_2)
        return
    m_var.assign(m + (-m) * one_minus_beta_1)
    v_var.assign(v + (-v) * one_minus_beta_2)
    m_var.scatter_update(tf.IndexedSlices(m_rows, rows))
    v_var.scatter_update(tf.IndexedSlices(v_rows, rows))


def _decayed(w, lr, decay):
    return w - w * decay * lr


def _lamb_direction(m, v, beta_1_power, beta_2_power, epsilon):
    return (m / (1.0 - beta_1_power)) / (tf.sqrt(v / (1.0 - beta_2_power)) + epsilon)


# Block size (elements) of the norms below.
_NORM_BLOCK = 1 << 22


def _sum_of_squares(fn, rows: int, row_size: int):
    """Sum of ``fn(start, stop) ** 2`` over row blocks of a variable, inside XLA.

    XLA on CPU materialises an elementwise producer of a reduction over a whole
    512 MB variable (a fresh, page-faulted temporary per step); over blocks of 16 MB the
    temporaries are small and reused. The sum order differs from one reduction's only in
    float32 rounding.
    """
    block = max(1, _NORM_BLOCK // max(row_size, 1))
    total = 0.0
    for start in range(0, rows, block):
        total += tf.reduce_sum(tf.square(fn(start, min(start + block, rows))))
    return total


@tf.function(jit_compile=True, autograph=False)
def _fused_lamb_apply(variable, m_var, v_var, lr, decay, beta_1_power, beta_2_power, epsilon):
    """LAMB's trust ratio ||decayed w|| / ||update|| and step with weight decay, in place."""
    w, m, v = (tf.reshape(x.read_value(), [x.shape[0], -1]) if x.shape.rank else
               tf.reshape(x.read_value(), [1, 1]) for x in (variable, m_var, v_var))
    rows, row_size = w.shape
    w_norm = tf.sqrt(_sum_of_squares(
        lambda a, b: _decayed(w[a:b], lr, decay), rows, row_size))
    g_norm = tf.sqrt(_sum_of_squares(
        lambda a, b: _lamb_direction(m[a:b], v[a:b], beta_1_power, beta_2_power, epsilon),
        rows, row_size))
    ratio = tf.where(w_norm > 0, tf.where(g_norm > 0, w_norm / g_norm, 1.0), 1.0)
    update = _lamb_direction(m_var.read_value(), v_var.read_value(), beta_1_power,
                             beta_2_power, epsilon)
    variable.assign(_decayed(variable.read_value(), lr, decay) - ratio * lr * update)


@tf.function(jit_compile=True, autograph=False)
def _fused_adam_apply(variable, m_var, v_var, lr, decay, alpha, epsilon):
    """Adam's step with decoupled weight decay, in place."""
    m = m_var.read_value()
    v = v_var.read_value()
    variable.assign(_decayed(variable.read_value(), lr, decay)
                    - (m * alpha) / (tf.sqrt(v) + epsilon))


class _FusedLargeVariableUpdates:
    """Runs the optimizer update of large variables on CPU as one fused XLA program.

    Keras' optimizers update a variable with a chain of TensorFlow ops, each of which
    allocates a new array the size of the variable: about ten for LAMB plus weight decay,
    and the densified gradient first. For a 250,000 x 512 token embedding (512 MB) each
    fresh allocation is page-faulted in, so the update of that one variable took most of
    a student train step on a 2-core CPU. The fused program computes the same
    expressions (weight decay, both moments over *all* rows, bias correction, the LAMB
    trust ratio) in a few passes and in place, and never densifies a row gradient.
    It is not a sparse ("lazy") Adam: the moments of rows that got no gradient still
    decay, as in Keras. Results equal Keras' update on the dense gradient to float32
    rounding. Both paths combine the repeated rows of a gather gradient first
    (``combine_duplicate_rows``), so ``v`` gets the squared row gradient, as it would
    from the dense gradient, not Keras' sum of squared slices.

    Used on CPU for variables with at least ``fused_min_size`` elements; everything else
    (and every variable on GPU/TPU, where the whole step is XLA-compiled) takes the Keras
    path.
    """

    def __init__(self, *args, fused_min_size: int = FUSED_MIN_SIZE, **kwargs):
        super().__init__(*args, **kwargs)
        self.fused_min_size = int(fused_min_size)

    def get_config(self) -> dict:
        config = super().get_config()
        config["fused_min_size"] = self.fused_min_size
        return config

    def _fuses(self, variable) -> bool:
        if self.fused_min_size <= 0 or getattr(self, "amsgrad", False):
            return False
        if self.gradient_accumulation_steps or self.use_ema:
            return False
        size = 1
        for dim in variable.shape:
            size *= int(dim)
        return size >= self.fused_min_size and distributed.device_type() == "CPU"

    def _apply_weight_decay(self, variables):
        # Fused variables are decayed inside their fused update (same expression).
        super()._apply_weight_decay([v for v in variables if not self._fuses(v)])

    def _update_moments(self, gradient, variable) -> dict:
        """Updates m and v of ``variable`` in place; returns the tensors the step needs."""
        dtype = variable.dtype
        index = self._get_variable_index(variable)
        m_var = _local_variable(self._momentums[index])
        v_var = _local_variable(self._velocities[index])
        one_minus_beta_1 = tf.constant(1 - self.beta_1, dtype)
        one_minus_beta_2 = tf.constant(1 - self.beta_2, dtype)
        gradient = tf.cast(gradient, dtype)
        if isinstance(gradient, tf.IndexedSlices):
            rows, sums, squares = _unique_rows(gradient)
            m_rows, v_rows = _row_moments(m_var, v_var, rows, sums, squares, one_minus_beta_1,
                                          one_minus_beta_2)
            _fused_moments(m_var, v_var, rows, m_rows, v_rows, None, one_minus_beta_1,
                           one_minus_beta_2)
        else:
            _fused_moments(m_var, v_var, None, None, None, gradient, one_minus_beta_1,
                           one_minus_beta_2)
        decay = 0.0
        if self.weight_decay is not None and self._use_weight_decay(variable):
            decay = self.weight_decay
        return dict(variable=_local_variable(variable), m_var=m_var, v_var=v_var,
                    decay=tf.cast(decay, dtype), epsilon=tf.constant(self.epsilon, dtype))

    def update_step(self, gradient, variable, learning_rate):
        if not self._fuses(variable):
            return super().update_step(combine_duplicate_rows(gradient), variable, learning_rate)
        beta_1_power, beta_2_power = self._bias_corrections(variable)
        lr = tf.cast(learning_rate, variable.dtype)
        state = self._update_moments(gradient, variable)
        self._fused_step(lr, beta_1_power, beta_2_power, state)

    def _fused_step(self, lr, beta_1_power, beta_2_power, state) -> None:
        """The optimizer's own step from the updated moments (``state``), in place."""
        raise NotImplementedError

    def _bias_corrections(self, variable):
        dtype = variable.dtype
        local_step = tf.cast(self.iterations + 1, dtype)
        return (tf.pow(tf.cast(self.beta_1, dtype), local_step),
                tf.pow(tf.cast(self.beta_2, dtype), local_step))


@keras.saving.register_keras_serializable(package="malign")
class FusedLamb(_FusedLargeVariableUpdates, keras.optimizers.Lamb):
    """``keras.optimizers.Lamb`` whose large variables are updated by one fused program on CPU.

    Args:
        fused_min_size: variables with at least this many elements take the fused update
            (on CPU); 0 turns it off.
        **kwargs: ``keras.optimizers.Lamb`` arguments.

    Example:
        >>> FusedLamb(learning_rate=1e-3, weight_decay=1e-5).fused_min_size
        1048576
    """

    def _fused_step(self, lr, beta_1_power, beta_2_power, state) -> None:
        _fused_lamb_apply(lr=lr, beta_1_power=beta_1_power, beta_2_power=beta_2_power, **state)


@keras.saving.register_keras_serializable(package="malign")
class FusedAdamW(_FusedLargeVariableUpdates, keras.optimizers.AdamW):
    """``keras.optimizers.AdamW`` whose large variables are updated by one fused program on CPU.

    Args:
        fused_min_size: variables with at least this many elements take the fused update
            (on CPU); 0 turns it off.
        **kwargs: ``keras.optimizers.AdamW`` arguments.

    Example:
        >>> FusedAdamW(learning_rate=1e-3, weight_decay=1e-5).fused_min_size
        1048576
    """

    def _fused_step(self, lr, beta_1_power, beta_2_power, state) -> None:
        alpha = lr * tf.sqrt(1 - beta_2_power) / (1 - beta_1_power)
        _fused_adam_apply(lr=lr, alpha=alpha, **state)


def make_optimizer(cfg: TrainingConfig, fused_min_size: int = FUSED_MIN_SIZE
                   ) -> keras.optimizers.Optimizer:
    """LAMB or AdamW with the schedule, decoupled weight decay (not on norms/biases).

    On CPU, variables with at least ``fused_min_size`` elements (the token embedding
    of a 250k vocabulary) are updated by one fused XLA program with the same result as
    Keras' update (see ``FusedLamb``). Under ``mixed_float16`` the optimizer is wrapped
    in a ``LossScaleOptimizer``.

    Args:
        cfg: the training config.
        fused_min_size: size threshold of the fused update (0 = Keras' update throughout).

    Example:
        >>> opt = make_optimizer(TrainingConfig(optimizer="adamw", steps=10, warmup_steps=1))
        >>> type(opt).__name__
        'FusedAdamW'
    """
    common = dict(
        learning_rate=make_schedule(cfg),
        beta_1=cfg.beta_1,
        beta_2=cfg.beta_2,
        epsilon=cfg.epsilon,
        weight_decay=cfg.weight_decay or None,
        clipnorm=None,
        global_clipnorm=cfg.clipnorm or None,
        fused_min_size=fused_min_size,
    )
    if cfg.optimizer == "lamb":
        optimizer = FusedLamb(**common)
    else:
        optimizer = FusedAdamW(**common)
    if cfg.weight_decay:
        optimizer.exclude_from_weight_decay(var_names=list(NO_DECAY_NAMES))
    if cfg.mixed_precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def resolve_jit_compile(cfg: TrainingConfig, strategy: tf.distribute.Strategy) -> bool:
    """XLA on TPU and GPU; not on CPU, where it made a step about 7x slower here."""
    if cfg.jit_compile == "auto":
        return distributed.device_type(strategy) != "CPU"
    return cfg.jit_compile == "true"


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


class StepCheckpoint(keras.callbacks.Callback):
    """Saves ``step_XXXXXXXX.keras`` at each epoch end, atomically; keeps the last ``keep``.

    The model is first written to a temporary name and then renamed, so a crash
    never leaves a half-written checkpoint under a checkpoint name.

    Args:
        directory: where checkpoints go.
        keep: how many recent checkpoints to keep (0 = all).
    """

    def __init__(self, directory: str | os.PathLike, keep: int = 3):
        super().__init__()
        self.directory = Path(directory)
        self.keep = keep

    def on_epoch_end(self, epoch, logs=None):
        self.directory.mkdir(parents=True, exist_ok=True)
        step = int(self.model.optimizer.iterations.numpy())
        final = self.directory / f"step_{step:08d}.keras"
        save_model_atomically(self.model, final)
        if self.keep:
            existing = sorted(self.directory.glob("step_*.keras"))
            for old in existing[:-self.keep]:
                old.unlink()


def save_model_atomically(model: keras.Model, path: str | os.PathLike) -> Path:
    """Writes ``model`` to ``path`` (.keras) via a temporary file and a rename."""
    path = Path(path)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    model.save(tmp)
    os.replace(tmp, path)
    return path


def _read_backup_epoch(backup_dir: Path) -> int:
    meta = backup_dir / "training_metadata.json"
    if not meta.exists():
        return 0
    try:
        return int(json.loads(meta.read_text())["epoch"])
    except (ValueError, KeyError):
        return 0


def _check_workdir_config(workdir: Path, experiment: ExperimentConfig) -> None:
    """A work dir holds one experiment: only training.steps may change on resume."""
    path = workdir / "config.json"
    if not path.exists():
        return
    old = json.loads(path.read_text())
    new = experiment.to_dict()
    old.get("training", {}).pop("steps", None)
    new_cmp = json.loads(json.dumps(new))
    new_cmp["training"].pop("steps", None)
    if old != new_cmp:
        changed = sorted(
            f"{section}.{key}"
            for section in new_cmp
            if isinstance(new_cmp[section], dict)
            for key in new_cmp[section]
            if old.get(section, {}).get(key) != new_cmp[section][key]
        ) or ["(top-level fields)"]
        raise ConfigError(
            f"work directory {workdir} holds a run with a different config "
            f"(differs in: {', '.join(changed)}); use a new --workdir or the same config"
        )


def initialize_from(model: AlignModel, path: str | os.PathLike) -> None:
    """Copies the weights of a saved ``.keras`` model into ``model`` (same layout).

    Raises:
        ConfigError: naming ``training.init_from`` and the first weights whose names or
            shapes differ, when the saved model does not fit the configured one.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"training.init_from: no such file {path}")
    source = keras.saving.load_model(path, compile=False)
    want = [(w.path, tuple(w.shape)) for w in model.weights]
    got = [(w.path, tuple(w.shape)) for w in source.weights]
    if want != got:
        diffs = [f"{a} vs {b}" for a, b in zip(want, got) if a != b][:3]
        raise ConfigError(
            f"training.init_from: {path} has {len(got)} weights, the model config "
            f"{len(want)}; they differ at: {'; '.join(diffs) or 'the count'} — use the "
            "saved model's config (model.json / config.json) for the experiment's model"
        )
    model.set_weights(source.get_weights())
    print(f"malign train: initialised {len(want)} weights from {path}", flush=True)


def resolve_tokenizer_path(spec: str) -> Path:
    """``""``/``"test"`` -> the checked-in test vocabulary; otherwise the path itself."""
    if spec in ("", "test"):
        from malign import text as text_lib

        return Path(text_lib.test_vocab_path())
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"data.tokenizer: no such file {spec}")
    return path


def make_tokenizer(spec: str, model_config: ModelConfig):
    """The tokenizer layer of ``data.tokenizer`` at the model's sequence length.

    A ``.txt`` file is a WordPiece vocabulary (the English checkpoint's); anything else
    a SentencePiece model. Its ids must fit the model's vocabulary.
    """
    from malign import text as text_lib

    path = resolve_tokenizer_path(spec)
    try:
        return text_lib.tokenizer_from_file(path, model_config.text.sequence_length,
                                            model_config.text.vocabulary_size)
    except ValueError as error:
        raise ConfigError(f"data.tokenizer: {error}") from None


def prepare_synthetic(directory: Path, experiment: ExperimentConfig) -> tuple[str, str]:
    """Writes the synthetic train and held-out sets once; returns their shard patterns."""
    from malign.data import schema, synthetic

    n = experiment.data.synthetic_examples
    size = experiment.model.image.image_size
    seed = experiment.training.seed
    patterns = []
    for name, count, split_seed in (("train", n, seed), ("heldout", max(100, n // 10),
                                                          seed + 100_003)):
        prefix = directory / name
        done = directory / f"{name}.done"
        if not done.exists():
            directory.mkdir(parents=True, exist_ok=True)
            print(f"malign train: writing {count} synthetic scenes to {prefix}-*", flush=True)
            synthetic.write_synthetic(prefix, count, image_size=size, seed=split_seed,
                                      verbose=False)
            done.write_text(f"{count}\n")
        patterns.append(schema.shard_pattern(str(prefix)))
    return patterns[0], patterns[1]


def _data_patterns(experiment: ExperimentConfig, workdir: Path) -> tuple[str, str]:
    data = experiment.data
    if data.train_pattern == "synthetic":
        train_pattern, heldout = prepare_synthetic(workdir / "data", experiment)
        return train_pattern, data.eval_pattern or heldout
    return data.train_pattern, data.eval_pattern


def _dataset_factory(experiment: ExperimentConfig, train_pattern: str, start_step: int
                     ) -> Callable[[tf.distribute.InputContext], tf.data.Dataset]:
    data = experiment.data
    training = experiment.training

    if train_pattern == "random":
        def random_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
            batch = ctx.get_per_replica_batch_size(training.global_batch_size)
            return random_dataset(experiment.model, batch, seed=training.seed,
                                  pipeline_id=ctx.input_pipeline_id, start_step=start_step)
        return random_fn

    from malign import data as data_lib

    tokenizer = make_tokenizer(data.tokenizer, experiment.model)

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


def evaluate_after_training(model: AlignModel, experiment: ExperimentConfig, eval_pattern: str,
                            out_dir: Path, verbose: bool = True) -> dict:
    """Retrieval metrics of the trained model on ``eval_pattern``, written to ``out_dir``."""
    from malign import data as data_lib
    from malign import evaluation

    tokenizer = make_tokenizer(experiment.data.tokenizer, experiment.model)
    split = data_lib.read_eval_split(eval_pattern, model.image_size, batch_size=64,
                                     languages=experiment.data.languages or None,
                                     eval_resize=data_lib.model_eval_resize(model))
    report = evaluation.evaluate_retrieval(model, tokenizer, split,
                                           languages=experiment.data.languages or None,
                                           verbose=verbose)
    evaluation.write_retrieval_report(report, out_dir)
    return report


def _periodic_evaluation(experiment: ExperimentConfig, eval_pattern: str, log_dir: Path,
                         verbose: Any) -> list[keras.callbacks.Callback]:
    """The in-training retrieval evaluation, when ``training.eval_every_steps`` asks for it.

    The final evaluation after training is ``evaluate_after_training``'s job, so the
    callback does not repeat it at the end of ``fit``.
    """
    every = experiment.training.eval_every_steps
    if not every or not eval_pattern:
        return []
    from malign.evaluation import RetrievalEvaluation

    return [RetrievalEvaluation(
        eval_pattern,
        make_tokenizer(experiment.data.tokenizer, experiment.model),
        every_n_steps=every,
        log_dir=log_dir,
        languages=experiment.data.languages or None,
        at_train_end=False,
        verbose=verbose not in (0, False),
    )]


def train(
    experiment: ExperimentConfig,
    workdir: str | os.PathLike,
    callbacks: list[keras.callbacks.Callback] | None = None,
    verbose: Any = "auto",
) -> tuple[AlignModel, keras.callbacks.History]:
    """Trains an experiment in ``workdir``; resumes if a backup is there.

    Args:
        experiment: the resolved experiment config.
        workdir: directory for config.json, checkpoints, backup, logs, model.keras.
        callbacks: extra Keras callbacks.
        verbose: Keras ``fit`` verbosity (progress bar by default).

    Returns:
        ``(model, history)``.
    """
    experiment.validate()
    cfg = experiment.training
    if cfg.steps % cfg.steps_per_checkpoint:
        raise ConfigError(
            f"training.steps_per_checkpoint={cfg.steps_per_checkpoint} must divide "
            f"training.steps={cfg.steps}"
        )
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    strategy = distributed.get_strategy(cfg.strategy)
    distributed.check_global_batch(cfg.global_batch_size, strategy)
    _check_workdir_config(workdir, experiment)
    (workdir / "config.json").write_text(experiment.to_json() + "\n")

    backup_dir = workdir / "backup"
    start_epoch = _read_backup_epoch(backup_dir)
    start_step = start_epoch * cfg.steps_per_checkpoint
    if start_step:
        print(f"malign train: resuming from step {start_step} (backup in {backup_dir})",
              flush=True)

    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(cfg.mixed_precision)
    keras.utils.set_random_seed(cfg.seed)
    try:
        with strategy.scope():
            model = AlignModel(experiment.model)
            model.compile(optimizer=make_optimizer(cfg),
                          jit_compile=resolve_jit_compile(cfg, strategy))
        if cfg.init_from and not start_step:
            initialize_from(model, cfg.init_from)
        train_pattern, eval_pattern = _data_patterns(experiment, workdir)
        dataset = strategy.distribute_datasets_from_function(
            _dataset_factory(experiment, train_pattern, start_step))
        all_callbacks = [
            keras.callbacks.BackupAndRestore(str(backup_dir), double_checkpoint=True,
                                             delete_checkpoint=False),
            StepCheckpoint(workdir / "checkpoints"),
            keras.callbacks.TensorBoard(str(workdir / "logs"), update_freq=cfg.log_every_steps,
                                        write_graph=False),
            *_periodic_evaluation(experiment, eval_pattern, workdir / "logs", verbose),
            *(callbacks or []),
        ]
        history = model.fit(
            dataset,
            epochs=cfg.steps // cfg.steps_per_checkpoint,
            steps_per_epoch=cfg.steps_per_checkpoint,
            callbacks=all_callbacks,
            verbose=verbose,
        )
        save_model_atomically(model, workdir / "model.keras")
        if train_pattern != "random":
            source = resolve_tokenizer_path(experiment.data.tokenizer)
            name = "vocab.txt" if source.suffix == ".txt" else "tokenizer.model"
            shutil.copyfile(source, workdir / name)
        if eval_pattern:
            report = evaluate_after_training(model, experiment, eval_pattern,
                                             workdir / "eval", verbose=bool(verbose))
            summary = ", ".join(f"{lang} mR {m['mean_recall']:.1f}"
                                for lang, m in report["languages"].items())
            print(f"malign train: held-out retrieval: {summary} "
                  f"(written to {workdir / 'eval'})", flush=True)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    return model, history
