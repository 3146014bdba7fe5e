"""Pure loss functions of embeddings: contrastive and distillation.

The losses take L2-normalised embeddings of the *local* batch. Inside a
``tf.distribute`` replica context the batch-coupled ones (``contrastive_loss``,
``sigmoid_loss``, ``similarity_kl_loss``) gather the other replicas' embeddings
(``malign.distributed.gather_batch``, with gradients) so that the negatives
come from the global batch; every loss returns the mean over the local rows, so
averaging over replicas gives the global-batch loss, and with
``malign.distributed.scale_loss_for_replicas`` the replicas' summed gradients
are the single-device gradients on the global batch. Outside a replica context
they are the ordinary single-device losses. Everything is computed in float32.

Distillation (a frozen teacher, a student; the teacher side is always under
``tf.stop_gradient``):

- ``distillation_loss``: KL(teacher || student) of row-wise softmaxes of logits;
- ``similarity_kl_loss``: that KL on the image->text and text->image similarity
  distributions over the global batch;
- ``embedding_alignment_loss``: cosine or squared-error distance between the
  student's (optionally linearly mapped) and the teacher's embeddings;
- ``cross_lingual_distillation_loss``: the same distance between the student's
  embedding of a translation and the teacher's embedding of the English source.

Example:
    >>> import numpy as np
    >>> x = tf.math.l2_normalize(tf.constant(np.eye(4, 8), tf.float32), axis=-1)
    >>> round(float(contrastive_loss(x, x, 0.05, label_smoothing=0.0)), 4)
    0.0
"""

from __future__ import annotations

import tensorflow as tf

from malign import distributed

__all__ = [
    "contrastive_loss",
    "sigmoid_loss",
    "chunked_sigmoid_loss",
    "distillation_loss",
    "similarity_kl_loss",
    "embedding_alignment_loss",
    "cross_lingual_distillation_loss",
]

ALIGNMENT_KINDS = ("cosine", "mse")


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


def chunked_sigmoid_loss(
    image_emb: tf.Tensor,
    text_emb: tf.Tensor,
    temperature: tf.Tensor | float,
    bias: tf.Tensor | float,
) -> tf.Tensor:
    """``sigmoid_loss`` computed one replica's text embeddings at a time.

    SigLIP's chunked implementation (Zhai et al. 2023, "Sigmoid Loss for Language Image
    Pre-Training", arXiv:2303.15343, section 3.3): the sigmoid loss is a sum over pairs,
    so each replica can score its images against one replica's texts at a time. Round
    ``r`` of ``num_replicas`` rounds receives replica ``r``'s [b, D] text embeddings
    (``distributed.broadcast_from_replica``) and adds that [b, b] block of the loss; the
    positives are on the diagonal of the block of the replica's own texts. No replica
    holds the global [b, B] logits or the [B, D] global text embeddings, in the forward
    pass or the backward pass: the gradient is written out here (``tf.custom_gradient``)
    and replays the rounds, sending each block's text gradient back to its owner
    (``distributed.sum_to_replica``). Value and gradients equal ``sigmoid_loss``'s.

    Args:
        image_emb: [b, D] L2-normalised image embeddings of this replica.
        text_emb: [b, D] L2-normalised text embeddings (row i pairs with image i).
        temperature: positive scalar.
        bias: scalar added to the logits.

    Returns:
        Scalar loss normalised by this replica's batch size, as ``sigmoid_loss``.

    Example:
        >>> x = tf.math.l2_normalize(tf.random.normal((4, 8)), axis=-1)
        >>> bool(abs(chunked_sigmoid_loss(x, x, 0.1, -10.0) - sigmoid_loss(x, x, 0.1, -10.0)) < 1e-5)
        True
    """
    return _chunked_sigmoid(tf.cast(image_emb, tf.float32), tf.cast(text_emb, tf.float32),
                            tf.cast(tf.convert_to_tensor(temperature), tf.float32),
                            tf.cast(tf.convert_to_tensor(bias), tf.float32))


