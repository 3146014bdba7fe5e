"""Exact top-k inner-product search in bounded memory.

``top_k_search`` returns, for every query, the ``k`` gallery items with the
largest inner product, exactly as a brute-force sort of the full similarity
matrix would, while holding only one block of that matrix at a time. The block
sizes follow from a memory budget (512 MiB by default), so a gallery of
millions of embeddings, even a ``np.memmap`` on disk, is searched with a few
hundred megabytes of working memory.

Scores: the score of a query ``q`` and a gallery item ``g`` is defined as one
fixed computation, the *reference score*: the products ``q[d] * g[d]`` in
float64 (exact for float32 inputs), summed in float64 in the order
``d = 0, 1, ..., D - 1``. It depends on the two vectors only, never on where
they sit in a block, the block's shape, the backend or the BLAS library, so
identical embeddings (a photo stored twice) always get bit-identical scores;
and it is within about ``D * 1e-16`` (relative) of the exact inner product,
so it orders distinct items as a float64 matmul would. A BLAS matmul does
not have that property: it sums in an order that depends on the block shape
and on the position inside the block (matrix-vector products for a block of
one row, different kernels at block edges), so the same pair can differ in
its last bits from one budget or backend to another.
``similarity_matrix`` computes the full matrix of reference scores.

Ordering and ties: results are sorted by descending reference score; equal
scores are ordered by ascending gallery index (the item stored first wins).
This is the order of ``np.lexsort((index, -score))`` over a full row of
``similarity_matrix``, and the same rule ``malign.evaluation.metrics`` uses
for ranks. It holds for ties inside a block and across blocks, on both
backends and at every budget.

How it stays fast: each block is first scored with one BLAS matmul. A BLAS
score differs from the reference score by at most
``err = 2 (D + 2) u |q| max|g|`` (``u`` the unit roundoff of the inputs'
dtype, 2^-24 for float32: the standard bound of a dot product summed in any
order, with a margin, plus a term for flushed subnormals; see
``score_error_bound``). So only items whose BLAS score is within ``err`` of
the running k-th best (and within ``2 err`` of the block's k-th best) can
enter the top k; those few candidates get their reference score, and the
running top k is merged by reference score and index. When a query has many
near-tied candidates in a block, identical embeddings among them (found once
per block by a hash of their bits, then compared) share one reference
computation, so a gallery with thousands of copies of one embedding stays
fast.

Two backends:

* ``"numpy"`` (default, CPU): one BLAS matmul per block into one of two
  preallocated buffers (a worker thread computes the next block while the
  current one is reduced), then a threshold filter. Each query keeps its
  current k-th best score; the block's columns are split into ``lanes``
  (column ``j`` belongs to lane ``j % lanes``), and a vectorised maximum per
  lane, far cheaper than a sort, shows which few lanes can hold a candidate.
  Only those lanes are read again. The threshold also uses the k-th largest
  lane maximum of the block, a lower bound of the block's k-th largest score.
* ``"tensorflow"``: ``tf.matmul`` and ``tf.math.top_k`` of ``2k + 8`` per
  block on the default TensorFlow device (GPU/TPU if present) or on
  ``device``; the host picks the candidates from those, and recomputes a
  query's row of the block with numpy in the rare case that more than
  ``2k + 8`` items are that close to its k-th best. TensorFloat-32 matmuls
  (on by default on Ampere GPUs, 10-bit mantissas) are switched off during
  the search and restored after, since their error is far above ``err``.

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
    "score_error_bound",
    "similarity_matrix",
    "top_k_search",
]

DEFAULT_MEMORY_BUDGET_BYTES = 512 * 1024 * 1024
_DEFAULT_QUERY_BLOCK = 2048
_MIN_LANES = 512
_SLACK_LANES = 8
# Candidate pairs given their reference score at a time (their float64 copies are scratch).
_RESCORE_BYTES = 4 * 2**20
# Odd 64-bit multiplier of the row hash that finds identical gallery rows.
_HASH_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)
# Score blocks of fewer elements are computed without the worker thread.
_THREADED_BLOCK = 1 << 16
# Elements of a tile of the brute-force reference.
_REFERENCE_TILE = 1 << 15


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


def _rescore_pairs(qb: int, gb: int, dim: int, itemsize: int) -> int:
    """Candidate pairs rescored at a time: their scratch is at most 4 MiB and 1/8 of a score block."""
    per_pair = dim * (2 * itemsize + 24)
    return max(16, min(_RESCORE_BYTES, qb * gb * itemsize // 8) // per_pair)


def _working_bytes(qb: int, gb: int, dim: int, k: int, itemsize: int) -> int:
    lanes = _lanes_for(gb, k)
    per_lane = -(-gb // lanes)
    scores = 2 * qb * gb * itemsize  # two buffers: one is reduced while the next is computed
    casts = (qb + gb) * dim * itemsize
    lane_max = 2 * qb * lanes * itemsize
    # Gathered lanes of one row group (values, column ids, masks), capped in
    # _reduce_block to this amount; at worst all of them are candidates, with
    # row and gallery ids, reference scores and the merge's arrays.
    scratch = min(qb, 256) * (k + _SLACK_LANES) * per_lane * (itemsize + 8 + 2 + 96)
    merge = qb * (k + _SLACK_LANES * 4) * 40
    # One crowded row (near-tied scores): its candidates' indices, groups and scores;
    # the block's identical rows (hash, order, first copy, comparisons).
    crowded = gb * (6 * 8 + 2 * itemsize + 1) + gb * (8 * 8 + 32)
    pairs = _rescore_pairs(qb, gb, dim, itemsize)
    rescore = pairs * (dim * (2 * itemsize + 24) + 24)
    bounds = qb * 8 * 6 + gb * 16  # norms, error bounds, thresholds
    return scores + casts + lane_max + scratch + merge + crowded + rescore + bounds


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


def similarity_matrix(queries: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """The full matrix of reference scores, the scores ``top_k_search`` ranks by.

    Entry ``[i, j]`` is ``queries[i] . gallery[j]`` computed as the module
    docstring defines it: float64 products summed in float64 in the order of
    the dimensions. It depends only on the two vectors, so identical rows get
    bit-identical scores. Memory grows with ``len(queries) * len(gallery)``;
    use it for checks and small sets.

    Args:
        queries: ``[Q, D]`` array.
        gallery: ``[N, D]`` array.

    Returns:
        ``[Q, N]`` float64 scores.

    Raises:
        ValueError: on shapes that are not ``[count, D]`` with the same ``D``,
            an empty gallery, or values that are not real numbers.

    Example:
        >>> import numpy as np
        >>> similarity_matrix(np.array([[1.0, 2.0]], "float32"), np.array([[3.0, 4.0], [1.0, 0.0]], "float32"))
        array([[11.,  1.]])
    """
    queries, gallery, _ = _check_inputs(queries, gallery, 1)
    num_queries, dim = queries.shape
    num_gallery = gallery.shape[0]
    out = np.empty((num_queries, num_gallery))
    # Tiles small enough for the CPU cache: the sum runs over the dimensions in order.
    width = min(num_gallery, 4096)
    rows = max(1, _REFERENCE_TILE // width)
    for g0 in range(0, num_gallery, width):
        columns = np.asarray(gallery[g0 : g0 + width], np.float64).T.copy()  # [D, width]
        for q0 in range(0, num_queries, rows):
            q = np.asarray(queries[q0 : q0 + rows], np.float64)
            # The same additions, in the same order, as _pair_scores' accumulate.
            acc = np.multiply.outer(q[:, 0], columns[0])
            product = np.empty_like(acc)
            for d in range(1, dim):
                np.multiply.outer(q[:, d], columns[d], out=product)
                acc += product
            out[q0 : q0 + rows, g0 : g0 + width] = acc
    return out


def _pair_scores(queries: np.ndarray, gallery: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                 piece: int) -> np.ndarray:
    """Reference scores of the pairs ``(queries[rows[i]], gallery[cols[i]])``, ``piece`` at a time."""
    out = np.empty(rows.size)
    for p0 in range(0, rows.size, piece):
        products = np.asarray(queries[rows[p0 : p0 + piece]], np.float64)  # [n, D]
        products *= gallery[cols[p0 : p0 + piece]]
        # ufunc.accumulate adds strictly left to right: r[d] = r[d - 1] + products[d].
        np.add.accumulate(products, axis=1, out=products)
        out[p0 : p0 + products.shape[0]] = products[:, -1]
    return out


def score_error_bound(query_norms, gallery_norm, dim: int, dtype=np.float32) -> np.ndarray:
    """How far a BLAS inner product can be from the reference score.

    A dot product of length ``D`` summed in any order (with or without fused
    multiply-adds) is within ``gamma_D * sum_d |q[d] g[d]|`` of the exact value,
    ``gamma_D = D u / (1 - D u)``, and ``sum_d |q[d] g[d]| <= |q| |g|``; the
    float64 reference score is within the same bound with ``u = 2^-53``. This
    returns twice ``(D + 2) u |q| |g|``, plus a term for subnormal products
    that BLAS may flush to zero.

    Args:
        query_norms: Euclidean norms of the queries.
        gallery_norm: the largest Euclidean norm of the gallery items concerned.
        dim: embedding width ``D``.
        dtype: float dtype of the BLAS computation (its unit roundoff ``u``).

    Returns:
        The bound per query, float64.

    Example:
        >>> float(score_error_bound(np.array([1.0]), 1.0, 640)[0]) < 1e-4
        True
    """
    info = np.finfo(dtype)
    u, tiny = float(info.eps) / 2, float(info.tiny)
    q = np.asarray(query_norms, np.float64)
    g = float(gallery_norm)
    bound = 2.0 * (dim + 2) * (u * q * g + tiny * (1.0 + q) * (1.0 + g))
    return np.where(np.isnan(bound), np.inf, bound)


def _norms(block: np.ndarray) -> np.ndarray:
    return np.sqrt(np.einsum("ij,ij->i", block, block, dtype=np.float64))


def _round_down(values64: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """float64 thresholds as ``dtype`` values not above them (a comparison ``>=`` stays a superset)."""
    out = values64.astype(dtype)
    return np.where(out > values64, np.nextafter(out, dtype.type(-np.inf)), out)


def brute_force_top_k(queries: np.ndarray, gallery: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference top-k: the full ``similarity_matrix``, sorted per row by score, then index.

    Memory grows with ``len(queries) * len(gallery)``; use it for checks only.

    Args:
        queries: ``[Q, D]`` array.
        gallery: ``[N, D]`` array.
        k: results per query, at most ``N``.

    Returns:
        ``(scores [Q, k] float64, indices [Q, k] int64)``, by descending
        reference score, ties by ascending index.

    Raises:
        ValueError: as ``top_k_search``.

    Example:
        >>> import numpy as np
        >>> brute_force_top_k(np.ones((1, 2)), np.ones((3, 2)), 2)[1].tolist()
        [[0, 1]]
    """
    _check_inputs(queries, gallery, k)
    scores = similarity_matrix(queries, gallery)
    # Sorting only the scores >= each row's k-th largest gives the first k of a
    # full sort by (score descending, index ascending), much faster.
    kth = np.partition(scores, scores.shape[1] - k, axis=1)[:, scores.shape[1] - k]
    rows, cols = np.nonzero(scores >= kth[:, None])
    order = np.lexsort((cols, -scores[rows, cols], rows))
    starts = np.searchsorted(rows[order], np.arange(scores.shape[0]))
    index = cols[order][starts[:, None] + np.arange(k)[None, :]].astype(np.int64)
    return np.take_along_axis(scores, index, axis=1), index


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

    The result equals ``brute_force_top_k``, indices and scores bit for bit,
    whatever the budget, block sizes or backend: descending reference score
    (see the module docstring), ties by ascending gallery index, inside a
    block and across blocks. Pass L2-normalised embeddings for cosine
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
        ``(scores [Q, k] float64, indices [Q, k] int64)``; the scores are
        reference scores (see the module docstring).

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
        return np.zeros((0, k)), np.zeros((0, k), np.int64)
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


