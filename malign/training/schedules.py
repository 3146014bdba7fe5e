"""Learning-rate schedules: linear warm-up, then linear or cosine decay (ALIGN, Jia et al. 2021)."""

from __future__ import annotations

import math

import keras

from malign.config import TrainingConfig


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

