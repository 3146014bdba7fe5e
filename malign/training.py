"""Optimizer, learning-rate schedule, callbacks and the fit wrapper.

``train(experiment, workdir)`` runs a whole experiment with Keras ``fit`` under
the configured ``tf.distribute`` strategy. It first checks everything
(``prepare_run``: the config with its derived fields resolved, the work
directory, strategy, data, tokenizer, ``init_from``) and writes nothing until
all of it passes. Then it writes the resolved config to ``workdir/config.json``,
checkpoints every ``steps_per_checkpoint`` steps
(``workdir/checkpoints/step_XXXXXXXX.keras``, written atomically), keeps a
``BackupAndRestore`` state in ``workdir/backup`` so a killed run resumes at its
last checkpoint, prints progress and logs loss, temperature and learning rate
to TensorBoard in ``workdir/logs/train`` every ``log_every_steps`` global steps
(``malign.training_progress``), and saves the final model as
``workdir/model.keras``. With a held-out set, the retrieval evaluation runs every
``eval_every_steps`` steps and once at the end (never twice at the same step),
and its final report goes to ``workdir/eval``.

A Keras "epoch" here is one checkpoint interval over a repeated dataset:
Keras 3 restores at epoch boundaries only. A resumed run also restores its place
in the data: random smoke data is a function of the step, and file data is
reshuffled with a seed derived from the resumed step, so no example from the
start of the run is replayed in order.

Example:
    >>> from malign.config import ExperimentConfig, TrainingConfig
    >>> from malign.presets import get_preset
    >>> exp = ExperimentConfig(model=get_preset("tiny"), training=TrainingConfig(
    ...     global_batch_size=4, steps=2))
    >>> import tempfile
    >>> model, history = train(exp, tempfile.mkdtemp())  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
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
    "RunPlan",
    "prepare_run",
    "holds_progress",
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
    """The learning-rate schedule of a training config (an unset warm-up is derived)."""
    cfg = cfg.resolve()
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


def _write_text_atomically(path: Path, text: str) -> None:
    """Writes ``text`` beside ``path``, syncs it and renames it over ``path``."""
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def holds_progress(workdir: str | os.PathLike) -> bool:
    """True when a run in ``workdir`` saved training state: a backup, a checkpoint or a model."""
    workdir = Path(workdir)
    return ((workdir / "backup" / "training_metadata.json").exists()
            or any((workdir / "checkpoints").glob("step_*.keras"))
            or (workdir / "model.keras").exists())


def _read_workdir_config(workdir: Path) -> tuple[ExperimentConfig | None, str]:
    """The config in ``workdir/config.json`` (None if absent) and why it is unreadable ("")."""
    path = workdir / "config.json"
    if not path.exists():
        return None, ""
    try:
        return ExperimentConfig.from_dict(json.loads(path.read_text())), ""
    except (ValueError, TypeError) as error:  # JSON and ConfigError are ValueErrors
        return None, f"{path} cannot be read ({error})"


def _config_differences(old: ExperimentConfig, new: ExperimentConfig) -> list[str]:
    """Dotted names of the fields in which two configs differ, ``training.steps`` aside."""
    def flat(data: dict, prefix: str = "") -> dict[str, Any]:
        out = {}
        for key, value in data.items():
            if isinstance(value, dict):
                out.update(flat(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = value
        return out

    a, b = flat(old.to_dict()), flat(new.to_dict())
    return sorted(k for k in a.keys() | b.keys() if k != "training.steps" and a.get(k) != b.get(k))


def _check_workdir_config(workdir: Path, previous: ExperimentConfig,
                          experiment: ExperimentConfig) -> None:
    """A work dir holding training state holds one experiment: only training.steps may change.

    ``experiment`` is resolved against ``previous`` (its unset fields took the values the
    run started with), so an extended run compares equal unless a field was set to
    something else.
    """
    changed = _config_differences(previous, experiment)
    if changed:
        values = "; ".join(f"{key}: {_lookup(previous, key)!r} in the run, "
                           f"{_lookup(experiment, key)!r} now" for key in changed[:4])
        raise ConfigError(
            f"work directory {workdir} holds a run with a different config "
            f"(differs in: {', '.join(changed)}; {values}); use a new --workdir or the "
            "run's config (only training.steps may change, to extend it)"
        )


def _lookup(config: ExperimentConfig, dotted: str) -> Any:
    node: Any = config.to_dict()
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """A run that ``prepare_run`` checked: everything ``train`` needs before writing.

    Attributes:
        experiment: the resolved config (no unset field); what ``config.json`` will hold.
        workdir: the work directory.
        strategy: the ``tf.distribute`` strategy of ``training.strategy``.
        start_step: the step the run resumes from (0 for a new run).
        train_pattern: the training data ("random", or a shard pattern; for "synthetic",
            where the synthetic shards will be written).
        eval_pattern: the held-out set ("" for none).
        tokenizer: the tokenizer layer (None when no data needs one).
        notes: lines to tell the user (derived values, a replaced config).
    """

    experiment: ExperimentConfig
    workdir: Path
    strategy: Any
    start_step: int
    train_pattern: str
    eval_pattern: str
    tokenizer: Any
    notes: tuple[str, ...] = ()


def _resolve_against_workdir(experiment: ExperimentConfig, workdir: Path
                             ) -> tuple[ExperimentConfig, int, list[str]]:
    """Resolves the config for ``workdir``; returns it, the resume step and notes."""
    previous, unreadable = _read_workdir_config(workdir)
    progress = holds_progress(workdir)
    if unreadable and progress:
        raise ConfigError(f"work directory {workdir} holds training state but {unreadable}; "
                          "use a new --workdir")
    notes = []
    kept = previous if progress else None
    cfg = experiment.training
    if kept is not None and cfg.steps_per_checkpoint is None:
        interval = kept.training.steps_per_checkpoint
        if interval and cfg.steps % interval:
            lower, upper = cfg.steps // interval * interval, (cfg.steps // interval + 1) * interval
            choices = " or ".join(str(s) for s in (lower, upper) if s > 0)
            raise ConfigError(
                f"training.steps={cfg.steps}: the run in {workdir} checkpoints every {interval} "
                f"steps (training.steps_per_checkpoint in its config.json), so training.steps "
                f"must be a multiple of {interval}: use {choices}"
            )
    resolved = experiment.resolve(kept)
    derived = [name for name in TrainingConfig.DERIVED if getattr(cfg, name) is None]
    if derived:
        values = ", ".join(f"training.{n}={getattr(resolved.training, n)}" for n in derived)
        origin = (f"as in the run in {workdir}" if kept is not None
                  else f"derived from training.steps={resolved.training.steps}")
        notes.append(f"{values} ({origin}; set {'it' if len(derived) == 1 else 'them'} "
                     "to choose)")
    if kept is not None:
        _check_workdir_config(workdir, kept, resolved)
    elif previous is not None or unreadable:
        changed = _config_differences(previous, resolved) if previous is not None else []
        if changed or unreadable:
            notes.append(f"{workdir / 'config.json'} is from a run that saved no training state; "
                         f"replacing it (differs in: {', '.join(changed) or 'unreadable'})")
    start_step = 0
    if progress:
        start_step = _read_backup_epoch(workdir / "backup") * resolved.training.steps_per_checkpoint
    if start_step > resolved.training.steps:
        raise ConfigError(
            f"training.steps={resolved.training.steps}: the run in {workdir} has already "
            f"trained {start_step} steps; use at least {start_step} to resume it, or a new "
            "--workdir"
        )
    return resolved, start_step, notes


def _check_pattern(field: str, pattern: str) -> None:
    from malign.data.pipeline import list_files

    try:
        list_files(pattern)
    except FileNotFoundError:
        raise ConfigError(f"{field}: no TFRecord files match {pattern!r} (a glob, or a shard "
                          "prefix written by `malign data`)") from None


def prepare_run(experiment: ExperimentConfig, workdir: str | os.PathLike) -> RunPlan:
    """Resolves and checks a run without writing anything; ``train`` starts with it.

    Checks, in order: the config (types, values, derived fields), the work directory (a
    run with training state there must have the same config, only ``training.steps`` may
    grow, and not below the step it reached), the strategy and the global batch, the data
    (``data.train_pattern`` / ``data.eval_pattern`` match files), the tokenizer (its
    vocabulary size equals ``model.text.vocabulary_size``) and ``training.init_from``
    (exists). ``malign train --print-config`` runs the same checks.

    Args:
        experiment: the experiment; unset fields are resolved (see
            ``TrainingConfig.resolve``), against the work directory's run when it resumes.
        workdir: the work directory (need not exist).

    Returns:
        A ``RunPlan``.

    Raises:
        ConfigError: naming the field to change.

    Example:
        >>> from malign.presets import get_preset
        >>> exp = ExperimentConfig(model=get_preset("tiny"), training=TrainingConfig(steps=20))
        >>> plan = prepare_run(exp, "/nonexistent/run")
        >>> plan.experiment.training.warmup_steps, plan.experiment.training.steps_per_checkpoint
        (2, 20)
    """
    workdir = Path(workdir)
    experiment.validate()
    resolved, start_step, notes = _resolve_against_workdir(experiment, workdir)
    cfg = resolved.training
    try:
        strategy = distributed.get_strategy(cfg.strategy)
    except ValueError as error:
        raise ConfigError(f"training.strategy: {error}") from None
    distributed.check_global_batch(cfg.global_batch_size, strategy)
    # Start the runtime now, so its start-up messages come before the progress lines.
    tf.config.list_logical_devices()
    data = resolved.data
    train_pattern, eval_pattern = _data_patterns(resolved, workdir)
    if data.train_pattern not in ("random", "synthetic"):
        _check_pattern("data.train_pattern", data.train_pattern)
    if data.eval_pattern:
        _check_pattern("data.eval_pattern", data.eval_pattern)
    tokenizer = None
    if train_pattern != "random" or eval_pattern:
        tokenizer = make_tokenizer(data.tokenizer, resolved.model)
    if cfg.init_from and not start_step and not Path(cfg.init_from).is_file():
        raise ConfigError(f"training.init_from: no such file {cfg.init_from}")
    return RunPlan(resolved, workdir, strategy, start_step, train_pattern, eval_pattern,
                   tokenizer, tuple(notes))


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
        raise ConfigError(f"data.tokenizer: no such file {spec}")
    return path


def make_tokenizer(spec: str, model_config: ModelConfig):
    """The tokenizer layer of ``data.tokenizer`` at the model's sequence length.

    A ``.txt`` file is a WordPiece vocabulary (the English checkpoint's); anything else
    a SentencePiece model.

    Raises:
        ConfigError: naming ``data.tokenizer`` when the file is missing or unreadable, and
            ``model.text.vocabulary_size`` when the tokenizer's vocabulary size differs from
            the model's (ids past the model's table would fail; rows past the tokenizer's
            would never train).
    """
    from malign import text as text_lib

    path = resolve_tokenizer_path(spec)
    try:
        tokenizer = text_lib.tokenizer_from_file(path, model_config.text.sequence_length)
    except (ValueError, OSError, tf.errors.OpError) as error:
        raise ConfigError(f"data.tokenizer: cannot read {path}: {error}") from None
    have, want = int(tokenizer.vocabulary_size), model_config.text.vocabulary_size
    if have != want:
        raise ConfigError(
            f"model.text.vocabulary_size: the model has {want} token ids but the tokenizer "
            f"(data.tokenizer={spec or 'test'}, {path}) has {have}; set "
            f"model.text.vocabulary_size={have}, or data.tokenizer to a tokenizer with {want}"
        )
    return tokenizer


def synthetic_patterns(directory: Path) -> tuple[str, str]:
    """The shard patterns of the synthetic train and held-out sets in ``directory``."""
    from malign.data import schema

    return (schema.shard_pattern(str(directory / "train")),
            schema.shard_pattern(str(directory / "heldout")))


def prepare_synthetic(directory: Path, experiment: ExperimentConfig) -> tuple[str, str]:
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
        print(f"malign train: writing {count} synthetic scenes to {prefix}-*", flush=True)
        synthetic.write_synthetic(prefix, count, image_size=size, seed=split_seed,
                                  verbose=False)
        _write_text_atomically(done, json.dumps(settings) + "\n")
    return patterns


def _done_settings(done: Path) -> dict | None:
    """The settings a ``.done`` marker records (None for a marker that records only a count,
    as written before the settings were recorded: the set is written again)."""
    try:
        value = json.loads(done.read_text())
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _data_patterns(experiment: ExperimentConfig, workdir: Path) -> tuple[str, str]:
    data = experiment.data
    if data.train_pattern == "synthetic":
        train_pattern, heldout = synthetic_patterns(workdir / "data")
        return train_pattern, data.eval_pattern or heldout
    return data.train_pattern, data.eval_pattern


def _dataset_factory(experiment: ExperimentConfig, train_pattern: str, start_step: int,
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


def _retrieval_evaluator(plan: RunPlan, log_dir: Path):
    """The retrieval evaluation of the held-out set (None without one).

    During ``fit`` it runs every ``training.eval_every_steps`` steps (when set); after
    training, ``_final_report`` reuses its last report when that was taken at the final
    step, so the last evaluation never runs twice.
    """
    if not plan.eval_pattern:
        return None
    from malign.evaluation import RetrievalEvaluation

    experiment = plan.experiment
    return RetrievalEvaluation(
        plan.eval_pattern,
        plan.tokenizer,
        every_n_steps=experiment.training.eval_every_steps or experiment.training.steps,
        log_dir=log_dir,
        languages=experiment.data.languages or None,
        at_train_end=False,
    )


def _final_report(evaluator, model: AlignModel, step: int) -> dict:
    """The held-out report at ``step``: the callback's last one if taken there, else a new one."""
    if evaluator.history and evaluator.history[-1][0] == step:
        return evaluator.history[-1][1]
    if evaluator.model is None:
        evaluator.set_model(model)
    return evaluator.evaluate(step)


