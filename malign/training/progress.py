"""What a training run is doing, on the console and in TensorBoard, keyed on the global step.

Two Keras callbacks that share one view of the run (``_IntervalTracker``): the
global step (the optimizer's iteration count, so a resumed run continues its
curves) and the mean loss over the steps since the last report.

- ``ProgressLog`` prints one line when the first step starts (it traces the
  train step, which takes minutes for large models on CPU) and when it ends,
  then every ``every`` steps (and at the last step) a line with the step, the
  loss over the interval, the temperature, the learning rate, steps/s over the
  interval and an ETA from the steady-state step time (measured from the end
  of the first step, so tracing is not counted and checkpoints and evaluations
  are). Plain lines, flushed, readable in a log file.
- ``ScalarLog`` writes ``loss``, ``temperature``, ``learning_rate`` and
  ``steps_per_second`` to a TensorBoard directory at the same steps.
  Keras' own ``TensorBoard(update_freq=N)`` counts batches within a Keras epoch
  (here one checkpoint interval), so with an interval that is not a multiple of
  N it wrote some intervals and lost others; this one counts global steps.

Example:
    >>> import malign  # doctest: +SKIP
    >>> model.fit(ds, steps_per_epoch=250, epochs=4, verbose=0, callbacks=[
    ...     ProgressLog(total_steps=1000, every=20),
    ...     ScalarLog("runs/x/logs/train", total_steps=1000, every=20)])  # doctest: +SKIP
    malign train: tracing the train step and running step 1/1000 ... 35.0 s
    malign train: step 20/1000  loss 4.1523  temperature 0.998  lr 2.0e-04  9.8 steps/s  ETA 1m 40s
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

import keras
import numpy as np
import tensorflow as tf

__all__ = ["ProgressLog", "ScalarLog", "format_duration", "logged_steps"]


def format_duration(seconds: float) -> str:
    """A short human duration: ``"42 s"``, ``"3m 05s"``, ``"2h 07m"``.

    Example:
        >>> format_duration(4.2), format_duration(185), format_duration(7620)
        ('4 s', '3m 05s', '2h 07m')
    """
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


def logged_steps(start: int, total: int, every: int) -> list[int]:
    """The global steps a run from ``start`` to ``total`` reports at: the multiples of
    ``every`` after ``start``, and ``total`` itself.

    Example:
        >>> logged_steps(0, 12, 5), logged_steps(10, 24, 5)
        ([5, 10, 12], [15, 20, 24])
    """
    steps = list(range((start // every + 1) * every, total + 1, every))
    if total > start and (not steps or steps[-1] != total):
        steps.append(total)
    return steps


#: Logged values averaged over each reporting interval: the loss, then the distillation
#: terms (``malign.training.distillation``; unweighted), when the model logs them.
LOSS_KEYS = ("loss", "contrastive", "similarity_kl", "image_alignment", "text_alignment")
SHORT_NAMES = {"contrastive": "contrastive", "similarity_kl": "kl",
               "image_alignment": "image align", "text_alignment": "text align"}


def _scalar(value: Any) -> float:
    """A float from a log value (a float, a 0-d or 1-element array)."""
    return float(np.mean(np.asarray(value, dtype="float64")))


class _IntervalTracker(keras.callbacks.Callback):
    """The global step, the interval's mean loss, and when to report.

    ``logs["loss"]`` at a batch end is Keras' running mean since the start of the Keras
    epoch, so ``n * mean`` is the epoch's loss sum so far; the difference of two such sums
    is the sum over the steps in between, and sums carry over epoch boundaries.

    Args:
        total_steps: the step training ends at (always reported).
        every: report every this many global steps.
    """

    def __init__(self, total_steps: int, every: int):
        super().__init__()
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.total_steps = int(total_steps)
        self.every = int(every)
        self.step = 0
        # Per averaged key (LOSS_KEYS): sums over steps, as described above.
        self._carry_sum: dict[str, float] = {}
        self._carry_n = 0
        self._epoch_sum: dict[str, float] = {}
        self._epoch_n = 0
        self._mark_sum: dict[str, float] = {}
        self._mark_n = 0
        self._last_step_time: float | None = None
        self._last_report_step = 0
        self._last_report_time: float | None = None
        self._first_step_end: float | None = None
        self._first_step = 0

    # -- state --------------------------------------------------------------------------
    def on_train_begin(self, logs: dict | None = None) -> None:
        self.step = int(self.model.optimizer.iterations.numpy())
        self._first_step = self.step
        self._last_report_step = self.step
        self._carry_sum, self._carry_n = {}, 0
        self._first_step_end = None
        self._last_report_time = None

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._epoch_sum, self._epoch_n = {}, 0
        self._mark_sum, self._mark_n = {}, 0

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        for key, value in self._epoch_sum.items():
            self._carry_sum[key] = (self._carry_sum.get(key, 0.0) + value
                                    - self._mark_sum.get(key, 0.0))
        self._carry_n += self._epoch_n - self._mark_n
        self._mark_sum, self._mark_n = dict(self._epoch_sum), self._epoch_n

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        now = time.perf_counter()
        self.step += 1
        self._epoch_n += 1
        for key in LOSS_KEYS:
            if logs and key in logs:
                self._epoch_sum[key] = self._epoch_n * _scalar(logs[key])
        if self._first_step_end is None:
            self._first_step_end = now
            self._last_report_time = now
            self.first_step_done(now)
        if self.step % self.every == 0 or self.step == self.total_steps:
            self.report(self._interval_values(now, logs or {}))

    # -- values -------------------------------------------------------------------------
    def _interval_values(self, now: float, logs: dict) -> dict[str, float]:
        n = self._carry_n + self._epoch_n - self._mark_n
        values: dict[str, float] = {}
        if n:
            for key in LOSS_KEYS:
                if key in logs:
                    values[key] = (self._carry_sum.get(key, 0.0) + self._epoch_sum.get(key, 0.0)
                                   - self._mark_sum.get(key, 0.0)) / n
        temperature = getattr(self.model, "temperature", None)
        if temperature is not None:
            values["temperature"] = float(keras.ops.convert_to_numpy(temperature))
        elif "temperature" in logs:
            values["temperature"] = _scalar(logs["temperature"])
        if logs.get("nonfinite_updates"):  # restore_points.RestorePoints puts the count here
            values["nonfinite_updates"] = _scalar(logs["nonfinite_updates"])
        lr = getattr(self.model.optimizer, "learning_rate", None)
        if lr is not None:
            values["learning_rate"] = float(keras.ops.convert_to_numpy(lr))
        # Steps/s over the interval, without the first (tracing) step.
        since = max(self._last_report_step, self._first_step + 1)
        if self.step > since and now > self._last_report_time:
            values["steps_per_second"] = (self.step - since) / (now - self._last_report_time)
        steady = self.step - self._first_step - 1
        if steady > 0 and now > self._first_step_end:
            seconds_per_step = (now - self._first_step_end) / steady
            values["eta_seconds"] = max(0, self.total_steps - self.step) * seconds_per_step
        self._carry_sum, self._carry_n = {}, 0
        self._mark_sum, self._mark_n = dict(self._epoch_sum), self._epoch_n
        self._last_report_step = self.step
        self._last_report_time = now
        return values

    def first_step_done(self, now: float) -> None:
        """Called once, after the first step of this ``fit`` (which traced the step)."""

    def report(self, values: dict[str, float]) -> None:  # pragma: no cover - overridden
        """Called at each reporting step with the interval's values."""


