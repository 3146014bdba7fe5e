"""The hand-written batch norm equals Keras' layer (malign.models.batch_norm): values,
gradients, moving statistics, and across replicas when synchronized."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import malign
from malign.models.batch_norm import BatchNormalization

SHAPE = (4, 5, 6, 7)


def _pair(shape=SHAPE, **kwargs):
    """A Keras batch norm and ours with the same (non-trivial) variables."""
    reference, ours = keras.layers.BatchNormalization(**kwargs), BatchNormalization(**kwargs)
    rng = np.random.default_rng(0)
    for layer in (reference, ours):
        layer.build((None, *shape[1:]))
    for a, b in zip(reference.weights, ours.weights):
        value = rng.uniform(0.5, 1.5, a.shape).astype("float32")
        a.assign(value)
        b.assign(value)
    return reference, ours


def _step(layer, x, upstream):
    @tf.function
    def run(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(tf.cast(y, "float32") * upstream)
        return y, tape.gradient(loss, [x] + layer.trainable_weights)

    return run(x)


def _data(shape, seed):
    rng = np.random.default_rng(seed)
    # A mean far from 0 against the spread: the centred sums must not cancel.
    x = rng.normal(5.0, 0.5, shape).astype("float32") * rng.uniform(0.1, 3.0, shape[-1:])
    upstream = rng.normal(size=shape).astype("float32")
    return tf.constant(x.astype("float32")), tf.constant(upstream)


@pytest.mark.parametrize("shape", [SHAPE, (1, 5, 6, 7), (9, 7)], ids=["4d", "batch1", "2d"])
@pytest.mark.parametrize("synchronized", [False, True])
def test_training_step_equals_keras(shape, synchronized):
    reference, ours = _pair(shape, momentum=0.9, epsilon=1e-3, synchronized=synchronized)
    x, upstream = _data(shape, len(shape))
    before = [w.numpy().copy() for w in ours.non_trainable_weights]
    (y_k, g_k), (y_o, g_o) = _step(reference, x, upstream), _step(ours, x, upstream)
    np.testing.assert_allclose(y_o.numpy(), y_k.numpy(), atol=1e-4, rtol=1e-4)
    for name, a, b in zip(["x", "gamma", "beta"], g_o, g_k):
        scale = float(np.max(np.abs(b.numpy())))
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=2e-4 * scale, err_msg=name)
    # The moving statistics moved as Keras moves them (biased batch variance).
    for a, b, old in zip(ours.non_trainable_weights, reference.non_trainable_weights, before):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, err_msg=a.path)
        assert not np.allclose(a.numpy(), old), a.path  # they did move


def test_gradients_equal_numpy_formula():
    """dx, dgamma and dbeta against the textbook formulas (Ioffe and Szegedy 2015) in
    float64."""
    _, ours = _pair(momentum=0.9, epsilon=1e-3)
    x, upstream = _data(SHAPE, 7)
    _, (dx, dgamma, dbeta) = _step(ours, x, upstream)
    xs, dy = x.numpy().astype("float64"), upstream.numpy().astype("float64")
    gamma = ours.gamma.numpy().astype("float64")
    axes = (0, 1, 2)
    n = np.prod(SHAPE[:-1])
    mean, var = xs.mean(axes), xs.var(axes)
    xhat = (xs - mean) / np.sqrt(var + 1e-3)
    expected_dx = gamma / np.sqrt(var + 1e-3) * (dy - dy.mean(axes)
                                                 - xhat * (dy * xhat).sum(axes) / n)
    np.testing.assert_allclose(dx.numpy(), expected_dx, atol=2e-4 * np.abs(expected_dx).max())
    np.testing.assert_allclose(dgamma.numpy(), (dy * xhat).sum(axes), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(dbeta.numpy(), dy.sum(axes), rtol=1e-4, atol=1e-3)


def test_synchronized_across_replicas_equals_one_device_on_the_whole_batch():
    """Two replicas with different halves of a batch: the outputs, each replica's input
    gradient and the replica-summed weight gradients equal one device's on the whole
    batch, as with Keras' all-reduced moments."""
    strategy = malign.distributed.get_strategy("cpu:2")
    shape = (6, 3, 4, 5)
    x, upstream = _data(shape, 11)
    single, _ = _pair(shape, momentum=0.9, epsilon=1e-3, synchronized=True)
    y_whole, g_whole = _step(single, x, upstream)
    with strategy.scope():
        reference, ours = _pair(shape, momentum=0.9, epsilon=1e-3, synchronized=True)

    def replicated(layer):
        @tf.function
        def run():
            def replica():
                i = tf.distribute.get_replica_context().replica_id_in_sync_group
                xs, up = x[3 * i:3 * i + 3], upstream[3 * i:3 * i + 3]
                with tf.GradientTape() as tape:
                    tape.watch(xs)
                    y = layer(xs, training=True)
                    loss = tf.reduce_sum(y * up)
                return y, tape.gradient(loss, [xs] + layer.trainable_weights)

            return strategy.run(replica)

        y, grads = run()
        local = strategy.experimental_local_results
        return (np.concatenate([t.numpy() for t in local(y)]),
                [np.concatenate([t.numpy() for t in local(grads[0])])]
                + [sum(t.numpy() for t in local(g)) for g in grads[1:]])

    for layer in (reference, ours):
        y, grads = replicated(layer)
        np.testing.assert_allclose(y, y_whole.numpy(), atol=1e-4, err_msg=layer.__class__)
        for name, a, b in zip(["x", "gamma", "beta"], grads, g_whole):
            scale = float(np.max(np.abs(b.numpy())))
            np.testing.assert_allclose(a, b.numpy(), atol=2e-4 * scale,
                                       err_msg=f"{layer.__class__} {name}")
    np.testing.assert_allclose(ours.moving_mean.numpy(), single.moving_mean.numpy(), rtol=1e-5)
    np.testing.assert_allclose(ours.moving_variance.numpy(), single.moving_variance.numpy(),
                               rtol=1e-4)


def test_bfloat16_inputs_are_normalized_in_float32():
    reference, ours = _pair(momentum=0.5, epsilon=1e-3, dtype="mixed_bfloat16")
    x = tf.constant(np.random.default_rng(2).normal(1.0, 2.0, SHAPE), tf.bfloat16)
    y_k, y_o = reference(x, training=True), ours(x, training=True)
    assert y_o.dtype == tf.bfloat16
    np.testing.assert_allclose(tf.cast(y_o, "float32").numpy(),
                               tf.cast(y_k, "float32").numpy(), atol=0.05)
    np.testing.assert_allclose(ours.moving_mean.numpy(), reference.moving_mean.numpy(),
                               atol=1e-5)


@pytest.mark.parametrize("case", ["inference", "frozen", "axis", "no-center", "no-scale"])
def test_other_cases_take_keras_path(case):
    kwargs = {"axis": 1 if case == "axis" else -1, "center": case != "no-center",
              "scale": case != "no-scale"}
    reference, ours = _pair(**kwargs)
    if case == "frozen":
        reference.trainable = ours.trainable = False
    x, _ = _data(SHAPE, 3)
    training = case != "inference"
    assert not ours._hand_written(x, training, None)
    np.testing.assert_allclose(ours(x, training=training).numpy(),
                               reference(x, training=training).numpy(), atol=1e-5)


def test_the_image_tower_uses_it():
    from malign.models.image_tower import ImageTower
    from malign.presets import get_preset

    tower = ImageTower(get_preset("tiny").image)
    norms = [layer for layer in tower.layers
             if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and all(isinstance(layer, BatchNormalization) for layer in norms)
