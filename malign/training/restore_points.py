"""Restore points: the whole training state in one directory that appears in one rename.

A restore point is ``workdir/restore/step_XXXXXXXX/`` holding

- ``weights.weights.h5``: ``model.save_weights`` — every model variable (batch-norm
  statistics and Keras seed-generator states included) and the optimizer's (its step
  ``iterations``, the moments, and the count of skipped non-finite updates);
- ``state.json``: the step, the SHA-256 of the resolved config (``training.steps`` aside,
  which may grow to extend a run), the data position (random data is a function of
  ``(training.seed, step)``; record data is reshuffled with seed ``training.seed + step``),
  and the size and SHA-256 of the weights file.

It is written into ``restore/.tmp-<pid>-step_XXXXXXXX/``; both files are synced, then the
directory is renamed into place with one ``os.replace`` and the parent directory synced.
So a restore point is either wholly there or absent, and no two files that must agree are
ever written separately (Keras' ``BackupAndRestore``, which malign used before, writes
its weights and its epoch number as two files: a kill between them resumed from the wrong
step; a kill inside the second left an empty JSON file that stopped every re-run).

On start (``scan``, which only reads) the newest restore point that verifies (``state.json``
parses, the weights file has its recorded size and hash, the config hash matches) is the
one a run resumes from; newer ones that do not verify are *damaged*. ``tidy`` (run once
the run's checks passed) moves damaged ones to ``restore/damaged/`` and deletes the
``.tmp-*`` leftovers of interrupted writes of dead processes, here, in
``checkpoints/`` and in the work directory (an interrupted ``model.keras``), each with a
message. The last ``keep`` restore points are kept.

``RestorePoints`` is the Keras callback that writes them at every checkpoint interval
(by global step), loads the one a run resumes from, stops the run at ``training.steps``,
handles SIGTERM (preemption: all workers agree on a step, save there, stop) and
non-finite updates (``training.nonfinite``: stop naming the step, or count them).
Nothing non-finite is ever saved: the weights are checked before every write.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np

from malign.training.fault_injection import fault_point

#: The restore-point format written in ``state.json``.
FORMAT = 1
WEIGHTS = "weights.weights.h5"
STATE = "state.json"
PREFIX = "step_"
DAMAGED = "damaged"


class RestorePointError(ValueError):
    """A restore point that cannot be used (the message names it and why)."""


class NonFiniteError(ValueError):
    """A step's loss or gradient was NaN or Inf and ``training.nonfinite`` is ``"stop"``."""


class Preempted(Exception):
    """The run stopped on SIGTERM after saving a restore point; re-run to resume.

    Attributes:
        step: the step the restore point holds.
        path: the restore point.
    """

    def __init__(self, step: int, path: Path):
        super().__init__(f"stopped by SIGTERM at step {step}; restore point {path}")
        self.step = step
        self.path = path


def _without_defaults(data: Any, default: Any) -> Any:
    """``data`` without the (nested) dict entries equal to ``default``'s."""
    if not isinstance(data, dict) or not isinstance(default, dict):
        return data
    return {key: _without_defaults(value, default[key]) if key in default else value
            for key, value in data.items() if key not in default or value != default[key]}


def config_sha256(experiment) -> str:
    """SHA-256 of the resolved config without ``training.steps`` (which may grow) and
    ``training.nonfinite`` (which a resumed run may change). Fields at their default value
    are left out, so a field added by a newer malign (at its default) does not make the
    restore points of a run started before refuse it.

    Example:
        >>> from malign.config import ExperimentConfig
        >>> len(config_sha256(ExperimentConfig()))
        64
    """
    data = _without_defaults(experiment.to_dict(), type(experiment)().to_dict())
    data.get("training", {}).pop("steps", None)
    data.get("training", {}).pop("nonfinite", None)
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class RestorePoint:
    """A verified restore point: its directory, step and ``state.json`` content."""

    path: Path
    step: int
    state: dict


@dataclasses.dataclass(frozen=True)
class Scan:
    """What ``scan`` found in a work directory (nothing changed yet).

    Attributes:
        latest: the newest restore point that verifies (None: start from step 0).
        damaged: (directory, reason) of the newer ones that do not verify.
        leftovers: ``.tmp-*`` files and directories of interrupted writes by dead processes.
    """

    latest: RestorePoint | None
    damaged: tuple[tuple[Path, str], ...] = ()
    leftovers: tuple[Path, ...] = ()


