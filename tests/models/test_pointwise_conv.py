"""The 1x1 convolution as a matmul equals keras' Conv2D (malign.models.pointwise_conv)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from malign.models.pointwise_conv import PointwiseConv2D


def _pair(filters, **kwargs):
    """A PointwiseConv2D and a keras Conv2D(filters, 1) holding the same random weights."""
    ours = PointwiseConv2D(filters, **kwargs)
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
    layer = PointwiseConv2D(3)
    layer.build((None, None, None, 4))
    fn = tf.function(layer, input_signature=[tf.TensorSpec([None, None, None, 4])])
    assert fn(tf.ones((2, 5, 3, 4))).shape == (2, 5, 3, 3)
    assert fn(tf.ones((1, 2, 7, 4))).shape == (1, 2, 7, 3)


def test_config_round_trip_and_registered_name():
    layer = PointwiseConv2D(5, use_bias=False, activation="swish", name="block0_project_conv")
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(clone) is PointwiseConv2D
    assert clone.get_config() == layer.get_config()
    assert keras.saving.get_registered_name(PointwiseConv2D) == "malign>PointwiseConv2D"


@pytest.mark.parametrize("kwargs, named", [
    ({"kernel_size": 3}, "kernel_size"),
    ({"strides": 2}, "strides"),
    ({"dilation_rate": (1, 2)}, "dilation_rate"),
    ({"groups": 2}, "groups"),
    ({"data_format": "channels_first"}, "channels_first"),
])
def test_anything_but_a_pointwise_conv_is_refused(kwargs, named):
    with pytest.raises(ValueError, match=named):
        PointwiseConv2D(4, **kwargs)
