"""BERT on real tokens only equals the padded keras-hub backbone (malign.models.unpadded_bert)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from malign.config import TextTowerConfig
from malign.models import unpadded_bert
from malign.models.text_tower import TextTower

LENGTH = 12


@pytest.fixture(scope="module")
def tower():
    keras.utils.set_random_seed(3)
    config = TextTowerConfig(vocabulary_size=60, num_layers=2, num_heads=2, hidden_dim=16,
                             intermediate_dim=32, sequence_length=LENGTH, projection_dim=8,
                             dropout=0.0)
    return TextTower(config)


def _batch(masks: np.ndarray, seed: int = 0) -> dict:
    ids = np.random.default_rng(seed).integers(5, 60, masks.shape).astype("int32")
    return {"token_ids": tf.constant(ids * masks), "padding_mask": tf.constant(masks)}


def _masks() -> dict[str, np.ndarray]:
    """Padding patterns of each kind: ragged lengths (1 token to full), no padding at all,
    holes inside a sequence, a batch of one, and a batch none of whose captions reaches the
    last positions (the attention layout is cut to the longest span), with a hole."""
    lengths = np.array([1, 2, 5, LENGTH, 7, LENGTH - 1])
    ragged = (np.arange(LENGTH)[None, :] < lengths[:, None]).astype("int32")
    holes = ragged.copy()
    holes[3, [2, 5, 6]] = 0
    holes[4, 1] = 0
    short = ragged[[0, 1, 2, 4]].copy()  # no caption reaches the last positions
    short[2, 1] = 0
    return {"ragged": ragged, "full": np.ones((3, LENGTH), "int32"), "holes": holes,
            "one": ragged[2:3], "short": short}


def _both(tower, inputs, fn):
    values = []
    for unpadded in (True, False):
        tower.unpadded = unpadded
        values.append(fn(inputs))
    tower.unpadded = True
    return values


@pytest.mark.parametrize("kind", list(_masks()))
def test_forward_equals_the_padded_backbone(tower, kind):
    inputs = _batch(_masks()[kind])
    eager_unpadded, eager_padded = _both(tower, inputs, lambda x: tower(x).numpy())
    traced = tf.function(lambda x: tower(x))
    graph_unpadded, graph_padded = _both(tower, inputs, lambda x: traced(x).numpy())
    np.testing.assert_allclose(eager_unpadded, eager_padded, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(graph_unpadded, graph_padded, atol=1e-5, rtol=1e-5)
    assert np.abs(eager_padded).max() > 0.1  # not a vacuous comparison


def _gradients(tower, inputs, remat=False):
    weights = tf.constant(np.random.default_rng(1).normal(size=(1, 8)), tf.float32)

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tower(x, training=True) * weights)
        return tape.gradient(loss, tower.trainable_variables)

    tower.remat = remat
    try:
        return [tf.convert_to_tensor(g).numpy() for g in step(inputs)]
    finally:
        tower.remat = False


@pytest.mark.parametrize("remat", [False, True], ids=["plain", "remat"])
def test_gradients_equal_the_padded_backbone(tower, remat):
    inputs = _batch(_masks()["holes"], seed=2)
    unpadded, padded = _both(tower, inputs, lambda x: _gradients(tower, x, remat))
    names = [v.path for v in tower.trainable_variables]
    scale = max(np.abs(g).max() for g in padded)
    assert scale > 1e-3
    for name, a, b in zip(names, unpadded, padded):
        # Relative to the largest gradient: some (the key biases) are zero in exact
        # arithmetic, so their own scale is rounding noise.
        np.testing.assert_allclose(a, b, atol=1e-5 * scale, rtol=1e-4, err_msg=name)
    # The padding's token embeddings get no gradient on either path.
    table = names.index(tower.backbone.token_embedding.embeddings.path)
    np.testing.assert_array_equal(unpadded[table][0], 0.0)


def test_dropout_still_applies_in_training():
    keras.utils.set_random_seed(4)
    config = TextTowerConfig(vocabulary_size=60, num_layers=1, num_heads=2, hidden_dim=16,
                             intermediate_dim=32, sequence_length=LENGTH, projection_dim=0,
                             dropout=0.5)
    tower = TextTower(config)
    inputs = _batch(_masks()["ragged"])
    inference = tower(inputs, training=False).numpy()
    padded_inference = _both(tower, inputs, lambda x: tower(x, training=False).numpy())[1]
    np.testing.assert_allclose(inference, padded_inference, atol=1e-5, rtol=1e-5)
    assert not np.allclose(tower(inputs, training=True).numpy(), inference, atol=1e-3)


def test_xla_runs_the_padded_backbone(tower):
    """Under XLA (TPU, jit_compile) shapes must be static: the tower takes the padded path."""
    inside = {}

    @tf.function(jit_compile=True)
    def compiled(x):
        inside["xla"] = unpadded_bert.in_xla_context()
        return tower(x)

    @tf.function
    def plain(x):
        inside["plain"] = unpadded_bert.in_xla_context()
        return tower(x)

    inputs = _batch(_masks()["ragged"])
    np.testing.assert_allclose(compiled(inputs).numpy(), plain(inputs).numpy(), atol=1e-5)
    assert inside == {"xla": True, "plain": False}
    assert not unpadded_bert.in_xla_context()  # eager
    ops = {op.type for op in plain.get_concrete_function(inputs).graph.get_operations()}
    assert "ScatterNd" in ops and "Where" in ops  # the plain graph is the unpadded one


def test_a_boolean_padding_mask_works_as_an_int_one(tower):
    """The README passes ``ids != 0`` (bool) as the mask."""
    inputs = _batch(_masks()["ragged"])
    as_bool = {"token_ids": inputs["token_ids"],
               "padding_mask": tf.cast(inputs["padding_mask"], tf.bool)}
    np.testing.assert_allclose(tower(as_bool).numpy(), tower(inputs).numpy(), atol=1e-6)
