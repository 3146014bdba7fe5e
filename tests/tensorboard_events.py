"""Reads TensorBoard event files back, for tests of what training logs."""

from __future__ import annotations

import tensorflow as tf


def read_scalars(log_dir) -> dict[str, dict[int, float]]:
    """``{tag: {step: value}}`` of every scalar summary in ``log_dir``'s event files."""
    tags: dict[str, dict[int, float]] = {}
    for path in tf.io.gfile.glob(str(log_dir / "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                tags.setdefault(value.tag, {})[event.step] = float(tf.make_ndarray(value.tensor))
    return tags
