"""BERT on real tokens only: the text tower's forward pass without its padding.

A batch of captions is padded to one length (64 tokens in ALIGN) while most captions are
far shorter, and a padded BERT spends the same matmuls on padding as on words. Here every
token-wise op of keras-hub's ``BertBackbone`` (embeddings, the query/key/value and attention
output projections, the feed-forward network, layer norms, dropout, residuals) runs on the
``[N, H]`` matrix of the batch's ``N`` real tokens (the rows of ``tf.where(padding_mask)``),
as 2-D matmuls. Only the attention scores and their weighted sum, which need each
sequence's tokens side by side, run in a padded ``[B, heads, S, S]`` layout, ``S`` the
batch's longest span of real tokens (at most ``L``): each layer scatters its packed
queries, keys and values there and gathers the result back.

The tower embeds the ``[CLS]`` state only, so the last layer runs its queries, attention
output and feed-forward network on the ``B`` ``[CLS]`` rows (its keys and values still come
from every real token).

The result equals ``BertBackbone(...)["sequence_output"][:, 0]`` up to float rounding
(tested forward and backward, in ``tests/models/test_unpadded_bert.py``): a padded
position is never attended to (its key is masked), so it cannot change a real token, and
each real token's ops are the same. One difference: position 0 counts as a real token even
where ``padding_mask`` says otherwise (the padded BERT would attend from it uniformly to
every position of an all-padding row; here it attends to itself).

Shapes vary with the number of real tokens, so XLA (TPU, ``jit_compile=True``) cannot
compile this path: ``TextTower`` uses it only outside an XLA context (see
``in_xla_context``) and runs the padded backbone there.

Sources: the "remove padding" of ByteDance's EffectiveTransformer and NVIDIA's
FasterTransformer (BERT inference), and the varlen ("unpadded") BERT of MLPerf training
(Mattson et al. 2020, arXiv:1910.01500); the layer is keras-hub's ``TransformerEncoder``
(``keras_hub/src/layers/modeling/transformer_encoder.py``) with Keras' ``MultiHeadAttention``.

Example:
    >>> import keras_hub
    >>> backbone = keras_hub.models.BertBackbone(vocabulary_size=50, num_layers=1,
    ...     num_heads=2, hidden_dim=8, intermediate_dim=16, dropout=0.0)
    >>> ids = tf.constant([[2, 7, 3, 0], [2, 9, 9, 3]])
    >>> mask = tf.cast(ids > 0, "int32")
    >>> cls_states(backbone, ids, mask).shape
    TensorShape([2, 8])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import keras
import tensorflow as tf
from tensorflow.python.ops import control_flow_util

__all__ = ["cls_states", "in_xla_context"]


def in_xla_context() -> bool:
    """Whether the graph being built will be compiled by XLA (``jit_compile=True``, TPU).

    True inside a ``tf.function(jit_compile=True)`` (and functions it calls) and inside a
    TPU replica; False in eager mode and in plain ``tf.function`` graphs.
    """
    if tf.executing_eagerly():
        return False
    return bool(control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()))


@dataclass(frozen=True)
class _Packing:
    """Where the real tokens of a padded ``[B, L]`` batch are."""

    indices: tf.Tensor      # int64 [N, 2]: (row, position) of each real token, row-major
    key_mask: tf.Tensor     # bool [B, 1, 1, S]: real keys
    cls_rows: tf.Tensor     # int32 [B]: the row of each sequence's position 0 in [N, ...]
    batch: tf.Tensor        # int32 scalar B
    length: tf.Tensor       # int32 scalar S: the batch's last real position + 1 (<= L)


def _packing(padding_mask: tf.Tensor) -> _Packing:
    shape = tf.shape(padding_mask)
    real = tf.cast(padding_mask, tf.bool)  # int (nonzero = real) or bool
    real = tf.logical_or(real, tf.equal(tf.range(shape[1]), 0)[None, :])
    lengths = tf.reduce_sum(tf.cast(real, tf.int32), axis=1)
    # The attention layout only spans the positions some caption reaches: positions past
    # every caption's last real token would be masked keys and dropped queries. At least 1
    # (an empty batch).
    span = tf.maximum(tf.reduce_max(tf.where(real, tf.range(1, shape[1] + 1)[None, :], 0)), 1)
    return _Packing(indices=tf.where(real), key_mask=real[:, None, None, :span],
                    cls_rows=tf.math.cumsum(lengths, exclusive=True),
                    batch=shape[0], length=span)


def _project(x: tf.Tensor, layer: keras.layers.Layer) -> tf.Tensor:
    """An ``EinsumDense`` of ``MultiHeadAttention`` as one 2-D matmul on packed rows.

    ``x`` [N, in]; the kernel ([in, heads, d] for queries/keys/values, [heads, d, out] for
    the attention output) is read as [in, -1]; returns [N, heads * d] or [N, out].
    """
    kernel = tf.reshape(tf.cast(layer.kernel, x.dtype), [x.shape[-1], -1])
    y = tf.matmul(x, kernel)
    if layer.bias is not None:
        y = tf.nn.bias_add(y, tf.reshape(tf.cast(layer.bias, x.dtype), [-1]))
    return y


def _to_heads(x: tf.Tensor, packing: _Packing, heads: int) -> tf.Tensor:
    """Packed [N, heads * d] -> padded [B, heads, L, d] (zeros at padding)."""
    padded = tf.scatter_nd(packing.indices, x,
                           tf.stack([tf.cast(packing.batch, tf.int64),
                                     tf.cast(packing.length, tf.int64),
                                     tf.cast(tf.shape(x)[1], tf.int64)]))
    padded = tf.reshape(padded, [packing.batch, packing.length, heads, x.shape[-1] // heads])
    return tf.transpose(padded, [0, 2, 1, 3])


def _attend(query: tf.Tensor, key: tf.Tensor, value: tf.Tensor, packing: _Packing,
            attention: keras.layers.Layer, training, cls_only: bool) -> tf.Tensor:
    """Scaled dot-product attention of packed projections; returns packed [Nq, heads * d].

    ``query`` is [N, heads * d] (every real token) or, with ``cls_only``, [B, heads * d];
    ``key`` and ``value`` are [N, heads * d]. Masked keys get Keras' -1e9 (-3e4 in float16)
    before the softmax, as ``keras.layers.Softmax`` with a mask.
    """
    heads = attention._num_heads
    keys = _to_heads(key, packing, heads)
    values = _to_heads(value, packing, heads)
    if cls_only:
        queries = tf.reshape(query, [packing.batch, heads, 1, query.shape[-1] // heads])
    else:
        queries = _to_heads(query, packing, heads)
    scores = tf.matmul(queries, keys, transpose_b=True)            # [B, heads, Lq, L]
    large_negative = -3e4 if scores.dtype == tf.float16 else -1e9
    scores = tf.where(packing.key_mask, scores, tf.cast(large_negative, scores.dtype))
    probabilities = tf.nn.softmax(scores, axis=-1)
    if attention._dropout > 0.0:
        probabilities = attention._dropout_layer(probabilities, training=training)
    context = tf.matmul(probabilities, values)                      # [B, heads, Lq, d]
    if cls_only:
        return tf.reshape(context, [packing.batch, value.shape[-1]])
    context = tf.transpose(context, [0, 2, 1, 3])                   # [B, L, heads, d]
    return tf.reshape(tf.gather_nd(context, packing.indices), [-1, value.shape[-1]])


def _encoder_layer(x: tf.Tensor, layer: keras.layers.Layer, packing: _Packing, training,
                   cls_only: bool) -> tf.Tensor:
    """keras-hub ``TransformerEncoder.call`` on packed rows [N, H].

    Returns [N, H], or the [CLS] rows [B, H] with ``cls_only``.
    """
    attention = layer._self_attention_layer
    residual = tf.gather(x, packing.cls_rows) if cls_only else x
    if layer.normalize_first:
        x = layer._self_attention_layer_norm(x)
    queries = tf.gather(x, packing.cls_rows) if cls_only else x
    query = _project(queries, attention._query_dense)
    query = query * tf.cast(attention._inverse_sqrt_key_dim, query.dtype)
    context = _attend(query, _project(x, attention._key_dense),
                      _project(x, attention._value_dense), packing, attention, training,
                      cls_only)
    x = _project(context, attention._output_dense)
    x = layer._self_attention_dropout(x, training=training)
    x = x + residual
    if not layer.normalize_first:
        x = layer._self_attention_layer_norm(x)

    residual = x
    if layer.normalize_first:
        x = layer._feedforward_layer_norm(x)
    x = layer._feedforward_intermediate_dense(x)
    x = layer._feedforward_output_dense(x)
    x = layer._feedforward_dropout(x, training=training)
    x = x + residual
    if not layer.normalize_first:
        x = layer._feedforward_layer_norm(x)
    return x


def cls_states(backbone: keras.Model, token_ids: tf.Tensor, padding_mask: tf.Tensor,
               training=None,
               wrap_layer: Callable[[Callable, keras.layers.Layer], Callable] | None = None,
               ) -> tf.Tensor:
    """The final ``[CLS]`` (position 0) states of a keras-hub ``BertBackbone``, on real tokens.

    Args:
        backbone: a built ``keras_hub.models.BertBackbone`` (its layers and weights are
            used as they are; segment ids are taken to be 0, as the text tower feeds them).
        token_ids: int [B, L] token ids.
        padding_mask: int or bool [B, L], nonzero at real tokens (any pattern; position 0
            always counts as real).
        training: Keras' training flag (dropout).
        wrap_layer: optional ``(fn, layer) -> fn``, applied to each encoder layer's function
            of its packed input (``TextTower`` passes recomputation, ``malign.models.remat``).

    Returns:
        [B, H] in the backbone's compute dtype: equal to
        ``backbone(...)["sequence_output"][:, 0]`` up to float rounding.
    """
    packing = _packing(padding_mask)
    ids = tf.gather_nd(token_ids, packing.indices)                           # [N]
    tokens = backbone.token_embedding(ids)                                  # [N, H]
    table = backbone.position_embedding.position_embeddings
    positions = tf.gather(tf.cast(table, tokens.dtype), packing.indices[:, 1])
    segments = backbone.segment_embedding(tf.zeros_like(ids))
    x = backbone.embeddings_add((tokens, positions, segments))
    x = backbone.embeddings_layer_norm(x)
    x = backbone.embeddings_dropout(x, training=training)
    last = len(backbone.transformer_layers) - 1
    if last < 0:
        return tf.gather(x, packing.cls_rows)
    for i, layer in enumerate(backbone.transformer_layers):
        def fn(inputs, layer=layer, cls_only=i == last):
            return _encoder_layer(inputs, layer, packing, training, cls_only)

        x = (wrap_layer(fn, layer) if wrap_layer else fn)(x)
    return x
