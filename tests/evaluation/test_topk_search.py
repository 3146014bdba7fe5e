"""The chunked exact top-k equals brute force; memory stays in the budget."""

import tracemalloc

import numpy as np
import pytest

from malign.evaluation.retrieval import brute_force_top_k, plan_search, top_k_search


def _random(rng, shape, integer=False):
    if integer:
        return rng.integers(-2, 3, shape).astype(np.float32)
    return rng.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("backend", ["numpy", "tensorflow"])
@pytest.mark.parametrize(
    "num_queries, num_gallery, dim, k, query_block, gallery_block",
    [
        (37, 1000, 8, 5, None, None),
        (37, 1000, 8, 5, 7, 100),
        (50, 3001, 16, 10, 16, 1000),
        (5, 20, 4, 20, 2, 3),          # k = gallery size, blocks smaller than k
        (64, 5000, 32, 1, 64, 999),
        (1, 700, 3, 7, 1, 64),
    ],
)
def test_equals_brute_force_on_random_data(backend, num_queries, num_gallery, dim, k, query_block, gallery_block):
    rng = np.random.default_rng(num_gallery + k)
    q = _random(rng, (num_queries, dim))
    g = _random(rng, (num_gallery, dim))
    want_scores, want_index = brute_force_top_k(q, g, k)
    scores, index = top_k_search(
        q, g, k, backend=backend, query_block=query_block, gallery_block=gallery_block
    )
    assert index.dtype == np.int64 and scores.dtype == np.float64
    np.testing.assert_array_equal(index, want_index)
    # Reference scores: bit for bit, whatever the blocks (BLAS only picks candidates).
    np.testing.assert_array_equal(scores, want_scores)
    full = q.astype(np.float64) @ g.T.astype(np.float64)
    np.testing.assert_allclose(scores, np.take_along_axis(full, index, 1), rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", ["numpy", "tensorflow"])
@pytest.mark.parametrize("blocks", [(None, None), (3, 7), (40, 64), (1, 1), (13, 512)])
def test_ties_are_broken_by_ascending_index(backend, blocks):
    if backend == "tensorflow" and blocks == (1, 1):
        pytest.skip("60k tf.function calls: too slow for the fast suite; numpy covers (1, 1)")
    rng = np.random.default_rng(1)
    q = _random(rng, (40, 6), integer=True)    # integer scores: exact, many ties
    g = _random(rng, (1500, 6), integer=True)
    want_scores, want_index = brute_force_top_k(q, g, 15)
    scores, index = top_k_search(q, g, 15, backend=backend, query_block=blocks[0], gallery_block=blocks[1])
    np.testing.assert_array_equal(index, want_index)
    np.testing.assert_array_equal(scores, want_scores)


def test_all_equal_scores_return_the_first_items():
    q = np.ones((4, 3), np.float32)
    g = np.zeros((5000, 3), np.float32)
    scores, index = top_k_search(q, g, 12, gallery_block=2048)
    np.testing.assert_array_equal(index, np.tile(np.arange(12), (4, 1)))
    assert (scores == 0).all()


def test_adversarial_order_every_block_improves():
    # Scores rise along the gallery, so each block replaces the whole top k.
    g = np.linspace(0, 1, 4000, dtype=np.float32)[:, None] * np.ones((1, 4), np.float32)
    q = np.ones((3, 4), np.float32)
    scores, index = top_k_search(q, g, 9, gallery_block=300)
    np.testing.assert_array_equal(index, np.tile(np.arange(3999, 3990, -1), (3, 1)))


def test_memmap_and_float64(tmp_path):
    rng = np.random.default_rng(3)
    g = rng.standard_normal((2000, 5))
    path = tmp_path / "gallery.npy"
    np.save(path, g)
    mm = np.load(path, mmap_mode="r")
    q = rng.standard_normal((9, 5))
    scores, index = top_k_search(q, mm, 4, gallery_block=333)
    want_scores, want_index = brute_force_top_k(q, g, 4)
    assert scores.dtype == np.float64
    np.testing.assert_array_equal(index, want_index)
    np.testing.assert_array_equal(scores, want_scores)


def test_working_memory_stays_within_budget():
    rng = np.random.default_rng(4)
    q = _random(rng, (500, 32))
    g = _random(rng, (40_000, 32))
    budget = 4 * 2**20
    plan = plan_search(500, 40_000, 32, 10, budget)
    assert plan.working_bytes <= budget
    assert plan.gallery_block < 40_000            # the budget forces blocks
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        scores, index = top_k_search(q, g, 10, memory_budget_bytes=budget)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    outputs = scores.nbytes + index.nbytes + 500 * 8      # results + per-query norms (float64)
    assert peak <= budget + outputs, (peak, budget)
    np.testing.assert_array_equal(index, brute_force_top_k(q, g, 10)[1])


def test_plan_fits_budgets_and_refuses_tiny_ones():
    for budget in (2**20, 64 * 2**20, 512 * 2**20, 2**31):
        plan = plan_search(10_000, 1_000_000, 640, 10, budget)
        assert plan.working_bytes <= budget
        assert plan.query_block >= 1 and plan.gallery_block >= 1
    big = plan_search(10_000, 1_000_000, 640, 10)
    assert big.query_block * big.gallery_block >= 2**25   # blocks large enough to be fast
    with pytest.raises(ValueError, match="too small"):
        plan_search(10, 1000, 640, 10, memory_budget_bytes=1000)


@pytest.mark.parametrize(
    "q, g, k, message",
    [
        (np.ones((2, 3)), np.ones((4, 2)), 1, "same width"),
        (np.ones((2, 3)), np.ones((4, 3)), 5, "larger than the gallery"),
        (np.ones((2, 3)), np.ones((4, 3)), 0, "positive"),
        (np.ones(3), np.ones((4, 3)), 1, "2-D"),
        (np.full((2, 3), np.nan), np.ones((4, 3)), 1, "NaN"),
        (np.ones((2, 3)), np.full((4, 3), np.inf), 1, "NaN or infinite"),
    ],
)
def test_invalid_inputs(q, g, k, message):
    with pytest.raises(ValueError, match=message):
        top_k_search(q, g, k)


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend"):
        top_k_search(np.ones((1, 2)), np.ones((3, 2)), 1, backend="cuda")
