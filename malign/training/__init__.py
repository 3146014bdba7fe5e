"""Training: one job a module.

- :mod:`malign.training.schedules`: ``WarmupDecay`` (linear warm-up, then linear or cosine
  decay), ``make_schedule``.
- :mod:`malign.training.optimizers`: LAMB / AdamW with decoupled weight decay and their
  fused large-variable update on CPU (``FusedLamb``, ``FusedAdamW``, ``make_optimizer``).
- :mod:`malign.training.checkpoints`: ``step_XXXXXXXX.keras`` checkpoints and files written
  atomically; whether a work directory holds progress.
- :mod:`malign.training.run_plan`: ``prepare_run``, every check a run makes before it
  writes (config against the work directory, strategy, data, tokenizer, ``init_from``).
- :mod:`malign.training.inputs`: random smoke batches, synthetic demo data, record shards
  under a strategy.
- :mod:`malign.training.progress`: progress lines and TensorBoard scalars.
- :mod:`malign.training.restore_points`: the training state in one atomic directory per
  step (``RestorePoints``: resume, SIGTERM, NaN/Inf updates); ``fault_injection``: the
  kill points tests use.
- :mod:`malign.training.fit`: ``train(experiment, workdir)``, the Keras ``fit`` loop;
  ``compile_for_training`` (optimizer, XLA per device, optimizer variables made before
  the first step).
- :mod:`malign.training.distillation`: the ``Distiller`` model and ``distill``.
- :mod:`malign.training.commands`: ``malign train`` and ``malign distill``.

Example:
    >>> from malign.config import TrainingConfig
    >>> type(make_optimizer(TrainingConfig(optimizer="lamb", steps=10))).__name__
    'FusedLamb'
"""

from malign.training.checkpoints import (
    StepCheckpoint,
    holds_progress,
    save_model_atomically,
    write_text_atomically,
)
from malign.training.fit import compile_for_training, train
from malign.training.restore_points import NonFiniteError, Preempted, RestorePoints

from malign.training.distillation import Distiller, distill  # isort: skip (imports fit)
from malign.training.inputs import prepare_synthetic, random_dataset, synthetic_patterns
from malign.training.optimizers import (
    FUSED_MIN_SIZE,
    NO_DECAY_NAMES,
    FusedAdamW,
    FusedLamb,
    combine_duplicate_rows,
    make_optimizer,
)
from malign.training.run_plan import (
    RunPlan,
    initialize_from,
    make_tokenizer,
    prepare_run,
    resolve_jit_compile,
    resolve_tokenizer_path,
)
from malign.training.schedules import WarmupDecay, make_schedule

__all__ = [
    "FUSED_MIN_SIZE",
    "NO_DECAY_NAMES",
    "FusedAdamW",
    "FusedLamb",
    "NonFiniteError",
    "Preempted",
    "RestorePoints",
    "RunPlan",
    "StepCheckpoint",
    "WarmupDecay",
    "Distiller",
    "combine_duplicate_rows",
    "distill",
    "holds_progress",
    "initialize_from",
    "make_optimizer",
    "make_schedule",
    "make_tokenizer",
    "prepare_run",
    "prepare_synthetic",
    "random_dataset",
    "resolve_jit_compile",
    "resolve_tokenizer_path",
    "save_model_atomically",
    "synthetic_patterns",
    "train",
    "compile_for_training",
    "write_text_atomically",
]
