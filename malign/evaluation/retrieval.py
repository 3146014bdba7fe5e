"""Exact top-k inner-product search in bounded memory.

``top_k_search`` returns, for every query, the ``k`` gallery items with the
largest inner product, exactly as a brute-force sort of the full similarity
matrix would, while holding only one block of that matrix at a time. The block
sizes follow from a memory budget (512 MiB by default), so a gallery of
millions of embeddings, even a ``np.memmap`` on disk, is searched with a few
hundred megabytes of working memory.

Ordering and ties: results are sorted by descending score; equal scores are
ordered by ascending gallery index (the item stored first wins). This is the
order of ``np.lexsort((index, -score))`` over a full row, and the same rule
``malign.evaluation.metrics`` uses for ranks.

Exact means every score is computed and the ranking is that of a full sort
of those scores. BLAS may sum a dot product in a different order for
different block shapes, so a score can differ from the one a single
full-matrix matmul gives by float rounding (about 1e-7 for normalised float32
embeddings); only items whose scores differ by less than that could swap.

Two backends:

* ``"numpy"`` (default, CPU): one float32 BLAS matmul per block into one of
  two preallocated buffers (a worker thread computes the next block while the
  current one is reduced), then a threshold filter. Each query keeps its current
  k-th best score; the block's columns are split into ``lanes`` (column ``j``
  belongs to lane ``j % lanes``), and a vectorised maximum per lane, far
  cheaper than a sort, shows which few lanes can hold a better score. Only
  those lanes are read again. The threshold also uses the k-th largest lane
  maximum of the block, which is a valid lower bound of the block's k-th
  largest score. Reduction costs about 5% of the matmul.
* ``"tensorflow"``: ``tf.matmul`` and ``tf.math.top_k`` per block (whose
  documented tie rule is "lower index first"), then a top-k merge with the
  running result; runs on the default TensorFlow device (GPU/TPU if present)
  or on ``device``.

Example:
    >>> import numpy as np
    >>> from malign.evaluation.retrieval import top_k_search
    >>> rng = np.random.default_rng(0)
    >>> gallery = rng.standard_normal((1000, 8)).astype("float32")
    >>> gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    >>> queries = gallery[:3] * 2.0
    >>> scores, indices = top_k_search(queries, gallery, k=2)
    >>> indices[:, 0].tolist()
    [0, 1, 2]
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
from typing import Literal

import numpy as np

__all__ = [
    "DEFAULT_MEMORY_BUDGET_BYTES",
    "SearchPlan",
    "brute_force_top_k",
    "plan_search",
    "top_k_search",
]

DEFAULT_MEMORY_BUDGET_BYTES = 512 * 1024 * 1024
_DEFAULT_QUERY_BLOCK = 2048
_MIN_LANES = 512
_SLACK_LANES = 8


@dataclasses.dataclass(frozen=True)
class SearchPlan:
    """Block sizes of one search and the working memory they need.

    Attributes:
        query_block: queries per matmul block.
        gallery_block: gallery items per matmul block.
        lanes: number of lanes the numpy backend splits a block's columns into.
        working_bytes: estimated working memory (buffers, casts, scratch), not
            counting the inputs and the ``[num_queries, k]`` outputs.
    """

    query_block: int
    gallery_block: int
    lanes: int
    working_bytes: int


def _lanes_for(gallery_block: int, k: int) -> int:
    return min(gallery_block, max(_MIN_LANES, 2 * k))


def _working_bytes(qb: int, gb: int, dim: int, k: int, itemsize: int) -> int:
    lanes = _lanes_for(gb, k)
    per_lane = -(-gb // lanes)
    scores = 2 * qb * gb * itemsize  # two buffers: one is reduced while the next is computed
    casts = (qb + gb) * dim * itemsize
    lane_max = 2 * qb * lanes * itemsize
    # Gathered lanes of one row group (values + column ids + mask), capped in
    # _numpy_search to this amount, plus the merge arrays.
    scratch = min(qb, 256) * (k + _SLACK_LANES) * per_lane * (itemsize + 8 + 1)
    merge = qb * (k + _SLACK_LANES * 4) * 40
    return scores + casts + lane_max + scratch + merge


def plan_search(
    num_queries: int,
    num_gallery: int,
    dim: int,
    k: int,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
    itemsize: int = 4,
    query_block: int | None = None,
    gallery_block: int | None = None,
) -> SearchPlan:
    """Chooses block sizes so that the working memory fits the budget.

    Larger blocks make the matmul faster, so the plan takes up to 2048 queries
    per block and as many gallery items as the budget then allows.

    Args:
        num_queries: number of query vectors.
        num_gallery: number of gallery vectors.
        dim: embedding width.
        k: results per query.
        memory_budget_bytes: bound on the working memory.
        itemsize: bytes per score (4 for float32, 8 for float64).
        query_block: fixes the queries per block instead of choosing it.
        gallery_block: fixes the gallery items per block instead of choosing it.

    Returns:
        A ``SearchPlan``.

    Raises:
        ValueError: when even the smallest blocks exceed the budget.

    Example:
        >>> plan = plan_search(10_000, 1_000_000, 640, 10)
        >>> plan.working_bytes <= 512 * 2**20
        True
    """
    if min(num_queries, num_gallery, dim, k) < 1:
        raise ValueError(
            f"num_queries, num_gallery, dim and k must be positive, got "
            f"{num_queries}, {num_gallery}, {dim}, {k}"
        )
    if query_block is not None and gallery_block is not None:
        qb, gb = min(query_block, num_queries), min(gallery_block, num_gallery)
        if qb < 1 or gb < 1:
            raise ValueError("query_block and gallery_block must be positive")
        return SearchPlan(qb, gb, _lanes_for(gb, k), _working_bytes(qb, gb, dim, k, itemsize))

    qb = min(query_block or _DEFAULT_QUERY_BLOCK, num_queries)
    if qb < 1:
        raise ValueError(f"query_block must be positive, got {query_block}")
    # Wide gallery blocks matter more for speed than tall query blocks; a
    # gallery block of at least this many items keeps the matmul efficient.
    want_gb = min(num_gallery, max(8192, 4 * k))
    while True:
        if gallery_block is not None:
            gb = min(gallery_block, num_gallery)
        else:
            gb = _largest_fitting_gallery_block(qb, num_gallery, dim, k, itemsize, memory_budget_bytes)
        need = _working_bytes(qb, gb, dim, k, itemsize) if gb >= 1 else None
        fits = need is not None and need <= memory_budget_bytes
        if fits and (gb >= want_gb or qb == 1 or query_block is not None):
            return SearchPlan(qb, gb, _lanes_for(gb, k), need)
        if qb == 1 or query_block is not None:
            smallest = _working_bytes(1, min(num_gallery, max(1, k)), dim, k, itemsize)
            raise ValueError(
                f"memory budget of {memory_budget_bytes} bytes is too small for this search "
                f"(dim={dim}, k={k}); it needs at least about {smallest} bytes"
            )
        qb = max(1, qb // 2)


def _largest_fitting_gallery_block(
    qb: int, num_gallery: int, dim: int, k: int, itemsize: int, budget: int
) -> int:
    lo, hi = 0, num_gallery
    while lo < hi:  # largest gb in [1, num_gallery] that fits, 0 if none
        mid = (lo + hi + 1) // 2
        if _working_bytes(qb, mid, dim, k, itemsize) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def brute_force_top_k(queries: np.ndarray, gallery: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference top-k: full similarity matrix, then a stable sort per row.

    Memory grows with ``len(queries) * len(gallery)``; use it for checks only.

    Args:
        queries: ``[Q, D]`` array.
        gallery: ``[N, D]`` array.
        k: results per query, at most ``N``.

    Returns:
        ``(scores [Q, k], indices [Q, k] int64)``, by descending score, ties by
        ascending index.

    Example:
        >>> import numpy as np
        >>> brute_force_top_k(np.ones((1, 2)), np.ones((3, 2)), 2)[1].tolist()
        [[0, 1]]
    """
    queries, gallery, dtype = _check_inputs(queries, gallery, k)
    scores = np.asarray(queries, dtype) @ np.asarray(gallery, dtype).T
    # A stable argsort of -score keeps ascending index among equal scores.
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), order.astype(np.int64)


