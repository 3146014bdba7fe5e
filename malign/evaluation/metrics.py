"""Image-text retrieval metrics (numpy only): recall at K in both directions and mR.

Protocol (the one the ALIGN paper reports for Flickr30K, MSCOCO and Multi30K):

* ``text_to_image[j]`` is the index of the image that caption ``j`` describes,
  so an image may have any number of captions (Multi30K task1: one per
  language, task2 and Flickr30K: five). Every image needs at least one.
* Image→text: each image queries all captions; it counts as found at K when
  any of its captions is among the K best.
* Text→image: each caption queries all images; found at K when its image is
  among the K best.
* ``mean_recall`` (mR) is the mean of R@1, R@5 and R@10 of both directions.
  Values are percentages.
* Scores are inner products of the embeddings (pass L2-normalised embeddings
  for cosine similarity), computed as the reference scores of
  ``malign.evaluation.retrieval``: float64 products summed in the order of the
  dimensions. A score depends only on the two embeddings, so an image or
  caption stored twice gets exactly the same scores as its copy, whatever the
  backend, memory budget or block a search puts it in.

Ties are broken deterministically: among equal scores, the item with the
smaller index ranks first (``TIE_RULE``). The 0-based rank of a ground-truth
item is therefore ``#(scores > s) + #(scores == s at smaller index)``, and for
an image with several captions, the rank of its best-ranked caption. A model
that gives every item the same score is thus credited only when the answer
happens to come first in storage order, never by chance; of two identical
copies of an image, only the first can be found at rank 0.

``retrieval_metrics`` takes embeddings and runs the exact, memory-bounded
search of ``malign.evaluation.retrieval`` in both directions, so it scales to
galleries far larger than a test set. ``retrieval_metrics_from_similarity``
takes a full similarity matrix and counts ranks directly; given
``similarity_matrix(image_emb, text_emb)`` the two agree exactly.

Example:
    >>> import numpy as np
    >>> from malign.evaluation.metrics import retrieval_metrics
    >>> images = np.eye(3, dtype="float32")
    >>> texts = np.eye(3, dtype="float32")[[0, 0, 1, 2]]   # image 0 has two captions
    >>> m = retrieval_metrics(images, texts, text_to_image=[0, 0, 1, 2])
    >>> m["image_to_text_r1"], m["text_to_image_r1"], m["mean_recall"]
    (100.0, 100.0, 100.0)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from malign.evaluation.retrieval import DEFAULT_MEMORY_BUDGET_BYTES, top_k_search

__all__ = [
    "DEFAULT_KS",
    "METRIC_KEYS",
    "TIE_RULE",
    "ground_truth_ranks",
    "metric_keys",
    "recalls_from_ranks",
    "retrieval_metrics",
    "retrieval_metrics_from_similarity",
    "validate_text_to_image",
]

DEFAULT_KS = (1, 5, 10)
TIE_RULE = "equal scores rank by ascending index (the item stored first ranks higher)"


def metric_keys(ks: Sequence[int] = DEFAULT_KS) -> tuple[str, ...]:
    """Names of the metrics ``retrieval_metrics`` returns for these K values.

    Args:
        ks: the K values of recall at K.

    Returns:
        ``image_to_text_r{K}`` for each K, then ``text_to_image_r{K}``, then
        ``mean_recall``.

    Example:
        >>> metric_keys((1, 5))
        ('image_to_text_r1', 'image_to_text_r5', 'text_to_image_r1', 'text_to_image_r5', 'mean_recall')
    """
    ks = _check_ks(ks)
    return (
        tuple(f"image_to_text_r{k}" for k in ks)
        + tuple(f"text_to_image_r{k}" for k in ks)
        + ("mean_recall",)
    )


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    out = tuple(ks)
    if not out or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 for k in out):
        raise ValueError(f"ks must be a non-empty sequence of positive integers, got {ks!r}")
    if len(set(out)) != len(out):
        raise ValueError(f"ks must not repeat values, got {ks!r}")
    return tuple(int(k) for k in out)


METRIC_KEYS = metric_keys(DEFAULT_KS)


def validate_text_to_image(text_to_image, num_images: int, num_captions: int | None = None) -> np.ndarray:
    """Checks a caption→image index array and returns it as int64.

    Args:
        text_to_image: ``text_to_image[j]`` is the image index of caption ``j``.
        num_images: number of images in the gallery.
        num_captions: expected number of captions, if known.

    Returns:
        The indices as a 1-D int64 array.

    Raises:
        ValueError: if the array is not 1-D integers, has the wrong length,
            points outside ``[0, num_images)``, or leaves an image without a
            caption (image→text recall would be undefined for it).

    Example:
        >>> validate_text_to_image([0, 1, 1], num_images=2).tolist()
        [0, 1, 1]
    """
    t2i = np.asarray(text_to_image)
    if t2i.ndim != 1:
        raise ValueError(f"text_to_image must be 1-D, got shape {t2i.shape}")
    if t2i.size and not np.issubdtype(t2i.dtype, np.integer):
        raise ValueError(f"text_to_image must hold integer image indices, got dtype {t2i.dtype}")
    t2i = t2i.astype(np.int64)
    if num_captions is not None and t2i.size != num_captions:
        raise ValueError(f"text_to_image has {t2i.size} entries but there are {num_captions} captions")
    if num_images < 1:
        raise ValueError("there are no images")
    if t2i.size == 0:
        raise ValueError("there are no captions")
    bad = np.flatnonzero((t2i < 0) | (t2i >= num_images))
    if bad.size:
        raise ValueError(
            f"text_to_image[{bad[0]}] = {t2i[bad[0]]} is not an image index in [0, {num_images})"
        )
    counts = np.bincount(t2i, minlength=num_images)
    orphans = np.flatnonzero(counts == 0)
    if orphans.size:
        shown = ", ".join(str(i) for i in orphans[:10]) + (", ..." if orphans.size > 10 else "")
        raise ValueError(
            f"{orphans.size} image(s) have no caption (indices {shown}); image→text recall is "
            "undefined for them: drop them from the gallery or give them captions"
        )
    return t2i


def _check_matrix(name: str, array) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise ValueError(f"{name} must hold real numbers, got dtype {array.dtype}")
    rows = max(1, (1 << 24) // max(1, array.shape[1]))  # bounded temporary for large arrays
    for start in range(0, array.shape[0], rows):
        if not np.all(np.isfinite(array[start : start + rows])):
            raise ValueError(f"{name} contains NaN or infinite values")
    return array


def recalls_from_ranks(
    image_to_text_ranks: np.ndarray, text_to_image_ranks: np.ndarray, ks: Sequence[int] = DEFAULT_KS
) -> dict[str, float]:
    """Recall at K (percent) and their mean from 0-based ground-truth ranks.

    Args:
        image_to_text_ranks: per image, the rank of its best-ranked caption.
        text_to_image_ranks: per caption, the rank of its image.
        ks: K values.

    Returns:
        A dict with the keys of ``metric_keys(ks)``.

    Example:
        >>> recalls_from_ranks(np.array([0, 7]), np.array([0, 1, 20]), ks=(1, 10))["text_to_image_r10"]
        66.66666666666666
    """
    ks = _check_ks(ks)
    i2t = np.asarray(image_to_text_ranks)
    t2i = np.asarray(text_to_image_ranks)
    out = {}
    for k in ks:
        out[f"image_to_text_r{k}"] = float(np.mean(i2t < k) * 100.0)
    for k in ks:
        out[f"text_to_image_r{k}"] = float(np.mean(t2i < k) * 100.0)
    out["mean_recall"] = float(np.mean(list(out.values())))
    return out


def ground_truth_ranks(similarity, text_to_image) -> tuple[np.ndarray, np.ndarray]:
    """Exact 0-based ranks of the ground truth in a full similarity matrix.

    Uses the tie rule of this module: ``rank = #(greater) + #(equal at a
    smaller index)``. Memory grows with the matrix; for large galleries use
    ``retrieval_metrics`` on embeddings.

    Args:
        similarity: ``[num_images, num_captions]`` scores.
        text_to_image: image index of each caption.

    Returns:
        ``(image_to_text_ranks [num_images], text_to_image_ranks [num_captions])``
        as int64; an image's rank is that of its best-ranked caption.

    Example:
        >>> s = np.array([[0.9, 0.9], [0.1, 0.5]])
        >>> [r.tolist() for r in ground_truth_ranks(s, [1, 0])]
        [[1, 1], [1, 0]]
    """
    s = _check_matrix("similarity", similarity)
    num_images, num_captions = s.shape
    t2i = validate_text_to_image(text_to_image, num_images, num_captions)
    image_ids = np.arange(num_images)
    caption_ids = np.arange(num_captions)

    # Text→image: column j ranks the images for caption j.
    gt = s[t2i, caption_ids]
    t2i_ranks = (s > gt[None, :]).sum(axis=0) + (
        (s == gt[None, :]) & (image_ids[:, None] < t2i[None, :])
    ).sum(axis=0)

    # Image→text: the best-ranked own caption is the one with the highest
    # score, and among equal scores the one with the smallest index.
    own = t2i[None, :] == image_ids[:, None]
    best = np.where(own, s, -np.inf).max(axis=1)
    first_best = np.argmax(own & (s == best[:, None]), axis=1)
    i2t_ranks = (s > best[:, None]).sum(axis=1) + (
        (s == best[:, None]) & (caption_ids[None, :] < first_best[:, None])
    ).sum(axis=1)
    return i2t_ranks.astype(np.int64), t2i_ranks.astype(np.int64)


def retrieval_metrics_from_similarity(
    similarity, text_to_image, ks: Sequence[int] = DEFAULT_KS
) -> dict[str, float]:
    """Retrieval metrics from a full ``[num_images, num_captions]`` similarity matrix.

    Args:
        similarity: ``similarity[i, j]`` is the score of image ``i`` and caption ``j``.
        text_to_image: image index of each caption.
        ks: K values of recall at K.

    Returns:
        A dict with the keys of ``metric_keys(ks)``, values in percent.

    Example:
        >>> s = np.array([[0.9, 0.2], [0.3, 0.8]])
        >>> retrieval_metrics_from_similarity(s, [0, 1])["mean_recall"]
        100.0
    """
    i2t, t2i = ground_truth_ranks(similarity, text_to_image)
    return recalls_from_ranks(i2t, t2i, ks)


def retrieval_metrics(
    image_emb,
    text_emb,
    text_to_image,
    ks: Sequence[int] = DEFAULT_KS,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
    backend: str = "numpy",
) -> dict[str, float]:
    """Image→text and text→image recall at K and their mean (mR), in percent.

    Exact at any gallery size: both directions run ``top_k_search`` with
    ``k = max(ks)``, which holds one block of the similarity matrix at a time
    within ``memory_budget_bytes``; the tie rule is the module's (ascending
    index among equal scores). The result does not depend on the budget or
    the backend, and equals ``retrieval_metrics_from_similarity`` of
    ``malign.evaluation.retrieval.similarity_matrix(image_emb, text_emb)``.

    Args:
        image_emb: ``[num_images, D]`` image embeddings.
        text_emb: ``[num_captions, D]`` caption embeddings.
        text_to_image: ``text_to_image[j]`` is the image index of caption ``j``;
            any number of captions per image, at least one each.
        ks: K values of recall at K.
        memory_budget_bytes: working-memory bound of the search.
        backend: ``"numpy"`` or ``"tensorflow"`` (see ``top_k_search``).

    Returns:
        ``{"image_to_text_r1", "image_to_text_r5", "image_to_text_r10",
        "text_to_image_r1", "text_to_image_r5", "text_to_image_r10",
        "mean_recall"}`` (keys follow ``ks``) as Python floats.

    Raises:
        ValueError: on mismatched shapes, non-finite values, bad indices, or an
            image without a caption.

    Example:
        >>> img = np.array([[1.0, 0.0], [0.0, 1.0]])
        >>> txt = np.array([[0.0, 1.0], [1.0, 0.0]])   # swapped captions
        >>> retrieval_metrics(img, txt, [0, 1], ks=(1,))
        {'image_to_text_r1': 0.0, 'text_to_image_r1': 0.0, 'mean_recall': 0.0}
    """
    ks = _check_ks(ks)
    image_emb = _check_matrix("image_emb", image_emb)
    text_emb = _check_matrix("text_emb", text_emb)
    if image_emb.shape[1] != text_emb.shape[1]:
        raise ValueError(
            f"image and text embeddings differ in width: {image_emb.shape[1]} and {text_emb.shape[1]}"
        )
    num_images, num_captions = image_emb.shape[0], text_emb.shape[0]
    t2i = validate_text_to_image(text_to_image, num_images, num_captions)
    search = dict(memory_budget_bytes=memory_budget_bytes, backend=backend, check_finite=False)

    k = min(max(ks), num_captions)
    _, found = top_k_search(image_emb, text_emb, k, **search)
    i2t_ranks = _first_hit(t2i[found] == np.arange(num_images)[:, None], miss=num_captions)

    k = min(max(ks), num_images)
    _, found = top_k_search(text_emb, image_emb, k, **search)
    t2i_ranks = _first_hit(found == t2i[:, None], miss=num_images)
    return recalls_from_ranks(i2t_ranks, t2i_ranks, ks)


def _first_hit(hits: np.ndarray, miss: int) -> np.ndarray:
    """Column of the first True per row, ``miss`` for rows without one."""
    first = np.argmax(hits, axis=1)
    return np.where(hits.any(axis=1), first, miss).astype(np.int64)