def _sigmoid_block(image_emb, texts, temperature, bias, own: tf.Tensor):
    """(similarities, logits, signs) of this replica's images against one replica's texts;
    ``own`` is 1.0 when the texts are this replica's (positives on the diagonal)."""
    similarities = tf.matmul(image_emb, texts, transpose_b=True)
    logits = similarities / temperature + bias
    positives = tf.eye(tf.shape(image_emb)[0], tf.shape(texts)[0], dtype=tf.float32) * own
    return similarities, logits, 2.0 * positives - 1.0


@tf.custom_gradient
def _chunked_sigmoid(image_emb, text_emb, temperature, bias):
    rounds = distributed.num_replicas()
    me = distributed.replica_id()
    local = tf.cast(tf.shape(image_emb)[0], tf.float32)

    def own(source: int) -> tf.Tensor:
        return tf.cast(tf.equal(me, source), tf.float32)

    total = tf.zeros((), tf.float32)
    for source in range(rounds):
        with tf.control_dependencies([total]):  # one block at a time
            texts = distributed.broadcast_from_replica(text_emb, source)
        _, logits, signs = _sigmoid_block(image_emb, texts, temperature, bias, own(source))
        total = total - tf.reduce_sum(tf.math.log_sigmoid(signs * logits))
    loss = total / local

    def grad(upstream):
        d_image = tf.zeros_like(image_emb)
        d_text = tf.zeros_like(text_emb)
        d_temperature = tf.zeros((), tf.float32)
        d_bias = tf.zeros((), tf.float32)
        for source in range(rounds):
            with tf.control_dependencies([d_image]):
                texts = distributed.broadcast_from_replica(text_emb, source)
            similarities, logits, signs = _sigmoid_block(image_emb, texts, temperature,
                                                         bias, own(source))
            # d/dz of -log_sigmoid(s * z) is -s * sigmoid(-s * z).
            d_logits = -signs * tf.sigmoid(-signs * logits) * (upstream / local)
            d_image = d_image + tf.matmul(d_logits, texts) / temperature
            d_texts = tf.matmul(d_logits, image_emb, transpose_a=True) / temperature
            d_text = d_text + distributed.sum_to_replica(d_texts, source)
            d_bias = d_bias + tf.reduce_sum(d_logits)
            d_temperature = d_temperature - tf.reduce_sum(d_logits * similarities) / (
                temperature * temperature)
        return d_image, d_text, d_temperature, d_bias

    return loss, grad


def distillation_loss(
    student_logits: tf.Tensor,
    teacher_logits: tf.Tensor,
    temperature: tf.Tensor | float = 1.0,
) -> tf.Tensor:
    """Mean over rows of KL(teacher || student) of row-wise softmaxes, times temperature².

    For each row ``r``: ``p = softmax(teacher_logits[r] / T)``,
    ``q = softmax(student_logits[r] / T)``, ``KL = sum_j p_j (log p_j - log q_j)``;
    the result is ``T² * mean_r KL``. The ``T²`` factor keeps the gradient's size
    independent of ``T`` (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a
    Neural Network", arXiv:1503.02531). The teacher logits are under
    ``tf.stop_gradient``. This is the row-wise core of ``similarity_kl_loss``; it does
    no collective, so under a strategy it is the mean over the local rows.

    Args:
        student_logits: [b, N] float logits of the student.
        teacher_logits: [b, N] float logits of the teacher (no gradient flows to them).
        temperature: positive scalar ``T`` (Python float or scalar tensor) dividing both.

    Returns:
        float32 scalar, >= 0; 0 when the two rows' softmaxes are equal.

    Raises:
        ValueError: when the logits are not rank 2 or their static shapes differ.

    Example:
        >>> z = tf.constant([[1.0, 2.0, 3.0], [0.0, 0.0, 5.0]])
        >>> round(float(distillation_loss(z, z)), 6)
        0.0
        >>> round(float(distillation_loss(tf.zeros((1, 2)), tf.constant([[0.0, 100.0]]))), 4)
        0.6931
    """
    student = _as_matrix(student_logits, "student_logits")
    teacher = tf.stop_gradient(_as_matrix(teacher_logits, "teacher_logits"))
    if not student.shape.is_compatible_with(teacher.shape):
        raise ValueError(f"student_logits {student.shape} and teacher_logits "
                         f"{teacher.shape} must have the same shape")
    t = tf.cast(temperature, tf.float32)
    log_teacher = tf.nn.log_softmax(teacher / t, axis=-1)
    log_student = tf.nn.log_softmax(student / t, axis=-1)
    kl = tf.reduce_sum(tf.exp(log_teacher) * (log_teacher - log_student), axis=-1)
    return tf.reduce_mean(kl) * t * t


