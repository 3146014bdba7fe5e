"""Chance levels: what a model that ranks at random scores, exactly, for a given split.

Every report of ``malign eval`` states these next to the measured values, so a number can
be read against what guessing gives on the same split (percent, like the metrics).

* Text→image recall at K: each caption's one image is among K of ``N_images`` ranked at
  random with probability ``min(K, N_images) / N_images``.
* Image→text recall at K: an image with ``c`` of the ``N`` captions is found when any of
  them is in the top K: ``1 - C(N - c, K) / C(N, K)``, averaged over the images (their
  caption counts may differ).
* mR: the mean of those values (six for K = 1, 5, 10).
* Classification top-K (zero-shot): ``min(K, C) / C`` for ``C`` classes, whatever the class
  balance (a random ranking of the classes); mean per-class top-1: ``1 / C``.

Example:
    >>> round(image_to_text_chance([2, 1], k=1), 6)      # 3 captions: 2/3 or 1/3, averaged
    0.5
    >>> text_to_image_chance(num_images=4, k=1)
    0.25
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import numpy as np

__all__ = [
    "classification_chance",
    "image_to_text_chance",
    "retrieval_chance",
    "text_to_image_chance",
]


def _check_k(k: int) -> int:
    if int(k) != k or k < 1:
        raise ValueError(f"K must be a positive integer, got {k!r}")
    return int(k)


def text_to_image_chance(num_images: int, k: int) -> float:
    """Probability that a caption's image is in the top K of a random ranking of the images.

    Args:
        num_images: gallery size.
        k: the cut-off.

    Returns:
        ``min(k, num_images) / num_images`` (a fraction, not percent).

    Raises:
        ValueError: when ``num_images`` or ``k`` is not positive.

    Example:
        >>> text_to_image_chance(1000, 10)
        0.01
    """
    k = _check_k(k)
    if num_images < 1:
        raise ValueError(f"the gallery needs at least one image, got {num_images}")
    return min(k, num_images) / num_images


def image_to_text_chance(captions_per_image: Sequence[int] | np.ndarray, k: int) -> float:
    """Probability that an image finds one of its captions in the top K, captions ranked at random.

    An image with ``c`` of the ``N`` captions misses when all K places go to the other
    ``N - c``: probability ``C(N - c, K) / C(N, K) = prod_{j<c} (N - K - j) / (N - j)``
    (0 when ``N - c < K``), computed in exact fractions. The result is the hit probability
    averaged over the images.

    Args:
        captions_per_image: the number of captions of every image (``N`` is their sum).
        k: the cut-off.

    Returns:
        The chance, a fraction in [0, 1].

    Raises:
        ValueError: when an image has no caption (its recall is undefined) or ``k`` < 1.

    Example:
        >>> image_to_text_chance([5] * 1000, 1)        # 5 captions of 5000: 5/5000
        0.001
    """
    k = _check_k(k)
    counts = np.asarray(captions_per_image, dtype=np.int64)
    if counts.ndim != 1 or counts.size == 0:
        raise ValueError("captions_per_image must list at least one image")
    if counts.min() < 1:
        raise ValueError(
            f"image {int(np.argmin(counts))} has no caption; image→text recall is undefined for it"
        )
    n = int(counts.sum())
    hit = Fraction(0)
    for c, images in zip(*np.unique(counts, return_counts=True)):
        miss = Fraction(1)
        for j in range(int(c)):  # all c captions outside the top K
            miss *= Fraction(max(n - k - j, 0), n - j)
        hit += (1 - miss) * int(images)
    hit /= counts.size
    return float(hit)


def retrieval_chance(
    text_to_image: Sequence[int] | np.ndarray, num_images: int, ks: Sequence[int]
) -> dict[str, float]:
    """Chance level of every retrieval metric of a split, in percent.

    Args:
        text_to_image: image index of each caption (as in ``retrieval_metrics``).
        num_images: gallery size (every image needs a caption).
        ks: the K values reported.

    Returns:
        ``{"image_to_text_r{K}": ..., "text_to_image_r{K}": ..., "mean_recall": ...}``,
        keyed as ``metric_keys(ks)``.

    Example:
        >>> retrieval_chance([0, 0, 1, 1], 2, ks=(1,))
        {'image_to_text_r1': 50.0, 'text_to_image_r1': 50.0, 'mean_recall': 50.0}
    """
    t2i = np.asarray(text_to_image, dtype=np.int64)
    counts = np.bincount(t2i, minlength=num_images)
    if counts.size != num_images:
        raise ValueError(f"text_to_image names image {int(t2i.max())} of a gallery of {num_images}")
    out = {f"image_to_text_r{k}": 100.0 * image_to_text_chance(counts, k) for k in ks}
    out.update({f"text_to_image_r{k}": 100.0 * text_to_image_chance(num_images, k) for k in ks})
    out["mean_recall"] = float(np.mean(list(out.values())))
    return out


def classification_chance(num_classes: int, ks: Sequence[int]) -> dict[str, float]:
    """Chance level of zero-shot accuracy with ``num_classes`` classes, in percent.

    Args:
        num_classes: number of classes.
        ks: the top-K values reported.

    Returns:
        ``{"top{K}": min(K, C) / C, "mean_per_class_top1": 1 / C}`` in percent.

    Example:
        >>> classification_chance(30, (1, 5))
        {'top1': 3.3333333333333335, 'top5': 16.666666666666668, 'mean_per_class_top1': 3.3333333333333335}
    """
    if num_classes < 1:
        raise ValueError(f"need at least one class, got {num_classes}")
    out = {f"top{k}": 100.0 * min(_check_k(k), num_classes) / num_classes for k in ks}
    out["mean_per_class_top1"] = 100.0 / num_classes
    return out
