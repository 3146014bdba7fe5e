"""The fit loop: ``train(experiment, workdir)``.

``train(experiment, workdir)`` runs a whole experiment with Keras ``fit`` under
the configured ``tf.distribute`` strategy. It first checks everything
(``prepare_run``: the config with its derived fields resolved, the work
directory, strategy, data, tokenizer, ``init_from``) and writes nothing until
all of it passes. Then it writes the resolved config to ``workdir/config.json``,
checkpoints every ``steps_per_checkpoint`` steps
(``workdir/checkpoints/step_XXXXXXXX.keras``, written atomically), writes a restore
point there too (``workdir/restore/step_XXXXXXXX/``, ``malign.training.restore_points``:
weights, optimizer, step, data position and config hash, in one rename) so a killed run
resumes at its last restore point, saves one and exits on SIGTERM (``Preempted``),
stops on a NaN/Inf update (``NonFiniteError``) unless ``training.nonfinite="skip"``,
prints progress and logs loss, temperature and learning rate
to TensorBoard in ``workdir/logs/train`` every ``log_every_steps`` global steps
(``malign.training.progress``), and saves the final model as
``workdir/model.keras`` with a copy of its tokenizer (when the data is not random) and
that file's SHA-256 (``tokenizer-fingerprint.json``, ``malign.text.fingerprint``), which
``malign eval`` and ``malign export`` compare a tokenizer against. With a held-out set,
the retrieval evaluation runs every ``eval_every_steps`` steps and once at the end (never
twice at the same step), and its final report goes to ``workdir/eval``.

A Keras "epoch" here is one checkpoint interval over a repeated dataset. Restore
points and checkpoints are written at global steps (multiples of the interval), not at
Keras epoch ends, and ``RestorePoints`` stops ``fit`` at ``training.steps``: a run that
was preempted in the middle of an interval resumes there, its Keras epochs are shifted
(``initial_epoch`` is the interval it resumed in) and its last epoch is cut short, so it
runs exactly the remaining steps and saves at the same steps as an uninterrupted run. A
resumed run also restores its place in the data: random smoke data is a function of the
step, and file data is reshuffled with a seed derived from the resumed step, so no
example from the start of the run is replayed in order.

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
import os
import time
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from malign.atomic_files import copy_file
from malign.config import ExperimentConfig, TrainingConfig
from malign.models.align_model import AlignModel
from malign.text.fingerprint import write_tokenizer_fingerprint
from malign.training.checkpoints import StepCheckpoint, save_model_atomically, write_text_atomically
from malign.training.inputs import dataset_factory, prepare_synthetic
from malign.training.optimizers import make_optimizer
from malign.training.restore_points import Preempted, RestorePoints, config_sha256, tidy
from malign.training.run_plan import (
    RunPlan,
    initialize_from,
    make_tokenizer,
    prepare_run,
    resolve_jit_compile,
    resolve_tokenizer_path,
)
from malign.workdir_lock import lock_workdir


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
    """Prints ``<label>: <what> ...`` and, when the block ends, the seconds it took."""

    def __init__(self, what: str, label: str = "malign train"):
        self.what = what
        self.label = label
        self.detail = ""

    def __enter__(self) -> _Timed:
        self.start = time.perf_counter()
        print(f"{self.label}: {self.what} ...", end="", flush=True)
        return self

    def __exit__(self, exc_type: Any, *exc_info: object) -> None:
        took = time.perf_counter() - self.start
        print(f" {'failed after ' if exc_type else ''}{took:.1f} s{self.detail}", flush=True)


class TrainingJob:
    """What ``fit_experiment`` trains: here an ``AlignModel`` on image-text pairs.

    ``malign.training.distillation.DistillationJob`` overrides the model (a ``Distiller``),
    its extra checks, its inputs and what is saved; the fit loop, checkpoints, resume,
    TensorBoard and evaluation are shared.
    """

    #: The prefix of progress lines.
    label = "malign train"

    def check(self, plan: RunPlan) -> RunPlan:
        """Checks beyond ``prepare_run``'s (before anything is written); may extend the plan."""
        return plan

    def build_model(self, plan: RunPlan) -> keras.Model:
        """The model to fit (called inside the strategy's scope)."""
        return AlignModel(plan.experiment.model)

    def initialize(self, model: keras.Model, plan: RunPlan) -> None:
        """Sets initial weights (``training.init_from``) for a run that does not resume."""
        cfg = plan.experiment.training
        if cfg.init_from and not plan.start_step:
            initialize_from(model, cfg.init_from)

    def prepare_inputs(self, model: keras.Model, plan: RunPlan) -> None:
        """Work on the data before the first step (after synthetic data are written)."""

    def dataset_fn(self, plan: RunPlan):
        """The ``distribute_datasets_from_function`` argument."""
        return dataset_factory(plan.experiment, plan.train_pattern, plan.start_step,
                               plan.tokenizer)

    def saved_model(self, model: keras.Model) -> keras.Model:
        """The dual encoder that checkpoints and ``model.keras`` hold."""
        return model