def similarity_kl_loss(
    student_image: tf.Tensor,
    student_text: tf.Tensor,
    teacher_image: tf.Tensor,
    teacher_text: tf.Tensor,
    student_temperature: tf.Tensor | float,
    teacher_temperature: tf.Tensor | float | None = None,
    distill_temperature: tf.Tensor | float = 1.0,
) -> tf.Tensor:
    """KL(teacher || student) of the in-batch similarity distributions, both directions.

    With ``S_i, S_t`` the student's and ``T_i, T_t`` the teacher's L2-normalised
    image and text embeddings of the GLOBAL batch (``B`` rows, gathered over replicas
    with ``malign.distributed.gather_batch``) and ``r`` one of this replica's rows:

    - student logits: ``s_i2t[r] = S_i[r] @ S_t.T / student_temperature`` and
      ``s_t2i[r] = S_t[r] @ S_i.T / student_temperature`` (cosine similarities,
      since the embeddings are unit vectors, over the model's temperature);
    - teacher logits: the same with ``T_*`` and ``teacher_temperature``;
    - loss ``= 0.5 * (distillation_loss(s_i2t, t_i2t, D) + distillation_loss(s_t2i,
      t_t2i, D))`` with ``D = distill_temperature``, i.e. ``D² * KL(softmax(t/D) ||
      softmax(s/D))`` averaged over this replica's rows and the two directions.

    The teacher's embeddings and temperature are under ``tf.stop_gradient``; the
    gradient reaches the student's embeddings (through the gather, also the other
    replicas' rows) and the student's temperature. The teacher and student widths may
    differ: only the [b, B] similarity matrices are compared. This is the
    relational / "ICL"-style similarity distillation of CLIP-KD (Yang et al. 2024,
    "CLIP-KD: An Empirical Study of CLIP Model Distillation", CVPR, arXiv:2307.12732)
    with Hinton et al.'s softened KL (2015, arXiv:1503.02531).

    Under a strategy the value is the mean over this replica's rows; with equal local
    batches the mean over replicas is the global-batch loss, and after
    ``distributed.scale_loss_for_replicas`` the replicas' summed gradients equal the
    single-device gradient on the global batch.

    Args:
        student_image: [b, D_s] float, L2-normalised student image embeddings of this
            replica; row ``i`` pairs with row ``i`` of the other three.
        student_text: [b, D_s] float, L2-normalised student text embeddings.
        teacher_image: [b, D_t] float, L2-normalised teacher image embeddings.
        teacher_text: [b, D_t] float, L2-normalised teacher text embeddings.
        student_temperature: positive scalar, the student's logit temperature.
        teacher_temperature: positive scalar, the teacher's logit temperature;
            ``None`` uses ``student_temperature`` (without gradient on the teacher side).
        distill_temperature: positive scalar ``D`` softening both distributions.

    Returns:
        float32 scalar, >= 0; 0 when the student's logits equal the teacher's.

    Raises:
        ValueError: when an embedding is not rank 2, the batch sizes differ, or the
            image and text widths of the student (or of the teacher) differ; the
            message names the tensors and their shapes.

    Example:
        >>> x = tf.math.l2_normalize(tf.random.normal((4, 8)), axis=-1)
        >>> y = tf.math.l2_normalize(tf.random.normal((4, 16)), axis=-1)
        >>> round(float(similarity_kl_loss(x, x, x, x, 0.05)), 6)
        0.0
        >>> float(similarity_kl_loss(x, x, y, y, 0.05, 0.1, distill_temperature=2.0)) > 0
        True
    """
    named = {"student_image": student_image, "student_text": student_text,
             "teacher_image": teacher_image, "teacher_text": teacher_text}
    named = {name: _as_matrix(tensor, name) for name, tensor in named.items()}
    _check_same_batch(named)
    for side in ("student", "teacher"):
        image, text = named[f"{side}_image"], named[f"{side}_text"]
        if not image.shape[-1:].is_compatible_with(text.shape[-1:]):
            raise ValueError(f"{side}_image width {image.shape[-1]} != {side}_text width "
                             f"{text.shape[-1]}: a model's image and text embeddings must "
                             "have the same width")
    student_image, student_text = named["student_image"], named["student_text"]
    teacher_image = tf.stop_gradient(named["teacher_image"])
    teacher_text = tf.stop_gradient(named["teacher_text"])
    student_temperature = tf.cast(student_temperature, tf.float32)
    if teacher_temperature is None:
        teacher_temperature = student_temperature
    teacher_temperature = tf.stop_gradient(tf.cast(teacher_temperature, tf.float32))
    (s_images, s_texts, t_images, t_texts), _ = distributed.gather_batch(
        student_image, student_text, teacher_image, teacher_text)
    s_i2t = tf.matmul(student_image, s_texts, transpose_b=True) / student_temperature
    s_t2i = tf.matmul(student_text, s_images, transpose_b=True) / student_temperature
    t_i2t = tf.matmul(teacher_image, t_texts, transpose_b=True) / teacher_temperature
    t_t2i = tf.matmul(teacher_text, t_images, transpose_b=True) / teacher_temperature
    return 0.5 * (distillation_loss(s_i2t, t_i2t, distill_temperature)
                  + distillation_loss(s_t2i, t_t2i, distill_temperature))


