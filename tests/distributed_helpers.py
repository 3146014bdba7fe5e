"""Shared pieces of the distributed-equivalence tests (also run inside worker processes)."""

from __future__ import annotations

import numpy as np


def make_batch(n: int, seed: int = 0, size: int = 32, length: int = 16, vocab: int = 1000):
    """A deterministic batch of images and captions shaped for the tiny preset."""
    rng = np.random.default_rng(seed)
    images = rng.random((n, size, size, 3), dtype=np.float32)
    lengths = rng.integers(3, length + 1, size=n)
    ids = rng.integers(5, vocab, size=(n, length)).astype("int32")
    pos = np.arange(length)[None, :]
    ids[:, 0] = 2
    ids[pos == (lengths[:, None] - 1)] = 3
    mask = (pos < lengths[:, None]).astype("int32")
    return {"image": images, "token_ids": ids * mask, "padding_mask": mask}


def flat_weights(model) -> dict[str, np.ndarray]:
    """Every model weight (trainable and batch-norm statistics) by its path."""
    return {w.path: np.array(w.numpy()) for w in model.weights}