class ProgressLog(_IntervalTracker):
    """Prints what training is doing: the first (tracing) step, then one line per interval.

    Args:
        total_steps: the step training ends at.
        every: print a line every this many global steps (and at the last step).
        prefix: start of every line.
        stream: where to print (default ``sys.stdout``); every line is flushed.

    Example:
        >>> cb = ProgressLog(total_steps=100, every=10)
        >>> cb.format_line(20, {"loss": 3.2, "temperature": 0.5, "learning_rate": 1e-3,
        ...                     "steps_per_second": 4.0, "eta_seconds": 20.0})
        'malign train: step 20/100  loss 3.2000  temperature 0.5000  lr 1.0e-03  4.00 steps/s  ETA 20 s'
    """

    def __init__(self, total_steps: int, every: int, prefix: str = "malign train",
                 stream: TextIO | None = None):
        super().__init__(total_steps, every)
        self.prefix = prefix
        self.stream = stream
        self._begin = 0.0
        self._open_line = False

    def _print(self, text: str, end: str = "\n") -> None:
        print(text, end=end, file=self.stream or sys.stdout, flush=True)

    def _keras_prints(self) -> bool:
        return bool(self.params and self.params.get("verbose", 0))

    def on_train_begin(self, logs: dict | None = None) -> None:
        super().on_train_begin(logs)
        if self.step >= self.total_steps:
            return
        self._begin = time.perf_counter()
        text = (f"{self.prefix}: tracing the train step and running step "
                f"{self.step + 1}/{self.total_steps} ...")
        # With Keras' own output on, "Epoch 1/N" would land inside an open line.
        self._open_line = not self._keras_prints()
        self._print(text, end="" if self._open_line else "\n")

    def first_step_done(self, now: float) -> None:
        took = f"{now - self._begin:.1f} s"
        if self._open_line:
            self._print(f" {took}")
        else:
            self._print(f"{self.prefix}: traced the train step and ran step {self.step} in {took}")
        self._open_line = False

    def report(self, values: dict[str, float]) -> None:
        self._print(self.format_line(self.step, values))

    def format_line(self, step: int, values: dict[str, float]) -> str:
        """One progress line for ``step`` from the interval's values."""
        parts = [f"{self.prefix}: step {step}/{self.total_steps}"]
        if "loss" in values:
            parts.append(f"loss {values['loss']:.4f}")
        terms = [f"{SHORT_NAMES[k]} {values[k]:.3f}" for k in LOSS_KEYS[1:] if k in values]
        if terms:
            parts.append(f"({', '.join(terms)})")
        if "temperature" in values:
            parts.append(f"temperature {values['temperature']:.4f}")
        if "learning_rate" in values:
            parts.append(f"lr {values['learning_rate']:.1e}")
        if "steps_per_second" in values:
            rate = values["steps_per_second"]
            parts.append(f"{rate:.2f} steps/s" if rate >= 0.1 else f"{1 / rate:.1f} s/step")
        if "nonfinite_updates" in values:
            parts.append(f"{int(values['nonfinite_updates'])} NaN/Inf updates skipped")
        if "eta_seconds" in values and step < self.total_steps:
            parts.append(f"ETA {format_duration(values['eta_seconds'])}")
        return "  ".join(parts)


