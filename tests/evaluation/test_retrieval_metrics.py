"""Retrieval metrics on hand-built similarity matrices with known answers."""

import numpy as np
import pytest

from malign.evaluation import metrics as M


def _embeddings_for(similarity):
    """Embeddings whose inner products are exactly ``similarity`` [images, captions]."""
    s = np.asarray(similarity, np.float64)
    return np.eye(s.shape[0]), s.T.copy()


def _both(similarity, t2i, ks=(1, 5, 10)):
    from_sim = M.retrieval_metrics_from_similarity(similarity, t2i, ks)
    img, txt = _embeddings_for(similarity)
    from_emb = M.retrieval_metrics(img, txt, t2i, ks)
    assert from_sim == from_emb
    return from_sim


def test_keys_are_the_documented_ones():
    assert M.METRIC_KEYS == (
        "image_to_text_r1", "image_to_text_r5", "image_to_text_r10",
        "text_to_image_r1", "text_to_image_r5", "text_to_image_r10", "mean_recall",
    )
    m = M.retrieval_metrics(np.eye(4), np.eye(4), [0, 1, 2, 3])
    assert tuple(m) == M.METRIC_KEYS
    assert all(v == 100.0 for v in m.values())


def test_known_ranks_one_caption_per_image():
    # Rows: images, columns: captions; caption j belongs to image j.
    s = np.array([
        [0.9, 0.1, 0.2],   # image 0: own caption first                  -> i2t rank 0
        [0.8, 0.3, 0.7],   # image 1: captions 0 and 2 score higher      -> i2t rank 2
        [0.1, 0.5, 0.4],   # image 2: caption 1 scores higher            -> i2t rank 1
    ])
    # t2i: caption 0 column [0.9, 0.8, 0.1] -> rank 0; caption 1 [0.1, 0.3, 0.5]
    # -> image 1 second, rank 1; caption 2 [0.2, 0.7, 0.4] -> image 2 second, rank 1.
    i2t, t2i = M.ground_truth_ranks(s, [0, 1, 2])
    assert i2t.tolist() == [0, 2, 1]
    assert t2i.tolist() == [0, 1, 1]
    m = _both(s, [0, 1, 2], ks=(1, 2))
    assert m["image_to_text_r1"] == pytest.approx(100 / 3)
    assert m["image_to_text_r2"] == pytest.approx(200 / 3)
    assert m["text_to_image_r1"] == pytest.approx(100 / 3)
    assert m["text_to_image_r2"] == 100.0
    assert m["mean_recall"] == pytest.approx((100 / 3 + 200 / 3 + 100 / 3 + 100) / 4)


def test_ties_rank_by_ascending_index():
    s = np.full((3, 3), 0.5)      # every score equal
    i2t, t2i = M.ground_truth_ranks(s, [0, 1, 2])
    assert i2t.tolist() == [0, 1, 2]
    assert t2i.tolist() == [0, 1, 2]
    m = _both(s, [0, 1, 2], ks=(1, 2, 3))
    assert m["image_to_text_r1"] == pytest.approx(100 / 3)
    assert m["text_to_image_r2"] == pytest.approx(200 / 3)
    assert m["text_to_image_r3"] == 100.0

    # A tie with a smaller-index caption costs one place; one with a larger
    # index costs nothing.
    s = np.array([[0.7, 0.7, 0.7], [0.2, 0.2, 0.9]])
    i2t, t2i = M.ground_truth_ranks(s, [1, 0, 1])
    # Image 0 owns caption 1, tied with caption 0 which comes first -> rank 1.
    # Image 1 owns captions 0 and 2; caption 2 scores highest      -> rank 0.
    assert i2t.tolist() == [1, 0]
    # caption 0 (image 1): column [0.7, 0.2] -> rank 1; caption 1 (image 0):
    # [0.7, 0.2] -> rank 0; caption 2 (image 1): [0.7, 0.9] -> rank 0.
    assert t2i.tolist() == [1, 0, 0]
    _both(s, [1, 0, 1], ks=(1, 2))


