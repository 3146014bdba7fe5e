"""Batch normalization whose training step makes fewer passes over the activations.

Keras 3's ``BatchNormalization`` in training mode builds its statistics and its backward
pass from generic ops. With ``synchronized=True`` (the image tower's default, so that
replicas share their statistics) it also does so with one replica: it writes a tensor of
ones the size of the input to count its elements, sums ``x`` and ``x**2`` (the one-pass
variance ``E[x**2] - E[x]**2``), and autodiff's backward pass tiles the statistics'
gradients back to the input's shape. Each of these ops reads or writes the whole
activation, and on CPU, where TensorFlow fuses no elementwise ops, these passes cost the
EfficientNet tower more time than its convolutions.

``BatchNormalization`` here computes the same function with a hand-written gradient
(``tf.custom_gradient``), in float32 over all axes but the last:

- forward: ``mean = sum(x) / n``; ``xc = x - mean``; ``var = sum(xc**2) / n`` (two-pass,
  biased, as Keras); ``y = xc * (gamma * inv) + beta`` with ``inv = 1 / sqrt(var + eps)``;
- backward (Ioffe and Szegedy 2015, section 3): with ``g1 = sum(dy)`` and
  ``g2 = sum(dy * xc)``: ``dbeta = g1``, ``dgamma = inv * g2`` and
  ``dx = gamma * inv * (dy - g1 / n - xc * inv**2 * g2 / n)``.

Synchronized under a strategy of several replicas, ``n``, ``sum(x)``, ``sum(xc**2)`` and,
in the backward pass, ``g1`` and ``g2`` are summed over all replicas
(``malign.distributed.all_replicas_sum``), which is what autodiff through Keras'
all-reduced moments computes; ``dgamma`` and ``dbeta`` stay this replica's own (the
optimizer sums them across replicas). With one replica nothing is all-reduced.

The moving statistics move as in Keras 3 (``moving = moving * momentum + batch * (1 -
momentum)``, biased batch variance); float16/bfloat16 inputs are normalized in float32 and
cast back. Inference, a frozen (non-trainable) layer, masks, ``renorm``, ``center=False``
or ``scale=False`` and an axis other than the last take Keras' own path. The variables
are Keras' (``gamma``, ``beta``, ``moving_mean``, ``moving_variance``), so checkpoints
and the checkpoint converter are unchanged.

Measured (``benchmarks/RESULTS.md``): forward and backward of one batch norm on
[32, 64, 64, 96] float32, 2-core AMD EPYC: about 62 ms here against 88 to 124 ms for
``tf.nn.moments`` + ``tf.nn.batch_normalization`` and 76 to 91 ms for TensorFlow's
fused kernel (``FusedBatchNormV3`` and its gradient).

Sources: Ioffe and Szegedy 2015, "Batch Normalization" (arXiv:1502.03167); Keras 3
``keras/src/layers/normalization/batch_normalization.py`` and its TensorFlow
``moments`` (``keras/src/backend/tensorflow/nn.py``).

Example:
    >>> layer = BatchNormalization(momentum=0.9, epsilon=1e-3)
    >>> y = layer(tf.random.normal([2, 4, 4, 3]), training=True)
    >>> y.shape, float(tf.reduce_max(tf.abs(tf.reduce_mean(y, [0, 1, 2])))) < 1e-5
    (TensorShape([2, 4, 4, 3]), True)
"""

from __future__ import annotations

import keras
import tensorflow as tf

from malign import distributed

__all__ = ["BatchNormalization", "batch_norm_training"]


def batch_norm_training(x: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor, epsilon: float,
                        synchronized: bool = False):
    """Normalizes ``x`` over all axes but the last with the batch's statistics.

    Args:
        x: float32 ``[..., C]``, at least 2-D.
        gamma, beta: float32 ``[C]``, scale and offset.
        epsilon: added to the variance, > 0.
        synchronized: sum the statistics (and, backward, the gradient sums) over all
            replicas of the current replica context.

    Returns:
        ``(y, mean, variance)``: ``y`` float32 like ``x``; ``mean`` and the biased
        ``variance``, float32 ``[C]`` (for the moving statistics; no gradient flows
        through them).

    Example:
        >>> y, mean, var = batch_norm_training(tf.constant([[1.0], [3.0]]), tf.ones([1]),
        ...                                    tf.zeros([1]), 1e-3)
        >>> [round(float(v), 3) for v in (y[0, 0], mean[0], var[0])]
        [-1.0, 2.0, 1.0]
    """
    total = distributed.all_replicas_sum if synchronized else (lambda t: t)
    axes = list(range(len(x.shape) - 1))

    @tf.custom_gradient
    def normalize(x, gamma, beta):
        local_n = tf.cast(tf.size(x) // tf.shape(x)[-1], x.dtype)
        sums = total(tf.concat([tf.reduce_sum(x, axes), local_n[None]], 0))
        n = sums[-1]
        mean = sums[:-1] / n
        centered = x - mean
        variance = total(tf.reduce_sum(tf.square(centered), axes)) / n
        inv = tf.math.rsqrt(variance + epsilon)
        scale = gamma * inv
        y = centered * scale + beta

        def grad(dy, *unused):
            g1 = tf.reduce_sum(dy, axes)
            g2 = tf.reduce_sum(dy * centered, axes)
            both = total(tf.concat([g1, g2], 0))
            channels = tf.shape(g1)[0]
            g1_all, g2_all = both[:channels], both[channels:]
            c = -scale * tf.square(inv) * g2_all / n
            dx = dy * scale + (centered * c - scale * g1_all / n)
            return dx, inv * g2, g1

        return (y, tf.stop_gradient(mean), tf.stop_gradient(variance)), grad

    return normalize(x, gamma, beta)


@keras.saving.register_keras_serializable(package="malign")
class BatchNormalization(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` with a hand-written training step (module
    docstring).

    Same arguments, variables and results as Keras' layer; in training mode a trainable
    layer normalizing over the last axis (with ``center`` and ``scale``, no mask, no
    ``renorm``) runs ``batch_norm_training``.

    Example:
        >>> layer = BatchNormalization(synchronized=True)
        >>> layer(tf.ones([2, 3]), training=True).shape
        TensorShape([2, 3])
    """

    def _hand_written(self, inputs, training, mask) -> bool:
        last = len(inputs.shape) - 1
        return bool(training) and self.trainable and mask is None and not self.renorm \
            and self.center and self.scale and self.axis in (-1, last) and last >= 1

    def call(self, inputs, training=None, mask=None):
        if not self._hand_written(inputs, training, mask):
            return super().call(inputs, training=training, mask=mask)
        x = tf.cast(inputs, "float32")
        y, mean, variance = batch_norm_training(
            x, tf.cast(self.gamma, "float32"), tf.cast(self.beta, "float32"), self.epsilon,
            synchronized=self.synchronized)
        momentum = self.momentum
        self.moving_mean.assign(tf.cast(self.moving_mean, "float32") * momentum
                                + mean * (1.0 - momentum))
        self.moving_variance.assign(tf.cast(self.moving_variance, "float32") * momentum
                                    + variance * (1.0 - momentum))
        return tf.cast(y, self.compute_dtype)
