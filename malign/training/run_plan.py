"""Everything a run checks before it writes: config against the work directory, strategy, data, tokenizer."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from malign import distributed
from malign.config import ConfigError, ExperimentConfig, ModelConfig, TrainingConfig
from malign.models.align_model import AlignModel
from malign.training import restore_points
from malign.training.checkpoints import holds_progress
from malign.training.inputs import data_patterns


def resolve_jit_compile(cfg: TrainingConfig, strategy: tf.distribute.Strategy) -> bool:
    """XLA on TPU and GPU; not on CPU, where it made a step about 7x slower here."""
    if cfg.jit_compile == "auto":
        return distributed.device_type(strategy) != "CPU"
    return cfg.jit_compile == "true"


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
    """Dotted names of the fields in which two configs differ, ``training.steps`` and
    ``training.nonfinite`` aside (a run may be extended, or told to skip NaN updates)."""
    def flat(data: dict, prefix: str = "") -> dict[str, Any]:
        out = {}
        for key, value in data.items():
            if isinstance(value, dict):
                out.update(flat(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = value
        return out

    a, b = flat(old.to_dict()), flat(new.to_dict())
    free = ("training.steps", "training.nonfinite")  # neither changes the saved state
    return sorted(k for k in a.keys() | b.keys() if k not in free and a.get(k) != b.get(k))


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
        restore: what ``restore_points.scan`` found in ``workdir/restore`` (the restore
            point the run resumes from, damaged ones and leftovers to tidy once it starts).
    """

    experiment: ExperimentConfig
    workdir: Path
    strategy: Any
    start_step: int
    train_pattern: str
    eval_pattern: str
    tokenizer: Any
    notes: tuple[str, ...] = ()
    restore: restore_points.Scan = restore_points.Scan(None)


def _resolve_against_workdir(experiment: ExperimentConfig, workdir: Path
                             ) -> tuple[ExperimentConfig, restore_points.Scan, list[str]]:
    """Resolves the config for ``workdir``; returns it, its restore points and notes."""
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
    # Always scanned: a run killed in its first checkpoint write left a temporary file
    # but no training state.
    try:
        found = restore_points.scan(workdir, restore_points.config_sha256(resolved))
    except restore_points.RestorePointError as error:
        raise ConfigError(str(error)) from None
    if progress:
        if found.latest is None and (workdir / "backup" / "training_metadata.json").exists():
            notes.append(f"{workdir / 'backup'} is Keras BackupAndRestore state of an older "
                         "malign, which is not read (restore points are in "
                         f"{workdir / 'restore'}): the run starts at step 0")
    start_step = found.latest.step if found.latest is not None else 0
    if start_step > resolved.training.steps:
        raise ConfigError(
            f"training.steps={resolved.training.steps}: the run in {workdir} has already "
            f"trained {start_step} steps; use at least {start_step} to resume it, or a new "
            "--workdir"
        )
    return resolved, found, notes


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
    resolved, found, notes = _resolve_against_workdir(experiment, workdir)
    start_step = found.latest.step if found.latest is not None else 0
    cfg = resolved.training
    try:
        strategy = distributed.get_strategy(cfg.strategy)
    except ValueError as error:
        raise ConfigError(f"training.strategy: {error}") from None
    per_replica = distributed.check_global_batch(cfg.global_batch_size, strategy)
    if cfg.micro_batch_size and per_replica % cfg.micro_batch_size:
        raise ConfigError(
            f"training.micro_batch_size={cfg.micro_batch_size} must divide the per-replica "
            f"batch: training.global_batch_size={cfg.global_batch_size} over "
            f"{strategy.num_replicas_in_sync} replicas is {per_replica} each; use a divisor "
            f"of {per_replica}")
    # Start the runtime now, so its start-up messages come before the progress lines.
    tf.config.list_logical_devices()
    data = resolved.data
    train_pattern, eval_pattern = data_patterns(resolved, workdir)
    if data.train_pattern not in ("random", "synthetic"):
        _check_pattern("data.train_pattern", data.train_pattern)
    if data.eval_pattern:
        _check_pattern("data.eval_pattern", data.eval_pattern)
    tokenizer = None
    if train_pattern != "random" or eval_pattern:
        tokenizer = make_tokenizer(data.tokenizer, resolved.model)
    if cfg.init_from and not start_step and not Path(cfg.init_from).is_file():
        raise ConfigError(f"training.init_from: no such file {cfg.init_from}")
    notes += batch_norm_notes(resolved)
    return RunPlan(resolved, workdir, strategy, start_step, train_pattern, eval_pattern,
                   tokenizer, tuple(notes), found)


#: The share of batch norm's initial moving statistics (mean 0, variance 1) a run may leave
#: in them: 0.99**400 = 1.8% made a demo model rank at chance when evaluated, although it
#: trained well (its stem's activation variance was about 0.04).
BATCH_NORM_RESIDUAL_LIMIT = 1e-3


def batch_norm_notes(experiment: ExperimentConfig) -> list[str]:
    """A note when the run is too short for batch norm's moving statistics to forget their
    initial values (mean 0, variance 1), which evaluation and export use.

    A run from scratch of ``steps`` steps leaves ``momentum ** steps`` of them; above
    ``BATCH_NORM_RESIDUAL_LIMIT`` the note names ``model.image.batch_norm_momentum`` and the
    largest value that stays below. Runs that start from trained weights
    (``training.init_from``) start from trained statistics and get no note.

    Example:
        >>> from malign.presets import get_preset
        >>> exp = ExperimentConfig(model=get_preset("tiny"), training=TrainingConfig(steps=300))
        >>> print(batch_norm_notes(exp)[0][:80])
        model.image.batch_norm_momentum=0.99 leaves 0.99**300 = 4.9% of batch norm's ini
    """
    momentum, steps = experiment.model.image.batch_norm_momentum, experiment.training.steps
    if experiment.training.init_from or not steps or momentum ** steps <= BATCH_NORM_RESIDUAL_LIMIT:
        return []
    suggested = math.floor(BATCH_NORM_RESIDUAL_LIMIT ** (1 / steps) * 1000) / 1000
    return [f"model.image.batch_norm_momentum={momentum} leaves {momentum}**{steps} = "
            f"{momentum ** steps:.1%} of batch norm's initial moving statistics (mean 0, "
            "variance 1) after training.steps; evaluation, export and serving use them, and "
            "such a model can rank near chance although it trains: set "
            f"model.image.batch_norm_momentum={suggested} or lower, or train longer"]


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