def embedding_alignment_loss(
    student_emb: tf.Tensor,
    teacher_emb: tf.Tensor,
    kind: str = "cosine",
    projection: tf.Tensor | None = None,
) -> tf.Tensor:
    """Distance between the student's (mapped) and the teacher's embeddings, per row.

    With ``s = student_emb @ projection`` (or ``student_emb`` when ``projection`` is
    None) and ``t = stop_gradient(teacher_emb)``:

    - ``kind="cosine"``: ``mean_r (1 - cos(s[r], t[r]))`` (both rows L2-normalised
      here, so the scale of either side does not matter); in [0, 2];
    - ``kind="mse"``: ``mean_r ||s[r] - t[r]||²``, the squared Euclidean distance of
      the rows as given (no normalisation), averaged over rows. On unit vectors it
      equals ``2 * (1 - cos)``; it is ``D_t`` times PyTorch's element-mean
      ``MSELoss`` used by Reimers & Gurevych (2020).

    Feature / embedding distillation as in FitNets-style hint losses and CLIP-KD's
    "FD" (Yang et al. 2024, arXiv:2307.12732); the learned ``projection`` is the
    linear map used there when the widths differ. Per-row, no collective: under a
    strategy the value is the mean over this replica's rows.

    Args:
        student_emb: [b, D_s] float student embeddings (gradient flows to them).
        teacher_emb: [b, D_t] float teacher embeddings (no gradient).
        kind: ``"cosine"`` or ``"mse"``.
        projection: optional [D_s, D_t] float matrix applied to the student rows (the
            gradient flows to it); required when ``D_s != D_t``.

    Returns:
        float32 scalar, >= 0; 0 when the (mapped) student rows equal the teacher's
        (for ``"cosine"``: point the same way).

    Raises:
        ValueError: for an unknown ``kind``; when an input is not rank 2; when the
            batch sizes differ; when the widths differ and no projection is given
            (naming both widths); when ``projection`` is not [D_s, D_t].

    Example:
        >>> s = tf.constant([[1.0, 0.0], [0.0, 2.0]])
        >>> t = tf.constant([[2.0, 0.0], [1.0, 0.0]])
        >>> float(embedding_alignment_loss(s, t))  # rows: 1 - 1, 1 - 0
        0.5
        >>> float(embedding_alignment_loss(s, t, kind="mse"))  # rows: 1, 1 + 4
        3.0
        >>> w = tf.constant([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
        >>> float(embedding_alignment_loss(s, tf.constant([[3.0, 0, 0], [0, 1, 0]]),
        ...                                projection=w))
        0.0
    """
    if kind not in ALIGNMENT_KINDS:
        raise ValueError(f"kind={kind!r}: an embedding alignment loss is one of "
                         f"{', '.join(ALIGNMENT_KINDS)}")
    student = _as_matrix(student_emb, "student_emb")
    teacher = tf.stop_gradient(_as_matrix(teacher_emb, "teacher_emb"))
    _check_same_batch({"student_emb": student, "teacher_emb": teacher})
    d_s, d_t = student.shape[-1], teacher.shape[-1]
    if projection is None:
        if d_s is not None and d_t is not None and d_s != d_t:
            raise ValueError(
                f"student width {d_s} != teacher width {d_t}: give a projection of shape "
                f"[{d_s}, {d_t}] (a learned linear map) to compare them")
    else:
        projection = tf.convert_to_tensor(projection)
        if not projection.shape.is_compatible_with([d_s, d_t]):
            raise ValueError(f"projection has shape {projection.shape}; it must be "
                             f"[student width, teacher width] = [{d_s}, {d_t}]")
        student = tf.matmul(student, tf.cast(projection, tf.float32))
    if kind == "cosine":
        cos = tf.reduce_sum(tf.math.l2_normalize(student, axis=-1)
                            * tf.math.l2_normalize(teacher, axis=-1), axis=-1)
        per_row = 1.0 - cos
    else:
        per_row = tf.reduce_sum(tf.math.squared_difference(student, teacher), axis=-1)
    return tf.reduce_mean(per_row)