class _Timed:
    """Prints ``malign train: <what> ...`` and, when the block ends, the seconds it took."""

    def __init__(self, what: str):
        self.what = what
        self.detail = ""

    def __enter__(self) -> _Timed:
        self.start = time.perf_counter()
        print(f"malign train: {self.what} ...", end="", flush=True)
        return self

    def __exit__(self, exc_type: Any, *exc_info: object) -> None:
        took = time.perf_counter() - self.start
        print(f" {'failed after ' if exc_type else ''}{took:.1f} s{self.detail}", flush=True)


def train(
    experiment: ExperimentConfig,
    workdir: str | os.PathLike,
    callbacks: list[keras.callbacks.Callback] | None = None,
    verbose: Any = 0,
) -> tuple[AlignModel, keras.callbacks.History]:
    """Trains an experiment in ``workdir``; resumes if a backup is there.

    Everything is checked first (``prepare_run``: config, work directory, strategy, data,
    tokenizer, ``init_from``); only then does the run write into ``workdir``, so a run
    that fails a check leaves no ``config.json`` behind to refuse its corrected re-run.
    A ``config.json`` left by a run that saved no training state (it failed before its
    first checkpoint) is replaced.

    Progress: a line when the model is built and when the first (tracing) step is done,
    then every ``training.log_every_steps`` steps the loss, temperature, learning rate,
    steps/s and ETA (``malign.training_progress``), also written to TensorBoard
    (``workdir/logs/train``).

    Args:
        experiment: the experiment config (unset fields are resolved, see ``prepare_run``).
        workdir: directory for config.json, checkpoints, backup, logs, model.keras.
        callbacks: extra Keras callbacks.
        verbose: Keras ``fit`` verbosity: 0 (malign's progress lines only, default),
            1 (Keras' progress bar instead of the step lines) or 2 (Keras' line per
            checkpoint interval as well).

    Returns:
        ``(model, history)``.

    Raises:
        ConfigError: naming the field to change, before anything is written.
    """
    from malign.models.align_model import count_params
    from malign.training_progress import ProgressLog, ScalarLog

    if verbose == "auto":
        verbose = 1
    plan = prepare_run(experiment, workdir)
    experiment, workdir, strategy = plan.experiment, plan.workdir, plan.strategy
    cfg = experiment.training
    for note in plan.notes:
        print(f"malign train: {note}", flush=True)
    backup_dir = workdir / "backup"

    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(cfg.mixed_precision)
    keras.utils.set_random_seed(cfg.seed)
    # Setting the seed clears TensorFlow's eager kernel cache, which deletes the resources of
    # tensorflow-text's SentencePiece ops made before it ("Resource ... SentencepieceOp does
    # not exist" in the input pipeline): prepare_run's tokenizer was a check; make it again.
    tokenizer = make_tokenizer(experiment.data.tokenizer, experiment.model) \
        if plan.tokenizer is not None else None
    plan = dataclasses.replace(plan, tokenizer=tokenizer)
    try:
        with _Timed("building the model") as timed, strategy.scope():
            model = AlignModel(experiment.model)
            model.compile(optimizer=make_optimizer(cfg),
                          jit_compile=resolve_jit_compile(cfg, strategy))
            timed.detail = f" ({count_params(model):,} weights)"
        if cfg.init_from and not plan.start_step:
            initialize_from(model, cfg.init_from)

        # Everything is checked: from here on the run writes into its work directory.
        workdir.mkdir(parents=True, exist_ok=True)
        _write_text_atomically(workdir / "config.json", experiment.to_json() + "\n")
        if plan.start_step:
            print(f"malign train: resuming from step {plan.start_step} (backup in {backup_dir})",
                  flush=True)
        if experiment.data.train_pattern == "synthetic":
            prepare_synthetic(workdir / "data", experiment)
        dataset = strategy.distribute_datasets_from_function(
            _dataset_factory(experiment, plan.train_pattern, plan.start_step, plan.tokenizer))
        evaluator = _retrieval_evaluator(plan, workdir / "logs")
        all_callbacks = [
            keras.callbacks.BackupAndRestore(str(backup_dir), double_checkpoint=True,
                                             delete_checkpoint=False),
            *([ProgressLog(cfg.steps, cfg.log_every_steps)] if verbose != 1 else []),
            ScalarLog(workdir / "logs" / "train", cfg.steps, cfg.log_every_steps),
            StepCheckpoint(workdir / "checkpoints"),
            *([evaluator] if evaluator is not None and cfg.eval_every_steps else []),
            *(callbacks or []),
        ]
        history = model.fit(
            dataset,
            epochs=cfg.steps // cfg.steps_per_checkpoint,
            steps_per_epoch=cfg.steps_per_checkpoint,
            callbacks=all_callbacks,
            verbose=verbose,
            shuffle=False,  # the dataset shuffles; Keras would warn that it ignores True
        )
        save_model_atomically(model, workdir / "model.keras")
        if plan.train_pattern != "random":
            source = resolve_tokenizer_path(experiment.data.tokenizer)
            name = "vocab.txt" if source.suffix == ".txt" else "tokenizer.model"
            shutil.copyfile(source, workdir / name)
        if evaluator is not None:
            report = _final_report(evaluator, model, int(model.optimizer.iterations.numpy()))
            from malign import evaluation

            evaluation.write_retrieval_report(report, workdir / "eval")
            summary = ", ".join(f"{lang} mR {m['mean_recall']:.1f}"
                                for lang, m in report["languages"].items())
            print(f"malign train: held-out retrieval: {summary} "
                  f"(written to {workdir / 'eval'})", flush=True)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    return model, history