def test_several_captions_per_image_counts_the_best_one():
    # Image 0 owns captions 0, 1, 2; image 1 owns captions 3, 4.
    s = np.array([
        [0.1, 0.2, 0.6, 0.9, 0.5],   # best own caption (2, 0.6) behind caption 3 -> rank 1
        [0.3, 0.8, 0.7, 0.2, 0.95],  # own caption 4 first                        -> rank 0
    ])
    t2i = [0, 0, 0, 1, 1]
    i2t_ranks, t2i_ranks = M.ground_truth_ranks(s, t2i)
    assert i2t_ranks.tolist() == [1, 0]
    # Columns: c0 [0.1, 0.3] -> 1; c1 [0.2, 0.8] -> 1; c2 [0.6, 0.7] -> 1;
    # c3 [0.9, 0.2] (image 1) -> 1; c4 [0.5, 0.95] (image 1) -> 0.
    assert t2i_ranks.tolist() == [1, 1, 1, 1, 0]
    m = _both(s, t2i, ks=(1, 2))
    assert m["image_to_text_r1"] == 50.0
    assert m["image_to_text_r2"] == 100.0
    assert m["text_to_image_r1"] == 20.0
    assert m["text_to_image_r2"] == 100.0


def test_image_without_caption_is_an_error():
    with pytest.raises(ValueError, match="no caption"):
        M.retrieval_metrics(np.eye(3), np.eye(3)[:2], [0, 0])
    with pytest.raises(ValueError, match="no caption"):
        M.retrieval_metrics_from_similarity(np.ones((3, 2)), [0, 2])


@pytest.mark.parametrize(
    "image, text, t2i, message",
    [
        (np.eye(2), np.eye(2), [0, 2], "not an image index"),
        (np.eye(2), np.eye(2), [0, -1], "not an image index"),
        (np.eye(2), np.eye(2), [0, 1, 1], "3 entries but there are 2"),
        (np.eye(2), np.eye(2), [0.0, 1.0], "integer"),
        (np.eye(2), np.eye(3)[:2], [0, 1], "width"),
        (np.eye(2), np.array([[np.nan, 0], [0, 1]]), [0, 1], "NaN"),
        (np.eye(2), np.eye(2), [[0, 1]], "1-D"),
    ],
)
def test_invalid_inputs(image, text, t2i, message):
    with pytest.raises(ValueError, match=message):
        M.retrieval_metrics(image, text, t2i)


def test_bad_ks():
    with pytest.raises(ValueError, match="ks"):
        M.retrieval_metrics(np.eye(2), np.eye(2), [0, 1], ks=(0,))
    with pytest.raises(ValueError, match="ks"):
        M.metric_keys(())


def test_k_beyond_gallery_is_full_recall():
    s = np.array([[0.1, 0.9], [0.9, 0.1]])  # everything wrong at rank 0
    m = _both(s, [0, 1], ks=(1, 10))
    assert m["image_to_text_r1"] == 0.0 and m["image_to_text_r10"] == 100.0
    assert m["text_to_image_r1"] == 0.0 and m["text_to_image_r10"] == 100.0


@pytest.mark.parametrize("captions_per_image", [1, 5])
@pytest.mark.parametrize("integer", [False, True])
def test_embeddings_agree_with_full_matrix_under_small_budget(captions_per_image, integer):
    rng = np.random.default_rng(captions_per_image + 10 * integer)
    num_images, dim = 150, 6
    if integer:  # small integers: many exact ties
        img = rng.integers(-1, 2, (num_images, dim)).astype(np.float32)
        txt = rng.integers(-1, 2, (num_images * captions_per_image, dim)).astype(np.float32)
    else:
        img = rng.standard_normal((num_images, dim)).astype(np.float32)
        txt = rng.standard_normal((num_images * captions_per_image, dim)).astype(np.float32)
    t2i = rng.permutation(np.repeat(np.arange(num_images), captions_per_image))
    expected = M.retrieval_metrics_from_similarity(img.astype(np.float64) @ txt.T.astype(np.float64), t2i)
    got = M.retrieval_metrics(img, txt, t2i, memory_budget_bytes=200_000)
    assert got == expected
    assert 0 < got["mean_recall"] < 100