def read_restore_point(path: Path, config_hash: str | None = None) -> RestorePoint:
    """Reads and verifies the restore point in ``path``.

    Args:
        path: a ``restore/step_XXXXXXXX`` directory.
        config_hash: the run's ``config_sha256``; None skips that check.

    Raises:
        RestorePointError: naming the directory and what is wrong (unreadable or missing
            ``state.json``, a weights file of the wrong size or hash, another config).
    """
    state_path = path / STATE
    try:
        state = json.loads(state_path.read_text())
        step = int(state["step"])
        files = dict(state["files"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise RestorePointError(f"{state_path} cannot be read ({error})") from None
    if path.name != f"{PREFIX}{step:08d}":
        raise RestorePointError(f"{state_path} says step {step}, its directory {path.name}")
    for name, record in files.items():
        file = path / name
        if not file.is_file():
            raise RestorePointError(f"{file} is missing")
        if file.stat().st_size != record["bytes"]:
            raise RestorePointError(f"{file} has {file.stat().st_size} bytes, "
                                    f"{record['bytes']} were written")
        if file_sha256(file) != record["sha256"]:
            raise RestorePointError(f"{file} does not have the SHA-256 written in {STATE}")
    if config_hash is not None and state.get("config_sha256") != config_hash:
        raise RestorePointError(
            f"{path} was written by a run with another config (config SHA-256 "
            f"{state.get('config_sha256')}, this run's {config_hash})")
    return RestorePoint(path, step, state)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own pid from an earlier life of this container: not writing now
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _leftover_pid(path: Path) -> int | None:
    """The pid in a ``.tmp-<pid>-...`` name (None if the name is not one)."""
    parts = path.name.split("-", 2)
    if len(parts) == 3 and parts[0] == ".tmp" and parts[1].isdigit():
        return int(parts[1])
    return None


def scan(workdir: str | os.PathLike, config_hash: str | None) -> Scan:
    """Finds the newest complete restore point, damaged newer ones and leftovers; writes nothing.

    Restore points are verified newest first; verification stops at the first that
    passes (older ones are not read).

    Raises:
        RestorePointError: the newest restore point that parses belongs to another config
            (the message names it; use a new ``--workdir``).
    """
    workdir = Path(workdir)
    root = workdir / "restore"
    leftovers = []
    # .tmp-<pid>-* names: restore points, checkpoints, and the files of the work directory
    # itself (model.keras, config.json, the tokenizer copy and its fingerprint).
    for directory, pattern in ((root, ".tmp-*"), (workdir / "checkpoints", ".tmp-*"),
                               (workdir, ".tmp-*")):
        for path in sorted(directory.glob(pattern)) if directory.is_dir() else []:
            pid = _leftover_pid(path)
            if pid is None or not _pid_alive(pid):
                leftovers.append(path)
    candidates = sorted(root.glob(f"{PREFIX}*"), reverse=True) if root.is_dir() else []
    damaged = []
    for path in candidates:
        try:
            point = read_restore_point(path)
        except RestorePointError as error:
            damaged.append((path, str(error)))
            continue
        if config_hash is not None and point.state.get("config_sha256") != config_hash:
            raise RestorePointError(
                f"{path} was written by a run with another config than this one (config "
                f"SHA-256 {point.state.get('config_sha256')}, this run's {config_hash}); "
                "use a new --workdir, or the run's config.json")
        return Scan(point, tuple(damaged), tuple(leftovers))
    return Scan(None, tuple(damaged), tuple(leftovers))


def tidy(found: Scan, label: str = "malign train") -> list[str]:
    """Moves damaged restore points to ``restore/damaged/`` and deletes leftovers.

    Returns:
        One message per change (also printed).
    """
    messages = []
    for path, reason in found.damaged:
        target = path.parent / DAMAGED / f"{path.name}-{time.strftime('%Y%m%dT%H%M%S')}"
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
        messages.append(f"restore point {path} is damaged ({reason}); moved to {target}")
    for path in found.leftovers:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        messages.append(f"removed {path}, left by an interrupted write")
    for message in messages:
        print(f"{label}: {message}", flush=True)
    return messages


def nonfinite_variables(model: keras.Model) -> list[str]:
    """Paths of the model's and optimizer's float variables holding a NaN or Inf."""
    variables = list(model.weights)
    if getattr(model, "optimizer", None) is not None:
        variables += list(model.optimizer.variables)
    bad = []
    for variable in variables:
        if "float" not in str(variable.dtype):
            continue
        if not np.all(np.isfinite(np.asarray(variable.numpy(), dtype=np.float64))):
            bad.append(variable.path)
    return bad


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_restore_point(model: keras.Model, root: Path, step: int, state: dict,
                       keep: int = 2) -> Path:
    """Writes ``root/step_XXXXXXXX`` atomically (see the module docstring); keeps ``keep``.

    Args:
        model: the fitted model (with its optimizer).
        root: the ``restore`` directory.
        step: the global step the state is at (``optimizer.iterations``).
        state: more ``state.json`` fields (config hash, data position).
        keep: how many restore points to keep (the newest; at least 1).

    Returns:
        The restore point's directory.

    Raises:
        NonFiniteError: a weight or optimizer variable holds a NaN or Inf (nothing is written).
    """
    bad = nonfinite_variables(model)
    if bad:
        raise NonFiniteError(f"step {step}: {len(bad)} variables hold NaN or Inf "
                             f"(first: {bad[0]}); no restore point written")
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:08d}"
    tmp = root / f".tmp-{os.getpid()}-{final.name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    fault_point("restore.mkdir")
    weights = tmp / WEIGHTS
    model.save_weights(weights)
    fault_point("restore.weights", weights)
    record = dict(format=FORMAT, step=int(step), **state, written=time.strftime(
        "%Y-%m-%dT%H:%M:%S%z"), files={WEIGHTS: {"bytes": weights.stat().st_size,
                                                  "sha256": file_sha256(weights)}})
    with open(tmp / STATE, "w") as f:
        f.write(json.dumps(record, indent=1) + "\n")
        f.flush()
        fault_point("restore.state", tmp / STATE)
    fault_point("restore.fsync")
    for path in (weights, tmp / STATE, tmp):
        _fsync_path(path)
    fault_point("restore.rename")
    if final.exists():  # the same step saved before (a resumed run's first interval end)
        shutil.rmtree(final)
    os.replace(tmp, final)
    fault_point("restore.dirsync")
    _fsync_path(root)
    fault_point("restore.rotate")
    old = sorted(root.glob(f"{PREFIX}*"))[:-max(1, keep)]
    for path in old:
        # Renamed out of the step_* names first: a kill during the deletion leaves a
        # .tmp-* leftover (removed on the next start), never a partial restore point.
        doomed = root / f".tmp-{os.getpid()}-delete-{path.name}"
        os.replace(path, doomed)
        fault_point("restore.rotate.delete")
        shutil.rmtree(doomed)
    return final


def load_restore_point(model: keras.Model, point: RestorePoint) -> None:
    """Loads a restore point's weights and optimizer state into ``model``.

    Raises:
        RestorePointError: the loaded step differs from the one ``state.json`` records.
    """
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)  # its variables must exist to load
    model.load_weights(point.path / WEIGHTS)
    loaded = int(model.optimizer.iterations.numpy())
    if loaded != point.step:
        raise RestorePointError(f"{point.path / WEIGHTS} holds step {loaded}, {STATE} says "
                                f"{point.step}")