def compile_for_training(model: keras.Model, cfg: TrainingConfig,
                         strategy: tf.distribute.Strategy, **optimizer_kwargs) -> None:
    """Compiles ``model`` as ``train`` does: ``make_optimizer(cfg)``, XLA per device
    (``resolve_jit_compile``), and the optimizer's variables made now.

    The optimizer's slots are made here, not inside the first traced step: a variable
    created while ``tf.function`` traces makes it trace the whole step twice, and wraps
    each slot's initializer in a ``tf.cond``. On a B0 + BERT 4 x 256 model (15 M weights)
    that was about half of the time before the first step (``benchmarks/RESULTS.md``,
    "Time to the first step"). Call it under ``strategy.scope()``.

    Args:
        model: a Keras model whose weights exist (built), not yet compiled.
        cfg: the run's ``TrainingConfig``.
        strategy: the strategy whose scope this runs in.
        **optimizer_kwargs: passed to ``make_optimizer`` (e.g. ``fused_min_size``).

    Example:
        >>> import malign
        >>> from malign.config import TrainingConfig
        >>> model = malign.AlignModel.from_preset("tiny")
        >>> compile_for_training(model, TrainingConfig(steps=10, warmup_steps=1),
        ...                      tf.distribute.get_strategy())
        >>> model.optimizer.built
        True
    """
    model.compile(optimizer=make_optimizer(cfg, **optimizer_kwargs),
                  jit_compile=resolve_jit_compile(cfg, strategy))
    model.optimizer.build(model.trainable_variables)


def train(
    experiment: ExperimentConfig,
    workdir: str | os.PathLike,
    callbacks: list[keras.callbacks.Callback] | None = None,
    verbose: Any = 0,
) -> tuple[AlignModel, keras.callbacks.History]:
    """Trains an experiment in ``workdir``; resumes from its newest complete restore point.

    Everything is checked first (``prepare_run``: config, work directory, strategy, data,
    tokenizer, ``init_from``); only then does the run write into ``workdir``, so a run
    that fails a check leaves no ``config.json`` behind to refuse its corrected re-run.
    A ``config.json`` left by a run that saved no training state (it failed before its
    first checkpoint) is replaced.

    Progress: a line when the model is built and when the first (tracing) step is done,
    then every ``training.log_every_steps`` steps the loss, temperature, learning rate,
    steps/s and ETA (``malign.training.progress``), also written to TensorBoard
    (``workdir/logs/train``).

    Args:
        experiment: the experiment config (unset fields are resolved, see ``prepare_run``).
        workdir: directory for config.json, checkpoints, restore points, logs, model.keras.
        callbacks: extra Keras callbacks.
        verbose: Keras ``fit`` verbosity: 0 (malign's progress lines only, default),
            1 (Keras' progress bar instead of the step lines) or 2 (Keras' line per
            checkpoint interval as well).

    Returns:
        ``(model, history)``.

    Raises:
        ConfigError: naming the field to change, before anything is written.
        malign.data.pipeline.NoUsableRecordsError: a whole pass over the training records
            kept none (the message gives the counts by reason).
        malign.training.restore_points.Preempted: the run got SIGTERM and saved a restore
            point at the end of that step (no ``model.keras``); call again to resume.
        malign.training.restore_points.NonFiniteError: a step's loss or gradient held a
            NaN or Inf and ``training.nonfinite`` is "stop" (the message names the step).
    """
    model, history = fit_experiment(experiment, workdir, TrainingJob(), callbacks, verbose)
    return model, history


