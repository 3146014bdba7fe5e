"""Checkpoints and text files written atomically, and whether a work directory holds progress."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import keras

from malign import atomic_files
from malign.training.fault_injection import fault_point


class StepCheckpoint(keras.callbacks.Callback):
    """Saves ``step_XXXXXXXX.keras`` at interval ends, atomically; keeps the last ``keep``.

    The model is first written to ``.tmp-<pid>-step_XXXXXXXX.keras``, synced and then
    renamed, so a crash never leaves a half-written checkpoint under a checkpoint name (a
    leftover temporary file is removed by the next run, see
    ``malign.training.restore_points.tidy``). A model holding a NaN or Inf is not saved.

    Args:
        directory: where checkpoints go.
        keep: how many recent checkpoints to keep (0 = all).
        select: maps the fitted model to the model to save (a ``Distiller`` saves its
            student); None saves the fitted model.
        every_steps: save at the end of every global step that is a multiple of this (the
            optimizer's step, so a run resumed in the middle of an interval saves at the
            same steps as an uninterrupted one) and at ``total_steps``; None saves at
            every Keras epoch end.
        total_steps: the last step (with ``every_steps``).
    """

    def __init__(self, directory: str | os.PathLike, keep: int = 3,
                 select: Callable[[keras.Model], keras.Model] | None = None,
                 every_steps: int | None = None, total_steps: int | None = None):
        super().__init__()
        self.directory = Path(directory)
        self.keep = keep
        self.select = select
        self.every_steps = every_steps
        self.total_steps = total_steps

    def on_train_batch_end(self, batch, logs=None):
        if self.every_steps is None:
            return
        step = int(self.model.optimizer.iterations.numpy())
        if step % self.every_steps == 0 or (self.total_steps and step >= self.total_steps):
            self.save(step)

    def on_epoch_end(self, epoch, logs=None):
        if self.every_steps is None:
            self.save(int(self.model.optimizer.iterations.numpy()))

    def save(self, step: int) -> Path | None:
        """Writes the checkpoint of ``step`` (None, with a message, if it is not finite)."""
        from malign.training.restore_points import nonfinite_variables

        model = self.select(self.model) if self.select else self.model
        bad = nonfinite_variables(model)
        if bad:
            print(f"malign: step {step}: {len(bad)} weights hold NaN or Inf (first: {bad[0]}); "
                  "no checkpoint written", flush=True)
            return None
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.directory / f"step_{step:08d}.keras"
        save_model_atomically(model, final)
        fault_point("checkpoint.rotate")
        if self.keep:
            existing = sorted(self.directory.glob("step_*.keras"))
            for old in existing[:-self.keep]:
                old.unlink()
        return final


def save_model_atomically(model: keras.Model, path: str | os.PathLike) -> Path:
    """Writes ``model`` to ``path`` (.keras) via a synced temporary file and a rename.

    Raises:
        malign.atomic_files.WriteFailedError: full or read-only disk (``path`` unchanged).
    """
    with atomic_files.replacing(path) as tmp:
        model.save(tmp)
        fault_point("checkpoint.write", tmp)
        fault_point("checkpoint.rename")
    return Path(path)


def write_text_atomically(path: Path, text: str) -> None:
    """Writes ``text`` beside ``path``, syncs it and renames it over ``path``."""
    atomic_files.write_text(path, text)


def holds_progress(workdir: str | os.PathLike) -> bool:
    """True when a run in ``workdir`` saved training state: a restore point (complete or
    not, damaged ones set aside included), a checkpoint, a model, or the Keras
    ``BackupAndRestore`` state of malign before restore points."""
    workdir = Path(workdir)
    return (any((workdir / "restore").glob("step_*"))
            or any((workdir / "restore" / "damaged").glob("step_*"))
            or (workdir / "backup" / "training_metadata.json").exists()
            or any((workdir / "checkpoints").glob("step_*.keras"))
            or (workdir / "model.keras").exists())