def _gallery_block(gallery, start: int, stop: int, dtype: np.dtype, check_finite: bool):
    """Rows ``start:stop`` of the gallery as a contiguous ``dtype`` array, and their largest norm."""
    block = _as_block(gallery, start, stop, dtype, check_finite)
    return block, float(_norms(block).max())


def _numpy_search(queries, gallery, k, plan: SearchPlan, dtype, check_finite):
    num_queries, dim = queries.shape
    num_gallery = gallery.shape[0]
    top_scores = np.full((num_queries, k), -np.inf)  # reference scores, float64
    top_index = np.full((num_queries, k), -1, np.int64)
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
    pairs = _rescore_pairs(plan.query_block, plan.gallery_block, dim, dtype.itemsize)
    query_norms = np.concatenate([_norms(_as_block(queries, q0, q1, dtype, False)) for q0, q1 in query_blocks])
    copies = _Copies(gallery)

    def matmul(i: int):
        g0, g1, q0, q1 = tasks[i]
        if current.get("start") != g0:  # each gallery block is read (and cast) once
            current["start"] = g0
            current["block"], current["norm"] = _gallery_block(gallery, g0, g1, dtype, check_finite)
        q = cached if cached is not None else _as_block(queries, q0, q1, dtype, False)
        scores = buffers[i % len(buffers)][: (q1 - q0) * (g1 - g0)].reshape(q1 - q0, g1 - g0)
        np.matmul(q, current["block"].T, out=scores)
        return scores, current["norm"]

    # Small blocks are computed in this thread: handing them over costs more than it saves.
    threaded = plan.query_block * plan.gallery_block >= _THREADED_BLOCK
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="malign-topk") as worker:
        pending = worker.submit(matmul, 0) if threaded else None
        for i, (g0, g1, q0, q1) in enumerate(tasks):
            if threaded:
                scores, gallery_norm = pending.result()
                if i + 1 < len(tasks):
                    pending = worker.submit(matmul, i + 1)
            else:
                scores, gallery_norm = matmul(i)
            lanes = min(plan.lanes, g1 - g0)
            lane_max = lane_buffer[: (q1 - q0) * lanes].reshape(q1 - q0, lanes)
            _lane_maxima(scores, lanes, lane_max)
            err = score_error_bound(query_norms[q0:q1], gallery_norm, dim, dtype)
            state = _Running(k, queries, gallery, q0, top_scores[q0:q1], top_index[q0:q1], pairs, copies)
            _reduce_block(scores, lane_max, g0, err, state)
    return top_scores, top_index