def _check_inputs(queries, gallery, k: int) -> tuple[np.ndarray, np.ndarray, np.dtype]:
    if not hasattr(queries, "shape") or not hasattr(gallery, "shape"):
        queries, gallery = np.asarray(queries), np.asarray(gallery)
    if queries.ndim != 2 or gallery.ndim != 2:
        raise ValueError(
            f"queries and gallery must be 2-D [count, dim], got shapes {queries.shape} and {gallery.shape}"
        )
    if queries.shape[1] != gallery.shape[1]:
        raise ValueError(
            f"queries and gallery must have the same width, got {queries.shape[1]} and {gallery.shape[1]}"
        )
    if gallery.shape[0] == 0:
        raise ValueError("the gallery is empty")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if k > gallery.shape[0]:
        raise ValueError(f"k={k} is larger than the gallery ({gallery.shape[0]} items)")
    dtype = np.result_type(queries.dtype, gallery.dtype, np.float32)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"embeddings must be real numbers, got {queries.dtype} and {gallery.dtype}")
    return queries, gallery, np.dtype(dtype)


def top_k_search(
    queries: np.ndarray,
    gallery: np.ndarray,
    k: int,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
    backend: Literal["numpy", "tensorflow"] = "numpy",
    query_block: int | None = None,
    gallery_block: int | None = None,
    device: str | None = None,
    check_finite: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product, in blocks that fit a memory budget.

    The result equals ``brute_force_top_k``: descending score, ties by
    ascending gallery index. Pass L2-normalised embeddings for cosine
    similarity. The gallery is read block by block, once, so it may be a
    ``np.memmap``.

    Args:
        queries: ``[Q, D]`` float array.
        gallery: ``[N, D]`` float array (or memmap).
        k: results per query, ``1 <= k <= N``.
        memory_budget_bytes: bound on the working memory of the search (the
            inputs and the ``[Q, k]`` outputs are not counted).
        backend: ``"numpy"`` (CPU BLAS) or ``"tensorflow"`` (default TF device).
        query_block: queries per block; chosen from the budget when None.
        gallery_block: gallery items per block; chosen from the budget when None.
        device: TensorFlow device for the ``"tensorflow"`` backend, e.g. ``"/GPU:0"``.
        check_finite: reject NaN and infinite values (which have no order).

    Returns:
        ``(scores [Q, k], indices [Q, k] int64)``. Scores have the inputs'
        float dtype (float32 unless an input is float64).

    Raises:
        ValueError: on mismatched shapes, ``k`` out of range, non-finite
            values, or a budget too small for one block.

    Example:
        >>> import numpy as np
        >>> gallery = np.eye(4, dtype="float32")
        >>> scores, idx = top_k_search(np.array([[0.0, 0.5, 0.5, 0.0]], "float32"), gallery, k=3)
        >>> idx.tolist(), scores.tolist()
        ([[1, 2, 0]], [[0.5, 0.5, 0.0]])
    """
    queries, gallery, dtype = _check_inputs(queries, gallery, k)
    num_queries, dim = queries.shape
    num_gallery = gallery.shape[0]
    if num_queries == 0:
        return np.zeros((0, k), dtype), np.zeros((0, k), np.int64)
    # TensorFlow holds its own copies (the block as a tensor, top_k's workspace, the
    # allocator's cache): plan its blocks for half the budget.
    plan_budget = memory_budget_bytes // 2 if backend == "tensorflow" else memory_budget_bytes
    plan = plan_search(num_queries, num_gallery, dim, k, plan_budget, dtype.itemsize, query_block, gallery_block)
    if check_finite:
        rows = max(1, (1 << 24) // max(1, dim))
        for start in range(0, num_queries, rows):
            if not np.all(np.isfinite(queries[start : start + rows])):
                raise ValueError("queries contain NaN or infinite values")
    if backend == "numpy":
        return _numpy_search(queries, gallery, k, plan, dtype, check_finite)
    if backend == "tensorflow":
        return _tensorflow_search(queries, gallery, k, plan, dtype, device, check_finite)
    raise ValueError(f"backend must be 'numpy' or 'tensorflow', got {backend!r}")


def _as_block(array: np.ndarray, start: int, stop: int, dtype: np.dtype, check_finite: bool) -> np.ndarray:
    block = np.ascontiguousarray(array[start:stop], dtype=dtype)
    if check_finite and not np.all(np.isfinite(block)):
        raise ValueError(f"gallery rows {start}..{stop - 1} contain NaN or infinite values")
    return block


def _numpy_search(queries, gallery, k, plan: SearchPlan, dtype, check_finite):
    num_queries = queries.shape[0]
    num_gallery = gallery.shape[0]
    top_scores = np.full((num_queries, k), -np.inf, dtype)
    top_index = np.full((num_queries, k), -1, np.int64)
    # kth[q] is the k-th best score so far (-inf until k items were seen).
    kth = np.full(num_queries, -np.inf, dtype)
    query_blocks = [
        (start, min(start + plan.query_block, num_queries))
        for start in range(0, num_queries, plan.query_block)
    ]
    # Tasks in gallery order: a query's running top-k only ever merges later items.
    tasks = [
        (g0, min(g0 + plan.gallery_block, num_gallery), q0, q1)
        for g0 in range(0, num_gallery, plan.gallery_block)
        for q0, q1 in query_blocks
    ]
    # Two score buffers: a worker thread runs the next block's matmul (BLAS releases
    # the GIL) while this thread reduces the current one.
    buffers = [np.empty(plan.query_block * plan.gallery_block, dtype) for _ in range(min(2, len(tasks)))]
    lane_buffer = np.empty(plan.query_block * plan.lanes, dtype)
    cached = _as_block(queries, 0, num_queries, dtype, False) if len(query_blocks) == 1 else None
    current: dict = {}

    def matmul(i: int) -> np.ndarray:
        g0, g1, q0, q1 = tasks[i]
        if current.get("start") != g0:  # each gallery block is read (and cast) once
            current["start"], current["block"] = g0, _as_block(gallery, g0, g1, dtype, check_finite)
        q = cached if cached is not None else _as_block(queries, q0, q1, dtype, False)
        scores = buffers[i % len(buffers)][: (q1 - q0) * (g1 - g0)].reshape(q1 - q0, g1 - g0)
        np.matmul(q, current["block"].T, out=scores)
        return scores

    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="malign-topk") as worker:
        pending = worker.submit(matmul, 0)
        for i, (g0, g1, q0, q1) in enumerate(tasks):
            scores = pending.result()
            if i + 1 < len(tasks):
                pending = worker.submit(matmul, i + 1)
            lanes = min(plan.lanes, g1 - g0)
            lane_max = lane_buffer[: (q1 - q0) * lanes].reshape(q1 - q0, lanes)
            _lane_maxima(scores, lanes, lane_max)
            _reduce_block(scores, lane_max, g0, k, kth[q0:q1], top_scores[q0:q1], top_index[q0:q1])
    return top_scores, top_index


def _lane_maxima(scores: np.ndarray, lanes: int, out: np.ndarray) -> None:
    """out[r, b] = max of scores[r, j] over columns j with j % lanes == b."""
    width = scores.shape[1]
    full = width // lanes
    np.max(scores[:, : full * lanes].reshape(scores.shape[0], full, lanes), axis=1, out=out)
    tail = width - full * lanes
    if tail:
        np.maximum(out[:, :tail], scores[:, full * lanes :], out=out[:, :tail])


def _reduce_block(scores, lane_max, offset, k, kth, top_scores, top_index) -> None:
    """Merges one block of scores into the running top-k of its queries (in place)."""
    rows, width = scores.shape
    lanes = lane_max.shape[1]
    # Any score below the k-th largest lane maximum is beaten by k distinct
    # items of this block; any score equal to the running k-th best loses to
    # it (the running items have smaller indices). So the candidates are the
    # scores >= threshold.
    threshold = np.nextafter(kth, np.inf)
    if lanes >= k:
        kth_lane = np.partition(lane_max, lanes - k, axis=1)[:, lanes - k]
        np.maximum(threshold, kth_lane, out=threshold)
    active_rows, active_lanes = np.nonzero(lane_max >= threshold[:, None])
    if active_rows.size == 0:
        return
    counts = np.bincount(active_rows, minlength=rows)
    # More than k + slack active lanes happens only with tied lane maxima;
    # such rows take an exact per-row path so the candidates stay few.
    crowded = counts > k + _SLACK_LANES if lanes >= k else np.zeros(rows, bool)
    cand_rows, cand_cols = [], []
    if crowded.any():
        keep = ~crowded[active_rows]
        active_rows, active_lanes = active_rows[keep], active_lanes[keep]
        for r in np.flatnonzero(crowded):
            cols = _exact_row_candidates(scores[r], threshold[r], k)
            cand_rows.append(np.full(cols.size, r, np.int64))
            cand_cols.append(cols)
    per_lane = -(-width // lanes)
    steps = np.arange(per_lane, dtype=np.int64) * lanes
    # Gather the active lanes in pieces so the scratch memory stays bounded.
    piece = max(1, (256 * (k + _SLACK_LANES)))
    for p0 in range(0, active_rows.size, piece):
        r = active_rows[p0 : p0 + piece]
        cols = active_lanes[p0 : p0 + piece, None] + steps[None, :]
        valid = cols < width
        np.minimum(cols, width - 1, out=cols)
        values = scores[r[:, None], cols]
        hit = (values >= threshold[r, None]) & valid
        pos, step = np.nonzero(hit)
        cand_rows.append(r[pos].astype(np.int64))
        cand_cols.append(cols[pos, step])
    cand_rows = np.concatenate(cand_rows)
    if cand_rows.size == 0:
        return
    cand_cols = np.concatenate(cand_cols)
    _merge(scores, cand_rows, cand_cols, offset, k, kth, top_scores, top_index)


def _exact_row_candidates(row: np.ndarray, threshold, k: int) -> np.ndarray:
    """Columns of this block's row that can enter the top k (at most k)."""
    width = row.shape[0]
    kth_row = np.partition(row, width - k)[width - k] if width >= k else -np.inf
    t = max(threshold, kth_row)
    greater = np.flatnonzero(row > t)
    equal = np.flatnonzero(row == t)[: max(0, k - greater.size)]  # lowest indices first
    return np.concatenate([greater, equal])


def _merge(scores, cand_rows, cand_cols, offset, k, kth, top_scores, top_index) -> None:
    rows = np.unique(cand_rows)
    old_rows = np.repeat(rows, k)
    all_rows = np.concatenate([old_rows, cand_rows])
    all_scores = np.concatenate([top_scores[rows].ravel(), scores[cand_rows, cand_cols]])
    all_index = np.concatenate([top_index[rows].ravel(), cand_cols.astype(np.int64) + offset])
    # Empty slots carry index -1 and score -inf; give them the largest index
    # so that they sort after any real item.
    sort_index = np.where(all_index < 0, np.iinfo(np.int64).max, all_index)
    order = np.lexsort((sort_index, -all_scores, all_rows))
    counts = np.bincount(all_rows, minlength=top_scores.shape[0])[rows]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    take = order[starts[:, None] + np.arange(k)[None, :]]
    top_scores[rows] = all_scores[take]
    top_index[rows] = all_index[take]
    kth[rows] = top_scores[rows, k - 1]


def _tensorflow_search(queries, gallery, k, plan: SearchPlan, dtype, device, check_finite):
    import contextlib

    import tensorflow as tf

    tf_dtype = tf.float32 if dtype == np.float32 else tf.float64

    @tf.function(reduce_retracing=True)
    def step(q, g, run_scores, run_index, offset):
        scores = tf.matmul(q, g, transpose_b=True)
        chunk_k = tf.minimum(k, tf.shape(g)[0])
        chunk_scores, chunk_pos = tf.math.top_k(scores, k=chunk_k, sorted=True)
        chunk_index = tf.cast(chunk_pos, tf.int64) + offset
        # Running items come first and have smaller indices: top_k keeps the
        # earlier position among equal values, so ties stay index-ascending.
        all_scores = tf.concat([run_scores, chunk_scores], axis=1)
        all_index = tf.concat([run_index, chunk_index], axis=1)
        best, pos = tf.math.top_k(all_scores, k=k, sorted=True)
        return best, tf.gather(all_index, pos, batch_dims=1)

    num_queries = queries.shape[0]
    scope = tf.device(device) if device else contextlib.nullcontext()
    with scope:
        blocks = []
        for q0 in range(0, num_queries, plan.query_block):
            q1 = min(q0 + plan.query_block, num_queries)
            blocks.append(
                [
                    tf.constant(_as_block(queries, q0, q1, dtype, False)),
                    tf.fill([q1 - q0, k], tf.constant(-np.inf, tf_dtype)),
                    tf.fill([q1 - q0, k], tf.constant(-1, tf.int64)),
                ]
            )
        for g0 in range(0, gallery.shape[0], plan.gallery_block):
            g1 = min(g0 + plan.gallery_block, gallery.shape[0])
            g = tf.constant(_as_block(gallery, g0, g1, dtype, check_finite))
            offset = tf.constant(g0, tf.int64)
            for block in blocks:
                block[1], block[2] = step(block[0], g, block[1], block[2], offset)
            del g
    scores = np.concatenate([b[1].numpy() for b in blocks])
    index = np.concatenate([b[2].numpy() for b in blocks])
    return scores.astype(dtype, copy=False), index