class RestorePoints(keras.callbacks.Callback):
    """Writes restore points at interval ends, resumes, stops at the last step, handles
    SIGTERM and non-finite updates. Put it first among the callbacks.

    At every global step that is a multiple of ``interval`` (and at ``total_steps``) it
    saves a restore point (after the ``.keras`` checkpoint of ``StepCheckpoint``, which
    comes before it in the callback list). It reads steps from the optimizer, not Keras'
    epoch counter, so a run resumed in the middle of an interval (after a preemption)
    saves at the same global steps as an uninterrupted one; it stops the fit at
    ``total_steps`` (the last Keras epoch of such a run is cut short).

    SIGTERM sets a flag; at the next step end the workers agree whether any of them got
    it (``malign.distributed.any_worker``, a collective every step under multi-worker),
    save a restore point at that step and stop; ``stopped_by_signal`` is then the step.

    Non-finite updates: the optimizer (``malign.training.optimizers``) skips any update
    whose gradients are not all finite and counts it in ``nonfinite_updates``. With
    ``nonfinite="stop"`` a skipped update or a NaN/Inf loss raises ``NonFiniteError``
    naming the step (nothing is saved at that step); with ``"skip"`` each is reported and
    the run goes on.

    Args:
        root: the ``restore`` directory.
        interval: ``training.steps_per_checkpoint``.
        total_steps: ``training.steps``.
        state: extra ``state.json`` fields (config hash, data position, seed).
        resume_from: the restore point to load at the start (None for a new run).
        keep: restore points to keep.
        nonfinite: "stop" or "skip".
        label: the prefix of messages.
        strategy: the run's ``tf.distribute`` strategy (Keras calls callbacks outside its
            scope, so it is passed; None: the current one).
    """

    def __init__(self, root: str | os.PathLike, interval: int, total_steps: int,
                 state: dict[str, Any], resume_from: RestorePoint | None = None, keep: int = 2,
                 nonfinite: str = "stop", label: str = "malign train", strategy: Any = None):
        super().__init__()
        self.root = Path(root)
        self.interval = int(interval)
        self.total_steps = int(total_steps)
        self.state = dict(state)
        self.resume_from = resume_from
        self.keep = keep
        self.nonfinite = nonfinite
        self.label = label
        self.strategy = strategy
        self.stopped_by_signal: int | None = None
        self.last_saved: Path | None = None
        self.skipped_updates = 0
        self._signalled = False
        self._previous_handler: Any = None

    # -- signals ---------------------------------------------------------------------------
    def _on_sigterm(self, signum, frame) -> None:
        self._signalled = True
        print(f"{self.label}: SIGTERM received; saving a restore point at the end of this "
              "step, then stopping", flush=True)

    def install_signal_handler(self) -> None:
        """Catches SIGTERM from now on (main thread only); ``restore_signal_handler`` undoes it."""
        try:
            self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
        except ValueError:  # not the main thread: SIGTERM keeps its default
            self._previous_handler = None

    def restore_signal_handler(self) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None

    # -- Keras hooks -----------------------------------------------------------------------
    def _step(self) -> int:
        return int(self.model.optimizer.iterations.numpy())

    def _skipped(self) -> int:
        counter = getattr(self.model.optimizer, "nonfinite_updates", None)
        if counter is None:  # a LossScaleOptimizer: the count is its inner optimizer's
            counter = getattr(getattr(self.model.optimizer, "inner_optimizer", None),
                              "nonfinite_updates", None)
        return int(counter.numpy()) if counter is not None else 0

    def on_train_begin(self, logs=None) -> None:
        if self.resume_from is not None:
            load_restore_point(self.model, self.resume_from)
            self.last_saved = self.resume_from.path
        self.skipped_updates = self._skipped()

    def on_train_batch_end(self, batch, logs=None) -> None:
        from malign import distributed

        step = self._step()
        loss = float(np.asarray((logs or {}).get("loss", 0.0)).ravel()[0])
        skipped = self._skipped()
        if skipped > self.skipped_updates or not np.isfinite(loss):
            new = skipped - self.skipped_updates
            self.skipped_updates = skipped
            what = (f"the loss is {loss}" if not np.isfinite(loss) else "the loss is finite")
            what += f"; {new} update(s) with NaN/Inf gradients skipped" if new else ""
            if self.nonfinite == "stop":
                last = (f"the last restore point is {self.last_saved}" if self.last_saved
                        else "no restore point was written yet")
                raise NonFiniteError(
                    f"step {step}: {what}; stopping ({last}, all of it finite). Lower "
                    "training.learning_rate (or set training.clipnorm), or set "
                    "training.nonfinite=skip to skip such updates and go on")
            bad = nonfinite_variables(self.model)
            if bad:
                raise NonFiniteError(
                    f"step {step}: {what}; the update was skipped (training.nonfinite=skip), "
                    f"but the forward pass wrote NaN/Inf into {len(bad)} variables (first: "
                    f"{bad[0]}; batch-norm moving statistics are updated outside the "
                    "optimizer), which skipping cannot undo; stopping (the last restore point "
                    f"is {self.last_saved}). Lower training.learning_rate or set "
                    "training.clipnorm")
            print(f"{self.label}: step {step}: {what} (training.nonfinite=skip; "
                  f"{self.skipped_updates} skipped so far)", flush=True)
        if logs is not None:
            logs["nonfinite_updates"] = float(self.skipped_updates)
        if step % self.interval == 0 or step >= self.total_steps:
            self.save(step)
        if distributed.any_worker(self._signalled, self.strategy):
            if self.last_saved is None or self.last_saved.name != f"{PREFIX}{step:08d}":
                self.save(step)
            self.stopped_by_signal = step
            self.model.stop_training = True
        if step >= self.total_steps:
            self.model.stop_training = True

    def save(self, step: int) -> Path:
        """Saves the restore point of ``step`` (see ``save_restore_point``)."""
        seed = int(self.state.get("seed", 0))
        state = dict(self.state, data_position={"next_batch": step,
                                                "record_shuffle_seed": seed + step})
        self.last_saved = save_restore_point(self.model, self.root, step, state, self.keep)
        return self.last_saved
