"""Pure contrastive loss functions of embeddings.

Both losses take L2-normalised embeddings of the *local* batch. Inside a
``tf.distribute`` replica context they gather the other replicas' embeddings
(``malign.distributed.gather_batch``, with gradients) so that the negatives
come from the global batch, and they return the mean over the local rows;
averaging over replicas then gives the global-batch loss. Outside a replica
context they are the ordinary single-device losses.

Example:
    >>> import numpy as np
    >>> x = tf.math.l2_normalize(tf.constant(np.eye(4, 8), tf.float32), axis=-1)
    >>> round(float(contrastive_loss(x, x, 0.05, label_smoothing=0.0)), 4)
    0.0
"""

from __future__ import annotations

import tensorflow as tf

from malign import distributed

__all__ = ["contrastive_loss", "sigmoid_loss", "distillation_loss"]


def _smoothed_cross_entropy(logits: tf.Tensor, labels: tf.Tensor, smoothing: float) -> tf.Tensor:
    num_classes = tf.shape(logits)[-1]
    targets = tf.one_hot(labels, num_classes, dtype=logits.dtype)
    if smoothing:
        targets = targets * (1.0 - smoothing) + smoothing / tf.cast(num_classes, logits.dtype)
    return tf.nn.softmax_cross_entropy_with_logits(labels=targets, logits=logits)


def contrastive_loss(
    image_emb: tf.Tensor,
    text_emb: tf.Tensor,
    temperature: tf.Tensor | float,
    label_smoothing: float = 0.1,
) -> tf.Tensor:
    """ALIGN's normalized softmax loss, image->text and text->image, averaged.

    ``logits = image_emb @ text_emb.T / temperature`` over the global batch; the
    positive of row i is column i; targets are smoothed as
    ``onehot * (1 - s) + s / num_columns``. Computed in float32.

    Args:
        image_emb: [b, D] L2-normalised image embeddings of this replica.
        text_emb: [b, D] L2-normalised text embeddings, row i pairs with image i.
        temperature: positive scalar; logits are similarities divided by it.
        label_smoothing: in [0, 1).

    Returns:
        Scalar: mean over this replica's rows of the two directions' average.

    Example:
        >>> x = tf.math.l2_normalize(tf.random.normal((4, 8)), axis=-1)
        >>> contrastive_loss(x, x, 1.0).shape
        TensorShape([])
    """
    image_emb = tf.cast(image_emb, tf.float32)
    text_emb = tf.cast(text_emb, tf.float32)
    temperature = tf.cast(temperature, tf.float32)
    (all_images, all_texts), offset = distributed.gather_batch(image_emb, text_emb)
    labels = offset + tf.range(tf.shape(image_emb)[0])
    logits_i2t = tf.matmul(image_emb, all_texts, transpose_b=True) / temperature
    logits_t2i = tf.matmul(text_emb, all_images, transpose_b=True) / temperature
    loss_i2t = _smoothed_cross_entropy(logits_i2t, labels, label_smoothing)
    loss_t2i = _smoothed_cross_entropy(logits_t2i, labels, label_smoothing)
    return 0.5 * (tf.reduce_mean(loss_i2t) + tf.reduce_mean(loss_t2i))


def sigmoid_loss(
    image_emb: tf.Tensor,
    text_emb: tf.Tensor,
    temperature: tf.Tensor | float,
    bias: tf.Tensor | float,
) -> tf.Tensor:
    """SigLIP's pairwise sigmoid loss with a learnable bias.

    ``logits = image_emb @ text_emb.T / temperature + bias``; label +1 on matching
    pairs, -1 elsewhere; loss ``-sum(log_sigmoid(label * logits)) / batch``. This
    replica's image rows are scored against the global batch's texts, so the
    replicas together cover every pair once.

    Args:
        image_emb: [b, D] L2-normalised image embeddings of this replica.
        text_emb: [b, D] L2-normalised text embeddings.
        temperature: positive scalar.
        bias: scalar added to the logits (SigLIP initialises it at -10).

    Returns:
        Scalar loss normalised by this replica's batch size.

    Example:
        >>> x = tf.math.l2_normalize(tf.random.normal((4, 8)), axis=-1)
        >>> sigmoid_loss(x, x, 0.1, -10.0).shape
        TensorShape([])
    """
    image_emb = tf.cast(image_emb, tf.float32)
    text_emb = tf.cast(text_emb, tf.float32)
    (all_texts,), offset = distributed.gather_batch(text_emb)
    local = tf.shape(image_emb)[0]
    logits = tf.matmul(image_emb, all_texts, transpose_b=True) / tf.cast(temperature, tf.float32)
    logits = logits + tf.cast(bias, tf.float32)
    positives = tf.one_hot(offset + tf.range(local), tf.shape(all_texts)[0], dtype=tf.float32)
    signs = 2.0 * positives - 1.0
    return -tf.reduce_sum(tf.math.log_sigmoid(signs * logits)) / tf.cast(local, tf.float32)


def distillation_loss(
    student_logits: tf.Tensor,
    teacher_logits: tf.Tensor,
    temperature: float = 1.0,
) -> tf.Tensor:
    """KL(teacher || student) of row-wise softmax distributions, times temperature².

    Args:
        student_logits: [b, N] similarity logits of the student.
        teacher_logits: [b, N] similarity logits of the teacher (no gradient).
        temperature: softening temperature applied to both.

    Example:
        >>> z = tf.random.normal((3, 5))
        >>> round(float(distillation_loss(z, z)), 6)
        0.0
    """
    t = tf.cast(temperature, tf.float32)
    teacher = tf.nn.softmax(tf.stop_gradient(tf.cast(teacher_logits, tf.float32)) / t, axis=-1)
    log_student = tf.nn.log_softmax(tf.cast(student_logits, tf.float32) / t, axis=-1)
    log_teacher = tf.math.log(tf.maximum(teacher, 1e-30))
    kl = tf.reduce_sum(teacher * (log_teacher - log_student), axis=-1)
    return tf.reduce_mean(kl) * t * t
