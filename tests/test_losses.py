"""Losses against a numpy reference, forward and gradient."""

import numpy as np
import pytest
import tensorflow as tf
from numerics import numeric_grad

from malign import losses


def _normalize(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def numpy_contrastive(img, txt, t, smoothing):
    """Reference: mean over rows of smoothed cross-entropy, both directions, averaged."""
    logits = img @ txt.T / t
    n = logits.shape[0]
    targets = np.eye(n) * (1 - smoothing) + smoothing / n
    i2t = -(targets * _log_softmax(logits)).sum(-1).mean()
    t2i = -(targets * _log_softmax(logits.T)).sum(-1).mean()
    return 0.5 * (i2t + t2i)


def numpy_sigmoid(img, txt, t, b):
    logits = img @ txt.T / t + b
    signs = 2 * np.eye(len(img)) - 1
    return np.sum(np.log1p(np.exp(-signs * logits))) / len(img)


@pytest.fixture
def pair():
    rng = np.random.default_rng(0)
    return rng.normal(size=(6, 5)), rng.normal(size=(6, 5))


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("temperature", [1.0, 0.07])
def test_contrastive_forward_matches_numpy(pair, smoothing, temperature):
    img, txt = (_normalize(a) for a in pair)
    got = losses.contrastive_loss(tf.constant(img, tf.float32), tf.constant(txt, tf.float32),
                                  temperature, label_smoothing=smoothing)
    want = numpy_contrastive(img, txt, temperature, smoothing)
    np.testing.assert_allclose(float(got), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_contrastive_gradient_matches_numpy(pair, smoothing):
    """Gradient w.r.t. both embeddings and the temperature, by central differences."""
    img, txt = (_normalize(a) for a in pair)
    t0 = 0.5
    img_t = tf.Variable(img, dtype=tf.float64)
    txt_t = tf.Variable(txt, dtype=tf.float64)
    t_t = tf.Variable(t0, dtype=tf.float64)
    with tf.GradientTape() as tape:
        # The loss computes in float32 whatever comes in; the tolerance reflects that.
        loss = losses.contrastive_loss(img_t, txt_t, t_t, label_smoothing=smoothing)
    g_img, g_txt, g_t = tape.gradient(loss, [img_t, txt_t, t_t])
    want_img = numeric_grad(lambda x: numpy_contrastive(x, txt, t0, smoothing), img)
    want_txt = numeric_grad(lambda x: numpy_contrastive(img, x, t0, smoothing), txt)
    want_t = numeric_grad(lambda x: numpy_contrastive(img, txt, float(x), smoothing),
                          np.array(t0))
    np.testing.assert_allclose(g_img.numpy(), want_img, atol=2e-5)
    np.testing.assert_allclose(g_txt.numpy(), want_txt, atol=2e-5)
    np.testing.assert_allclose(float(g_t), float(want_t), atol=2e-5)


def test_contrastive_perfect_alignment_is_low_and_shuffle_is_high():
    x = _normalize(np.eye(8, 16))
    aligned = float(losses.contrastive_loss(tf.constant(x, tf.float32),
                                            tf.constant(x, tf.float32), 0.05, 0.0))
    shuffled = float(losses.contrastive_loss(tf.constant(x, tf.float32),
                                             tf.constant(x[::-1].copy(), tf.float32), 0.05, 0.0))
    assert aligned < 1e-6 < 10 < shuffled


def test_sigmoid_forward_and_gradient_match_numpy(pair):
    img, txt = (_normalize(a) for a in pair)
    t0, b0 = 0.3, -2.0
    img_t = tf.Variable(img, dtype=tf.float64)
    b_t = tf.Variable(b0, dtype=tf.float64)
    with tf.GradientTape() as tape:
        loss = losses.sigmoid_loss(img_t, tf.constant(txt), t0, b_t)
    g_img, g_b = tape.gradient(loss, [img_t, b_t])
    np.testing.assert_allclose(float(loss), numpy_sigmoid(img, txt, t0, b0), rtol=1e-5)
    np.testing.assert_allclose(
        g_img.numpy(), numeric_grad(lambda x: numpy_sigmoid(x, txt, t0, b0), img), atol=2e-5)
    np.testing.assert_allclose(
        float(g_b), float(numeric_grad(lambda x: numpy_sigmoid(img, txt, t0, float(x)),
                                       np.array(b0))), atol=2e-5)


def test_distillation_loss_is_kl():
    rng = np.random.default_rng(1)
    s, t = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    p = np.exp(_log_softmax(t))
    want = (p * (_log_softmax(t) - _log_softmax(s))).sum(-1).mean()
    got = losses.distillation_loss(tf.constant(s, tf.float32), tf.constant(t, tf.float32))
    np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_chunked_sigmoid_forward_and_gradient_match_numpy(pair):
    """The chunked loss's hand-written gradient (images, texts, temperature, bias) against
    central differences of the numpy reference (on one device: one chunk)."""
    img, txt = (_normalize(a) for a in pair)
    t0, b0 = 0.3, -2.0
    args = [tf.constant(img, tf.float32), tf.constant(txt, tf.float32),
            tf.constant(t0), tf.constant(b0)]
    with tf.GradientTape() as tape:
        tape.watch(args)
        loss = losses.chunked_sigmoid_loss(*args)
    g_img, g_txt, g_t, g_b = tape.gradient(loss, args)
    np.testing.assert_allclose(float(loss), numpy_sigmoid(img, txt, t0, b0), rtol=1e-5)
    want = {
        "image": numeric_grad(lambda x: numpy_sigmoid(x, txt, t0, b0), img),
        "text": numeric_grad(lambda x: numpy_sigmoid(img, x, t0, b0), txt),
        "temperature": numeric_grad(lambda x: numpy_sigmoid(img, txt, float(x), b0),
                                    np.array(t0)),
        "bias": numeric_grad(lambda x: numpy_sigmoid(img, txt, t0, float(x)), np.array(b0)),
    }
    for name, got in zip(want, (g_img, g_txt, g_t, g_b)):
        np.testing.assert_allclose(got.numpy(), want[name], atol=5e-5, rtol=1e-4,
                                   err_msg=name)