class ScalarLog(_IntervalTracker):
    """Writes loss, temperature, learning rate and steps/s to TensorBoard at global steps.

    At every multiple of ``every`` and at ``total_steps``: ``loss`` (the mean over the
    steps since the previous point), ``temperature`` and ``learning_rate`` (their values
    after the step), and ``steps_per_second`` (over the interval, without the first,
    tracing, step), and once any update was skipped for NaN/Inf gradients
    (``training.nonfinite="skip"``) their count ``nonfinite_updates``. Recording is forced
    on (``tf.summary.record_if(True)``) so another callback's recording condition cannot
    drop them.

    Args:
        log_dir: the TensorBoard directory these scalars go to (e.g. ``workdir/logs/train``).
        total_steps: the step training ends at.
        every: write every this many global steps (and at the last step).

    Example:
        >>> cb = ScalarLog("runs/x/logs/train", total_steps=1000, every=20)  # doctest: +SKIP
    """

    TAGS = ("loss", "temperature", "learning_rate", "steps_per_second", *LOSS_KEYS[1:],
            "nonfinite_updates")

    def __init__(self, log_dir: str | os.PathLike, total_steps: int, every: int):
        super().__init__(total_steps, every)
        self.log_dir = os.fspath(log_dir)
        self._writer = None

    def report(self, values: dict[str, float]) -> None:
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        with self._writer.as_default(step=self.step), tf.summary.record_if(True):
            for tag in self.TAGS:
                if tag in values:
                    tf.summary.scalar(tag, values[tag])

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        super().on_epoch_end(epoch, logs)
        if self._writer is not None:
            self._writer.flush()

    def on_train_end(self, logs: dict | None = None) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None
