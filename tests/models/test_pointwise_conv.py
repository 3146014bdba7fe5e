"""The 1x1 convolution as a matmul equals keras' Conv2D (malign.models.pointwise_conv),
and models saved before it still load."""

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import malign
from malign.models.pointwise_conv import pointwise_conv2d

SAVED_V1 = Path(__file__).parents[1] / "fixtures" / "saved_v1"


def _pair(filters, **kwargs):
    """A pointwise_conv2d and a keras Conv2D(filters, 1) holding the same random weights."""
    ours = pointwise_conv2d(filters, **kwargs)
    reference = keras.layers.Conv2D(filters, 1, **kwargs)
    return ours, reference


@pytest.mark.parametrize("shape, filters, kwargs", [
    ((3, 5, 7, 6), 4, {"use_bias": False}),                           # an expand/project conv
    ((2, 1, 1, 9), 3, {"activation": "swish"}),                       # squeeze-excite reduce
    ((2, 4, 4, 5), 8, {"activation": "sigmoid", "padding": "valid"}),  # with bias, 'valid'
    ((0, 6, 6, 5), 2, {}),                                            # an empty batch
])
def test_values_and_gradients_equal_conv2d(shape, filters, kwargs):
    rng = np.random.default_rng(0)
    x = tf.constant(rng.standard_normal(shape).astype("float32"))
    ours, reference = _pair(filters, **kwargs)
    reference.build(shape)
    ours.build(shape)
    weights = [rng.standard_normal(w.shape).astype("float32") for w in reference.weights]
    reference.set_weights(weights)
    ours.set_weights(weights)
    probe = tf.constant(rng.standard_normal(shape[:3] + (filters,)).astype("float32"))
    grads = []
    for layer in (ours, reference):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            loss = tf.reduce_sum(y * probe)
        grads.append((y, *tape.gradient(loss, [x, *layer.trainable_weights])))
    assert grads[0][0].shape == shape[:3] + (filters,)
    for got, want in zip(grads[0], grads[1]):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)


def test_unknown_spatial_sizes_in_a_traced_function():
    layer = pointwise_conv2d(3)
    layer.build((None, None, None, 4))
    fn = tf.function(layer, input_signature=[tf.TensorSpec([None, None, None, 4])])
    assert fn(tf.ones((2, 5, 3, 4))).shape == (2, 5, 3, 3)
    assert fn(tf.ones((1, 2, 7, 4))).shape == (1, 2, 7, 3)


def test_a_plain_conv2d_with_conv2d_config():
    layer = pointwise_conv2d(5, use_bias=False, activation="swish", name="block0_project_conv")
    assert type(layer) is keras.layers.Conv2D
    assert layer.get_config() == keras.layers.Conv2D(
        5, 1, use_bias=False, activation="swish", name="block0_project_conv").get_config()


@pytest.mark.parametrize("kwargs, named", [
    ({"strides": 2}, "strides"),
    ({"dilation_rate": (1, 2)}, "dilation_rate"),
    ({"groups": 2}, "groups"),
    ({"data_format": "channels_first"}, "channels_first"),
])
def test_anything_but_a_pointwise_conv_is_refused(kwargs, named):
    with pytest.raises(ValueError, match=named):
        pointwise_conv2d(4, **kwargs)


def test_the_image_tower_computes_its_1x1_convolutions_as_matmuls():
    tower = malign.AlignModel.from_preset("tiny").image_tower
    fn = tf.function(lambda x: tower(x, training=True)).get_concrete_function(
        tf.TensorSpec([2, 32, 32, 3]))
    types = {op.type for op in fn.graph.get_operations()}
    convs = [op for op in fn.graph.get_operations() if op.type == "Conv2D"]
    assert "MatMul" in types
    assert [tuple(op.inputs[1].shape[:2]) for op in convs] == [(3, 3)]  # the stem only


@pytest.mark.skipif(not (SAVED_V1 / "model.keras").exists(), reason="fixture not present")
def test_a_model_saved_before_loads():
    """A .keras file written by malign at 6fd15d3 (plain Conv2D layers) loads, with every
    weight, and embeds as it did then (tests/fixtures/make_saved_v1_fixture.py)."""
    model = keras.saving.load_model(SAVED_V1 / "model.keras", compile=False)
    expected = np.load(SAVED_V1 / "expected.npz")
    np.testing.assert_allclose(model.embed_image(expected["images"]).numpy(),
                               expected["image_embeddings"], atol=2e-5)
    np.testing.assert_allclose(
        model.embed_text({"token_ids": expected["token_ids"],
                          "padding_mask": expected["padding_mask"]}).numpy(),
        expected["text_embeddings"], atol=2e-5)
