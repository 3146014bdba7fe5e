"""Checkpoints written atomically, the run's backup step, and whether a work directory holds progress."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import keras

from malign import atomic_files


class StepCheckpoint(keras.callbacks.Callback):
    """Saves ``step_XXXXXXXX.keras`` at each epoch end, atomically; keeps the last ``keep``.

    The model is first written to a temporary name and then renamed, so a crash
    never leaves a half-written checkpoint under a checkpoint name.

    Args:
        directory: where checkpoints go.
        keep: how many recent checkpoints to keep (0 = all).
        select: maps the fitted model to the model to save (a ``Distiller`` saves its
            student); None saves the fitted model.
    """

    def __init__(self, directory: str | os.PathLike, keep: int = 3,
                 select: Callable[[keras.Model], keras.Model] | None = None):
        super().__init__()
        self.directory = Path(directory)
        self.keep = keep
        self.select = select

    def on_epoch_end(self, epoch, logs=None):
        self.directory.mkdir(parents=True, exist_ok=True)
        step = int(self.model.optimizer.iterations.numpy())
        final = self.directory / f"step_{step:08d}.keras"
        save_model_atomically(self.select(self.model) if self.select else self.model, final)
        if self.keep:
            existing = sorted(self.directory.glob("step_*.keras"))
            for old in existing[:-self.keep]:
                old.unlink()


def save_model_atomically(model: keras.Model, path: str | os.PathLike) -> Path:
    """Writes ``model`` to ``path`` (.keras) via a temporary file and a rename.

    Raises:
        malign.atomic_files.WriteFailedError: full or read-only disk (``path`` unchanged).
    """
    with atomic_files.replacing(path) as tmp:
        model.save(tmp)
    return Path(path)


def read_backup_epoch(backup_dir: Path) -> int:
    meta = backup_dir / "training_metadata.json"
    if not meta.exists():
        return 0
    try:
        return int(json.loads(meta.read_text())["epoch"])
    except (ValueError, KeyError):
        return 0


def write_text_atomically(path: Path, text: str) -> None:
    """Writes ``text`` beside ``path``, syncs it and renames it over ``path``."""
    atomic_files.write_text(path, text)


def holds_progress(workdir: str | os.PathLike) -> bool:
    """True when a run in ``workdir`` saved training state: a backup, a checkpoint or a model."""
    workdir = Path(workdir)
    return ((workdir / "backup" / "training_metadata.json").exists()
            or any((workdir / "checkpoints").glob("step_*.keras"))
            or (workdir / "model.keras").exists())