def _lane_maxima(scores: np.ndarray, lanes: int, out: np.ndarray) -> None:
    """out[r, b] = max of scores[r, j] over columns j with j % lanes == b."""
    width = scores.shape[1]
    full = width // lanes
    np.max(scores[:, : full * lanes].reshape(scores.shape[0], full, lanes), axis=1, out=out)
    tail = width - full * lanes
    if tail:
        np.maximum(out[:, :tail], scores[:, full * lanes :], out=out[:, :tail])


class _Copies:
    """Identical rows of the gallery block being reduced, found on first use.

    ``first(start, width)[j]`` is the first row of the block ``start:start +
    width`` whose values equal those of row ``j`` (``j`` itself when none
    before it does). Rows are grouped by a 64-bit hash of their bits and each
    row is then compared with its group's first row, so a hash collision only
    costs sharing, never a wrong score.
    """

    def __init__(self, gallery):
        self.gallery, self.start, self.rows = gallery, None, None

    def first(self, start: int, width: int) -> np.ndarray:
        if self.start != start:
            self.start, self.rows = start, _first_copies(self.gallery, start, start + width)
        return self.rows


def _first_copies(gallery, start: int, stop: int) -> np.ndarray:
    rows, dim = stop - start, gallery.shape[1]
    unsigned = np.dtype(f"u{gallery.dtype.itemsize}")
    digest = np.zeros(rows, np.uint64)
    for d in range(dim):  # wrapping polynomial hash of the rows' bits
        digest *= _HASH_MULTIPLIER
        digest += np.asarray(gallery[start:stop, d]).view(unsigned)
    order = np.argsort(digest, kind="stable")
    ordered = digest[order]
    new = np.concatenate([[True], ordered[1:] != ordered[:-1]])
    first = np.empty(rows, np.int64)
    first[order] = order[np.flatnonzero(new)][np.cumsum(new) - 1]
    check = np.flatnonzero(first != np.arange(rows))
    step = max(16, rows * 32 // (dim * (2 * gallery.dtype.itemsize + 1)))  # 32 bytes per row of scratch
    for p0 in range(0, check.size, step):
        c = check[p0 : p0 + step]
        # Equal values give equal reference scores (a signed zero changes no sum).
        differ = ~(gallery[start + c] == gallery[start + first[c]]).all(axis=1)
        first[c[differ]] = c[differ]
    return first


class _Running:
    """The running top k of the queries ``q0, q0 + 1, ...`` (views into the outputs), updated in place.

    Candidates are given by their row in the query group and their gallery
    index; their reference scores are computed from the original ``queries``
    and ``gallery`` arrays.
    """

    def __init__(self, k: int, queries, gallery, q0: int, top_scores, top_index, pairs: int, copies: _Copies):
        self.k, self.queries, self.gallery, self.q0 = k, queries, gallery, q0
        self.top_scores, self.top_index, self.pairs, self.copies = top_scores, top_index, pairs, copies
        # kth[r]: the k-th best reference score so far (-inf until k items were seen).
        self.kth = top_scores[:, k - 1]

    def scores(self, rows: np.ndarray, index: np.ndarray) -> np.ndarray:
        return _pair_scores(self.queries, self.gallery, rows + self.q0, index, self.pairs)

    def offer(self, rows: np.ndarray, index: np.ndarray) -> None:
        """Gives candidate pairs (query row, gallery index) their reference score and merges them."""
        if rows.size:
            self.merge(rows, index, self.scores(rows, index))

    def offer_row(self, r: int, offset: int, row_scores: np.ndarray, threshold, err: float) -> None:
        """One query's BLAS scores of a block (gallery items from ``offset``), when many are near-tied."""
        k, width = self.k, row_scores.shape[0]
        # Candidates: BLAS score >= threshold and within 2 err of the row's k-th best
        # (k items of the row have a reference score >= that k-th best - err).
        t = threshold
        if width > k:
            kth_row = np.partition(row_scores, width - k)[width - k]
            t = max(t, _round_down(np.float64(kth_row) - 2 * err, row_scores.dtype))
        index = np.flatnonzero(row_scores >= t)
        if index.size == 0:
            return
        # Identical embeddings share one reference score (so thousands of copies of
        # one embedding cost one computation).
        first, inverse = np.unique(self.copies.first(offset, width)[index], return_inverse=True)
        values = self.scores(np.full(first.size, r), first + offset)[inverse]
        index += offset
        keep = values > self.kth[r]
        index, values = index[keep], values[keep]
        if index.size > k:
            order = np.lexsort((index, -values))[:k]
            index, values = index[order], values[order]
        self.merge(np.full(index.size, r), index, values)

    def merge(self, cand_rows: np.ndarray, cand_index: np.ndarray, values: np.ndarray) -> None:
        """Merges candidates by (reference score descending, index ascending)."""
        # Block items have larger indices than every running item: to enter,
        # they must beat the running k-th best strictly.
        keep = values > self.kth[cand_rows]
        cand_rows, cand_index, values = cand_rows[keep], cand_index[keep], values[keep]
        if cand_rows.size == 0:
            return
        k, top_scores, top_index = self.k, self.top_scores, self.top_index
        rows = np.unique(cand_rows)
        old_rows = np.repeat(rows, k)
        all_rows = np.concatenate([old_rows, cand_rows])
        all_scores = np.concatenate([top_scores[rows].ravel(), values])
        all_index = np.concatenate([top_index[rows].ravel(), cand_index.astype(np.int64)])
        # Empty slots carry index -1 and score -inf; give them the largest index
        # so that they sort after any real item.
        sort_index = np.where(all_index < 0, np.iinfo(np.int64).max, all_index)
        order = np.lexsort((sort_index, -all_scores, all_rows))
        counts = np.bincount(all_rows, minlength=top_scores.shape[0])[rows]
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        take = order[starts[:, None] + np.arange(k)[None, :]]
        top_scores[rows] = all_scores[take]
        top_index[rows] = all_index[take]


def _reduce_block(scores, lane_max, offset: int, err, state: _Running) -> None:
    """Merges one block of BLAS scores (gallery items from ``offset``) into the running top k."""
    rows, width = scores.shape
    lanes = lane_max.shape[1]
    k = state.k
    # An item must beat the running k-th best reference score, so its BLAS score
    # is above kth - err; and k items of this block (those of the k largest lane
    # maxima) have reference scores >= kth_lane - err, so a candidate's BLAS
    # score is >= kth_lane - 2 err. Candidates are the scores >= threshold.
    bound = state.kth - err
    if lanes >= k:
        kth_lane = np.partition(lane_max, lanes - k, axis=1)[:, lanes - k]
        bound = np.maximum(bound, kth_lane - 2 * err)
    threshold = _round_down(bound, scores.dtype)
    active_rows, active_lanes = np.nonzero(lane_max >= threshold[:, None])
    if active_rows.size == 0:
        return
    counts = np.bincount(active_rows, minlength=rows)
    # More than k + slack active lanes happens only with (near-)tied lane
    # maxima; such rows take an exact per-row path so the candidates stay few.
    crowded = counts > k + _SLACK_LANES if lanes >= k else np.zeros(rows, bool)
    if crowded.any():
        keep = ~crowded[active_rows]
        active_rows, active_lanes = active_rows[keep], active_lanes[keep]
        for r in np.flatnonzero(crowded):
            state.offer_row(r, offset, scores[r], threshold[r], err[r])
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
        state.offer(r[pos].astype(np.int64), cols[pos, step] + offset)


def _tensorflow_search(queries, gallery, k, plan: SearchPlan, dtype, device, check_finite):
    import contextlib

    import tensorflow as tf

    num_queries, dim = queries.shape
    wide = 2 * k + _SLACK_LANES

    @tf.function(reduce_retracing=True)
    def step(q, g):
        scores = tf.matmul(q, g, transpose_b=True)
        return tf.math.top_k(scores, k=tf.minimum(wide, tf.shape(g)[0]), sorted=True)

    top_scores = np.full((num_queries, k), -np.inf)  # reference scores, float64
    top_index = np.full((num_queries, k), -1, np.int64)
    pairs = _rescore_pairs(plan.query_block, plan.gallery_block, dim, dtype.itemsize)
    copies = _Copies(gallery)
    scope = tf.device(device) if device else contextlib.nullcontext()
    tf32 = dtype == np.float32 and tf.config.experimental.tensor_float_32_execution_enabled()
    if tf32:  # TensorFloat-32 rounds the inputs to 10-bit mantissas: far above the error bound
        tf.config.experimental.enable_tensor_float_32_execution(False)
    try:
        with scope:
            blocks = []
            for q0 in range(0, num_queries, plan.query_block):
                q1 = min(q0 + plan.query_block, num_queries)
                q = _as_block(queries, q0, q1, dtype, False)
                blocks.append((q0, q1, q, tf.constant(q), _norms(q)))
            for g0 in range(0, gallery.shape[0], plan.gallery_block):
                g1 = min(g0 + plan.gallery_block, gallery.shape[0])
                block, norm = _gallery_block(gallery, g0, g1, dtype, check_finite)
                g = tf.constant(block)
                for q0, q1, q, q_tensor, q_norms in blocks:
                    values, positions = step(q_tensor, g)
                    err = score_error_bound(q_norms, norm, dim, dtype)
                    state = _Running(
                        k, queries, gallery, q0, top_scores[q0:q1], top_index[q0:q1], pairs, copies
                    )
                    _reduce_top(values.numpy().astype(dtype, copy=False), positions.numpy(), q, block, g0, err, state)
                del g
    finally:
        if tf32:
            tf.config.experimental.enable_tensor_float_32_execution(True)
    return top_scores, top_index


def _reduce_top(values, positions, queries, block, offset: int, err, state: _Running) -> None:
    """Merges a block's best BLAS scores per query (sorted, from the device) into the running top k.

    ``queries`` and ``block`` are the query group and the gallery block (from
    index ``offset``) as the host holds them, for the rows that need all their
    scores.
    """
    k = state.k
    width = block.shape[0]
    kept = values.shape[1]
    bound = state.kth - err
    if width >= k:
        bound = np.maximum(bound, values[:, k - 1] - 2 * err)
    threshold = _round_down(bound, values.dtype)
    # Complete: every item of the block that can be a candidate is among the kept ones.
    complete = np.full(values.shape[0], kept == width) | (values[:, kept - 1] < threshold)
    for r in np.flatnonzero(~complete):
        state.offer_row(r, offset, queries[r] @ block.T, threshold[r], err[r])
    rows, col = np.nonzero((values >= threshold[:, None]) & complete[:, None])
    state.offer(rows.astype(np.int64), positions[rows, col].astype(np.int64) + offset)