def fit_experiment(
    experiment: ExperimentConfig,
    workdir: str | os.PathLike,
    job: TrainingJob,
    callbacks: list[keras.callbacks.Callback] | None = None,
    verbose: Any = 0,
) -> tuple[keras.Model, keras.callbacks.History]:
    """The fit loop of ``train`` and ``distill``: checks, then fit with checkpoints, resume,
    progress, TensorBoard and the held-out evaluation, then ``model.keras``.

    Args:
        experiment: the experiment config.
        workdir: the work directory.
        job: what is trained (``TrainingJob`` or a subclass).
        callbacks: extra Keras callbacks.
        verbose: Keras ``fit`` verbosity (see ``train``).

    Returns:
        ``(job.saved_model(model), history)``.

    Raises:
        The errors of ``train``.
    """
    from malign.models.align_model import count_params
    from malign.training.progress import ProgressLog, ScalarLog

    if verbose == "auto":
        verbose = 1
    plan = job.check(prepare_run(experiment, workdir))
    experiment, workdir, strategy = plan.experiment, plan.workdir, plan.strategy
    cfg = experiment.training
    label = job.label
    for note in plan.notes:
        print(f"{label}: {note}", flush=True)
    restore_dir = workdir / "restore"

    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(cfg.mixed_precision)
    keras.utils.set_random_seed(cfg.seed)
    # Setting the seed clears TensorFlow's eager kernel cache, which deletes the resources of
    # tensorflow-text's SentencePiece ops made before it ("Resource ... SentencepieceOp does
    # not exist" in the input pipeline): prepare_run's tokenizer was a check; make it again.
    tokenizer = make_tokenizer(experiment.data.tokenizer, experiment.model) \
        if plan.tokenizer is not None else None
    plan = dataclasses.replace(plan, tokenizer=tokenizer)
    # One writer per work directory: a second run on it is refused here (WorkdirBusyError).
    lock = lock_workdir(workdir)
    try:
        with _Timed("building the model", label) as timed, strategy.scope():
            model = job.build_model(plan)
            model.configure_steps(cfg.micro_batch_size, cfg.remat, cfg.sigmoid_chunked)
            compile_for_training(model, cfg, strategy)
            timed.detail = f" ({count_params(job.saved_model(model)):,} weights)"
        job.initialize(model, plan)

        # Everything is checked: from here on the run writes into its work directory.
        workdir.mkdir(parents=True, exist_ok=True)
        write_text_atomically(workdir / "config.json", experiment.to_json() + "\n")
        tidy(plan.restore, label)
        if plan.start_step:
            print(f"{label}: resuming from step {plan.start_step} (restore point "
                  f"{plan.restore.latest.path})", flush=True)
        if experiment.data.train_pattern == "synthetic":
            prepare_synthetic(workdir / "data", experiment, label)
        job.prepare_inputs(model, plan)
        dataset = strategy.distribute_datasets_from_function(job.dataset_fn(plan))
        evaluator = _retrieval_evaluator(plan, workdir / "logs")
        interval = cfg.steps_per_checkpoint
        restore = RestorePoints(
            restore_dir, interval, cfg.steps, resume_from=plan.restore.latest,
            nonfinite=cfg.nonfinite, label=label, strategy=strategy,
            state={"config_sha256": config_sha256(experiment), "seed": cfg.seed,
                   "train_pattern": plan.train_pattern})
        all_callbacks = [
            restore,  # first: it loads the state the others read on_train_begin
            *([ProgressLog(cfg.steps, cfg.log_every_steps, label)] if verbose != 1 else []),
            ScalarLog(workdir / "logs" / "train", cfg.steps, cfg.log_every_steps),
            *([evaluator] if evaluator is not None and cfg.eval_every_steps else []),
            *(callbacks or []),
        ]
        # The .keras checkpoint of an interval is written before its restore point: a
        # kill between them resumes from the previous point and writes it again.
        all_callbacks.insert(0, StepCheckpoint(workdir / "checkpoints", select=job.saved_model,
                                               every_steps=interval, total_steps=cfg.steps))
        # A run resumed in the middle of an interval starts in Keras epoch start // interval;
        # RestorePoints stops it at cfg.steps, cutting its last epoch short.
        initial_epoch = plan.start_step // interval
        remaining = cfg.steps - plan.start_step
        restore.install_signal_handler()
        try:
            history = model.fit(
                dataset,
                initial_epoch=initial_epoch,
                epochs=initial_epoch + -(-remaining // interval),
                steps_per_epoch=interval,
                callbacks=all_callbacks,
                verbose=verbose,
                shuffle=False,  # the dataset shuffles; Keras would warn that it ignores True
            )
        except Exception as error:
            # A pass over the records that kept none fails inside tf.data; say so plainly.
            from malign.data.pipeline import NoUsableRecordsError

            no_data = NoUsableRecordsError.from_op_error(error)
            if no_data is None:
                raise
            raise no_data from None
        finally:
            restore.restore_signal_handler()
        if restore.stopped_by_signal is not None:
            print(f"{label}: stopped by SIGTERM at step {restore.stopped_by_signal}; restore "
                  f"point {restore.last_saved}; run the same command again to resume",
                  flush=True)
            raise Preempted(restore.stopped_by_signal, restore.last_saved)
        if restore.skipped_updates:
            print(f"{label}: {restore.skipped_updates} update(s) with NaN/Inf gradients were "
                  "skipped (training.nonfinite=skip)", flush=True)
        final = job.saved_model(model)
        save_model_atomically(final, workdir / "model.keras")
        if plan.train_pattern != "random":
            source = resolve_tokenizer_path(experiment.data.tokenizer)
            name = "vocab.txt" if source.suffix == ".txt" else "tokenizer.model"
            copy_file(source, workdir / name)
            # What eval and export compare a tokenizer against (malign.text.fingerprint).
            write_tokenizer_fingerprint(workdir / name, label)
        if evaluator is not None:
            report = _final_report(evaluator, model, int(model.optimizer.iterations.numpy()))
            from malign import evaluation

            evaluation.write_retrieval_report(report, workdir / "eval")
            summary = ", ".join(f"{lang} mR {m['mean_recall']:.1f}"
                                for lang, m in report["languages"].items())
            print(f"{label}: held-out retrieval: {summary} "
                  f"(written to {workdir / 'eval'})", flush=True)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
        lock.release()
    return final, history