def cross_lingual_distillation_loss(
    student_text_translated: tf.Tensor,
    teacher_text_english: tf.Tensor,
    kind: str = "cosine",
    projection: tf.Tensor | None = None,
) -> tf.Tensor:
    """Multilingual knowledge distillation: a translation's student embedding -> the
    teacher's embedding of its English source.

    Row ``r`` of ``student_text_translated`` is the student text tower's embedding of a
    translation (German, French, Czech, ...) of the English caption whose teacher
    embedding is row ``r`` of ``teacher_text_english``; the student learns to put the
    translation where the (possibly English-only) teacher puts the source, so an
    English teacher yields a multilingual student. Reimers & Gurevych 2020, "Making
    Monolingual Sentence Embeddings Multilingual using Knowledge Distillation"
    (arXiv:2004.09813); Carlsson et al. 2022, "Cross-lingual and Multilingual CLIP"
    (LREC, Multilingual-CLIP). The loss is exactly
    ``embedding_alignment_loss(student_text_translated, teacher_text_english, kind,
    projection)`` on those pairs (this name only documents the pairing); see it for
    the formulas, shapes and errors. Reimers & Gurevych also pull the student's
    embedding of the English source to the teacher's: pass those pairs as more rows.

    Args:
        student_text_translated: [b, D_s] float student text embeddings of translations.
        teacher_text_english: [b, D_t] float teacher text embeddings of the English
            sources (no gradient).
        kind: ``"cosine"`` or ``"mse"``.
        projection: optional [D_s, D_t] matrix mapping the student's width to the
            teacher's; required when they differ.

    Returns:
        float32 scalar, the mean over rows.

    Raises:
        ValueError: as ``embedding_alignment_loss``.

    Example:
        >>> de = tf.constant([[0.6, 0.8], [1.0, 0.0]])
        >>> en = tf.constant([[0.6, 0.8], [0.0, 1.0]])
        >>> float(cross_lingual_distillation_loss(de, en))  # rows: 0 and 1
        0.5
    """
    return embedding_alignment_loss(student_text_translated, teacher_text_english,
                                    kind=kind, projection=projection)


def _as_matrix(value, name: str) -> tf.Tensor:
    """``value`` as a float32 tensor; a ValueError naming it unless it is [batch, width]."""
    tensor = tf.convert_to_tensor(value)
    if tensor.shape.rank is not None and tensor.shape.rank != 2:
        raise ValueError(f"{name} must be a [batch, width] matrix; got shape {tensor.shape}")
    return tf.cast(tensor, tf.float32)


def _check_same_batch(named: dict[str, tf.Tensor]) -> None:
    sizes = {name: t.shape[0] for name, t in named.items()}
    known = {n for n in sizes.values() if n is not None}
    if len(known) > 1:
        listed = ", ".join(f"{name} {named[name].shape}" for name in named)
        raise ValueError(f"row i of every embedding must describe example i, but the batch "
                         f"sizes differ: {listed}")
