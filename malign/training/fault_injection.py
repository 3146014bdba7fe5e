"""Named points in malign's state writes where a test may kill the process (SIGKILL).

Every step of a restore-point save and of a ``.keras`` checkpoint save calls
``fault_point(name)``. It does nothing unless the environment variable
``MALIGN_FAULT_KILL_AT`` is ``<name>@<n>``: then the ``n``-th time (1-based) this process
reaches the point ``name``, it kills itself with SIGKILL, as a preemption, an OOM killer or
a power cut would. When the point is inside a file write (the file is given), the file is
first cut to half its length, which is what a kill during that write leaves on disk.
``tests/training/test_kill_resume.py`` kills a run at every point of one save.

Example:
    >>> fault_point("restore.weights")  # no MALIGN_FAULT_KILL_AT: nothing happens
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import tensorflow as tf

#: The environment variable that arms one point: ``<name>@<n>``.
ENV = "MALIGN_FAULT_KILL_AT"
#: The environment variable naming steps (``3,7``) whose first gradient is made NaN.
NAN_ENV = "MALIGN_FAULT_NAN_GRADIENT_STEPS"

#: Every point, in the order one save reaches them ("checkpoint.*": the ``.keras`` file of a
#: checkpoint interval, written first; "restore.*": the restore point).
POINTS = (
    "checkpoint.write",      # inside the .keras write (half of the temporary file written)
    "checkpoint.rename",     # the temporary .keras file complete, before its rename
    "checkpoint.rotate",     # after the rename, before older checkpoints are deleted
    "restore.mkdir",         # the temporary directory made, nothing in it
    "restore.weights",       # inside the weights write (half of the file written)
    "restore.state",         # inside the state.json write (half of it written)
    "restore.fsync",         # both files written, before they are synced
    "restore.rename",        # synced, before the directory's rename
    "restore.dirsync",       # renamed, before the parent directory is synced
    "restore.rotate",        # before older restore points are deleted
    "restore.rotate.delete",  # an old restore point renamed to .tmp-*, before its deletion
)

_counts: dict[str, int] = {}


def fault_point(name: str, partial_file: str | os.PathLike | None = None) -> None:
    """Kills this process here if ``MALIGN_FAULT_KILL_AT`` names this point and occurrence.

    Args:
        name: one of ``POINTS``.
        partial_file: the file being written at this point: cut to half its size first.

    Raises:
        ValueError: ``name`` is not one of ``POINTS`` (a typo in malign, caught by tests).
    """
    if name not in POINTS:
        raise ValueError(f"unknown fault point {name!r}; known: {', '.join(POINTS)}")
    armed = os.environ.get(ENV)
    if not armed:
        return
    _counts[name] = _counts.get(name, 0) + 1
    want, _, occurrence = armed.partition("@")
    if want != name or _counts[name] != int(occurrence or 1):
        return
    if partial_file is not None and Path(partial_file).is_file():
        size = Path(partial_file).stat().st_size
        os.truncate(partial_file, size // 2)
    print(f"malign: fault injection: SIGKILL at {name}@{_counts[name]}", flush=True)
    kill()


def kill() -> None:
    """SIGKILL to this process (in-process tests replace it with an exception)."""
    os.kill(os.getpid(), signal.SIGKILL)


def reset() -> None:
    """Forgets how often each point was reached (for in-process tests)."""
    _counts.clear()


def nan_gradients(grads: list, step) -> list:
    """The gradients, with the first dense one made NaN at the steps ``MALIGN_FAULT_NAN_GRADIENT_STEPS``
    names (1-based global steps, comma-separated); unchanged (and no op added) without it.

    Read when the train step is traced. Used by the optimizers' non-finite guard to test
    ``training.nonfinite`` with a NaN gradient whose forward pass was finite.

    Args:
        grads: the step's gradients.
        step: the 1-based global step of this update (a scalar tensor).
    """
    steps = [int(s) for s in os.environ.get(NAN_ENV, "").split(",") if s.strip()]
    if not steps:
        return grads
    grads = list(grads)
    for i, g in enumerate(grads):
        if g is not None and not isinstance(g, tf.IndexedSlices):
            hit = tf.reduce_any(tf.equal(tf.cast(step, tf.int64), tf.constant(steps, tf.int64)))
            grads[i] = tf.where(hit, tf.fill(tf.shape(g), tf.constant(float("nan"), g.dtype)), g)
            break
    return grads
