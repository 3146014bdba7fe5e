"""Gradient caching: a contrastive step over a batch larger than activation memory allows.

With ``training.micro_batch_size`` each replica's batch is split into ``k`` micro-batches
and one training step runs in three parts (GradCache, Gao et al. 2021, "Scaling Deep
Contrastive Learning Batch Size under Memory Limited Setup", arXiv:2101.06983; open_clip's
two-pass accumulation):

1. **embed**: every micro-batch goes through the towers without a gradient tape, so no
   activation is kept; only the embeddings [b, D] are;
2. **loss**: the model's loss over the whole batch (the global batch: the losses gather the
   other replicas' embeddings, ``malign.distributed``) is differentiated with respect to
   the embeddings and to the variables used after the towers (temperature, logit bias,
   the Distiller's linear maps);
3. **replay**: each micro-batch runs again under a tape and its embedding gradients are
   back-propagated (``tape.gradient(..., output_gradients=...)``); the towers' gradients
   are summed over micro-batches and applied once, with the loss's, by the optimizer.

The sum is exactly the gradient of the whole-batch loss, because the loss couples the
examples only through their embeddings. Memory holds the activations of one micro-batch
at a time: micro-batches run in order (each waits for the previous one), not side by side.
Micro-batch 0 runs on its own (it gives the structure of the outputs and gradients) and
micro-batches 1..k-1 in a ``tf.while_loop`` with ``parallel_iterations=1``, so the traced
step holds each tower twice per pass whatever k (``loops_over_micro_batches`` names the
one case that is unrolled instead).

The replay draws the same randomness as the embedding pass: the model's ``SeedGenerator``
states (dropout, stochastic depth) are set back to their values before the micro-batch's
first pass (``malign.models.remat.snapshot``/``restore``). Batch norm in training mode
normalises each micro-batch with its own statistics (ghost batch norm, Hoffer et al. 2017)
and moves the moving statistics once per micro-batch; the replay's update is undone.
A micro-batched step therefore equals the whole-batch step exactly when batch norm is
frozen (``model.image.freeze_batch_norm``) or absent.

Example:
    >>> model = AlignModel.from_preset("tiny")  # doctest: +SKIP
    >>> model.configure_steps(micro_batch_size=4)  # doctest: +SKIP
    >>> model.compile(optimizer="sgd"); model.fit(ds, steps_per_epoch=1)  # doctest: +SKIP
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras.src.losses import loss as keras_loss
from keras.src.trainers.data_adapters import data_adapter_utils

from malign.models.remat import batch_norm_statistics, random_state_variables, restore, snapshot

__all__ = ["loops_over_micro_batches", "micro_batches", "micro_batch_count", "train_step"]


def micro_batch_count(batch_size: int | None, micro_batch_size: int) -> int:
    """The number of micro-batches of a replica's batch.

    Args:
        batch_size: the static per-replica batch size (None when unknown).
        micro_batch_size: examples per micro-batch (> 0).

    Raises:
        ValueError: when the batch size is unknown (a dataset batched without
            ``drop_remainder``) or not a multiple of ``micro_batch_size``, naming
            ``training.micro_batch_size``.

    Example:
        >>> micro_batch_count(16, 4)
        4
    """
    if batch_size is None:
        raise ValueError("training.micro_batch_size needs a static per-replica batch size: "
                         "batch the dataset with drop_remainder=True")
    if micro_batch_size < 1 or batch_size % micro_batch_size:
        raise ValueError(f"training.micro_batch_size={micro_batch_size} must divide the "
                         f"per-replica batch of {batch_size} examples")
    return batch_size // micro_batch_size


def micro_batches(x, count: int) -> list:
    """Splits every tensor of the nested batch ``x`` into ``count`` equal consecutive parts.

    Example:
        >>> [p["a"].shape[0] for p in micro_batches({"a": tf.zeros((6, 2))}, 3)]
        [2, 2, 2]
    """
    size = _batch_size(x) // count
    return [tf.nest.map_structure(lambda t, i=i: t[i * size:(i + 1) * size], x)
            for i in range(count)]


def _batch_size(x) -> int | None:
    return tf.nest.flatten(x)[0].shape[0]


def _after(previous: list, x):
    """``x``, made to wait for ``previous`` (so micro-batches run one after the other)."""
    tensors = []
    for item in previous:
        if isinstance(item, tf.IndexedSlices):
            tensors.append(item.values)
        elif item is not None:
            tensors.append(item)
    if not tensors:
        return x
    with tf.control_dependencies(tensors):
        return tf.nest.map_structure(tf.identity, x)


def _add(a, b):
    """The sum of two gradients of one variable (None, dense or IndexedSlices)."""
    if a is None:
        return b
    if b is None:
        return a
    if isinstance(a, tf.IndexedSlices) and isinstance(b, tf.IndexedSlices):
        return tf.IndexedSlices(tf.concat([a.values, b.values], 0),
                                tf.concat([a.indices, b.indices], 0), a.dense_shape)
    return tf.convert_to_tensor(a) + tf.convert_to_tensor(b)


def loops_over_micro_batches(model: keras.Model) -> bool:
    """Whether the micro-batches run in a ``tf.while_loop`` (True) or unrolled (False).

    The loop keeps the traced step's size independent of the number of micro-batches
    (one copy of each tower per pass, plus the first micro-batch's). Synchronized batch
    norm in training mode under a MirroredStrategy (or MultiWorkerMirroredStrategy) of
    several replicas all-reduces its statistics through ``merge_call``, which cannot run
    inside a loop body; that case is unrolled. TPUStrategy all-reduces inside loops.
    """
    strategy = tf.distribute.get_strategy()
    if strategy.num_replicas_in_sync == 1 or isinstance(
            strategy, (tf.distribute.TPUStrategy, tf.distribute.experimental.TPUStrategy)):
        return True
    return not any(isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
                   and layer.synchronized
                   for layer in model._flatten_layers(include_self=True, recursive=True))


def train_step(model: keras.Model, data, micro_batch_size: int) -> dict:
    """One optimizer step of ``model`` on ``data`` by gradient caching (module docstring).

    The model provides:

    - ``micro_batch_outputs(x)``: the outputs of the embedding pass (training mode), a dict
      holding at least the keys of ``trained_outputs``;
    - ``trained_outputs(x)``: the outputs to differentiate, a dict of [b, D] tensors;
    - ``compute_loss(x, y, y_pred, ...)``: the loss of the whole batch from ``y_pred``,
      scaled for the replicas (as for Keras' own step).

    Args:
        model: an ``AlignModel`` or ``Distiller`` (compiled).
        data: one replica's batch, as Keras passes it to ``train_step``.
        micro_batch_size: examples per micro-batch; divides the replica's batch.

    Returns:
        The step's logs (``model.compute_metrics``), as Keras' ``train_step`` returns them.

    Raises:
        ValueError: see ``micro_batch_count``.
    """
    x, y, sample_weight = data_adapter_utils.unpack_x_y_sample_weight(data)
    batch = _batch_size(x)
    count = micro_batch_count(batch, micro_batch_size)
    seeds = random_state_variables(model)
    statistics = batch_norm_statistics(model)
    passes = _LoopedPasses if count > 1 and loops_over_micro_batches(model) else _UnrolledPasses
    passes = passes(model, x, count, seeds)

    # 1. Embed without a tape, remembering each micro-batch's random state.
    y_pred = passes.embed()

    # 2. The whole batch's loss: gradients for the embeddings and the loss's own variables.
    variables = model.trainable_variables
    with tf.GradientTape() as tape:
        embeddings = {key: y_pred[key] for key in model.trained_output_keys}
        tape.watch(list(embeddings.values()))
        loss = model._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                                   training=True)
        model._loss_tracker.update_state(keras_loss.unscale_loss_for_distribution(loss),
                                         sample_weight=batch)
        scaled = model.optimizer.scale_loss(loss)
    embedding_grads, grads = tape.gradient(scaled, (embeddings, variables))
    moved = snapshot(statistics)

    # 3. Replay each micro-batch with the tape; back-propagate its embeddings' gradients.
    tower_grads = passes.replay(embedding_grads, variables)
    grads = [_add(a, b) for a, b in zip(grads, tower_grads)]
    restore(statistics, moved)

    model.optimizer.apply_gradients(zip(grads, variables))
    return model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)


class _UnrolledPasses:
    """The two passes as Python loops: the traced step holds 2k copies of the towers."""

    def __init__(self, model, x, count, seeds):
        self.model, self.count, self.seeds = model, count, seeds
        self.parts = micro_batches(x, count)
        self.size = _batch_size(x) // count

    def embed(self) -> dict:
        self.starts, outputs, previous = [], [], []
        for part in self.parts:
            part = _after(previous, part)
            self.starts.append(snapshot(self.seeds))
            out = {key: tf.stop_gradient(value)
                   for key, value in self.model.micro_batch_outputs(part).items()}
            outputs.append(out)
            previous = list(out.values())
        self.ends = snapshot(self.seeds)
        return {key: tf.concat([out[key] for out in outputs], axis=0) for key in outputs[0]}

    def replay(self, embedding_grads: dict, variables: list) -> list:
        grads = [None] * len(variables)
        previous = list(embedding_grads.values())
        for i, part in enumerate(self.parts):
            part_grads = _replay_one(self.model, _after(previous, part), embedding_grads,
                                     i * self.size, self.size, variables, self.seeds,
                                     self.starts[i])
            grads = [_add(a, b) for a, b in zip(grads, part_grads)]
            previous = [g.values if isinstance(g, tf.IndexedSlices) else g
                        for g in part_grads if g is not None]
        restore(self.seeds, self.ends)
        return grads


def _replay_one(model, part, embedding_grads, begin, size, variables, seeds, start) -> list:
    """The towers' gradients of one micro-batch: its forward pass again, under a tape, with
    the random state it had in the embedding pass, back-propagating its embeddings'
    slice ``[begin, begin + size)`` of ``embedding_grads``."""
    restore(seeds, start)
    with tf.GradientTape() as tape:
        out = model.trained_outputs(part)
    keys = list(embedding_grads)
    upstream = [embedding_grads[key][begin:begin + size] for key in keys]
    return tape.gradient([out[key] for key in keys], variables, output_gradients=upstream)


class _LoopedPasses:
    """The two passes as ``tf.while_loop``s over micro-batches 1..k-1, after micro-batch 0
    outside the loop (which gives the outputs' and gradients' structure): the traced step
    holds the towers twice per pass, whatever k. ``parallel_iterations=1`` and the inputs'
    dependence on micro-batch 0 keep one micro-batch's activations alive at a time."""

    def __init__(self, model, x, count, seeds):
        self.model, self.count, self.seeds = model, count, seeds
        self.size = _batch_size(x) // count
        self.stacked = tf.nest.map_structure(
            lambda t: tf.reshape(t, [count, self.size] + t.shape[1:].as_list()), x)

    def _part(self, stacked, i):
        return tf.nest.map_structure(lambda t: t[i], stacked)

    def embed(self) -> dict:
        model, seeds, count = self.model, self.seeds, self.count
        self.seed_arrays = [tf.TensorArray(v.dtype, size=count + 1, element_shape=v.shape)
                            for v in seeds]
        start = snapshot(seeds)
        self.seed_arrays = [a.write(0, s) for a, s in zip(self.seed_arrays, start)]
        first = {key: tf.stop_gradient(value) for key, value in
                 model.micro_batch_outputs(self._part(self.stacked, 0)).items()}
        keys = list(first)
        arrays = {key: tf.TensorArray(first[key].dtype, size=count,
                                      element_shape=first[key].shape).write(0, first[key])
                  for key in keys}
        stacked = _after(list(first.values()), self.stacked)

        def body(i, arrays, seed_arrays):
            seed_arrays = [a.write(i, s) for a, s in zip(seed_arrays, snapshot(seeds))]
            out = model.micro_batch_outputs(self._part(stacked, i))
            arrays = {key: arrays[key].write(i, tf.stop_gradient(out[key])) for key in keys}
            return i + 1, arrays, seed_arrays

        _, arrays, seed_arrays = tf.while_loop(
            lambda i, *_: i < count, body, (tf.constant(1), arrays, self.seed_arrays),
            parallel_iterations=1)
        self.seed_arrays = [a.write(count, s) for a, s in zip(seed_arrays, snapshot(seeds))]
        return {key: tf.reshape(arrays[key].stack(),
                                [count * self.size] + first[key].shape[1:].as_list())
                for key in keys}

    def _start(self, i) -> list:
        return [a.read(i) for a in self.seed_arrays]

    def replay(self, embedding_grads: dict, variables: list) -> list:
        model, seeds, count, size = self.model, self.seeds, self.count, self.size
        first = _replay_one(model, _after(list(embedding_grads.values()),
                                          self._part(self.stacked, 0)),
                            embedding_grads, 0, size, variables, seeds, self._start(0))
        dense = [j for j, g in enumerate(first) if g is not None
                 and not isinstance(g, tf.IndexedSlices)]
        sliced = [j for j, g in enumerate(first) if isinstance(g, tf.IndexedSlices)]
        stacked = _after([first[j] for j in dense] + [first[j].values for j in sliced],
                         self.stacked)

        def slices_array(j, part):
            g = getattr(first[j], part)
            return tf.TensorArray(g.dtype, size=count - 1, element_shape=g.shape)

        def body(i, sums, values, indices):
            part_grads = _replay_one(model, self._part(stacked, i), embedding_grads,
                                     i * size, size, variables, seeds, self._start(i))
            sums = [total + tf.convert_to_tensor(part_grads[j]) for total, j in zip(sums, dense)]
            values = [a.write(i - 1, part_grads[j].values) for a, j in zip(values, sliced)]
            indices = [a.write(i - 1, part_grads[j].indices) for a, j in zip(indices, sliced)]
            return i + 1, sums, values, indices

        _, sums, values, indices = tf.while_loop(
            lambda i, *_: i < count, body,
            (tf.constant(1), [first[j] for j in dense],
             [slices_array(j, "values") for j in sliced],
             [slices_array(j, "indices") for j in sliced]),
            parallel_iterations=1)
        restore(seeds, self._start(count))
        grads = list(first)
        for j, total in zip(dense, sums):
            grads[j] = total
        for j, v, ix in zip(sliced, values, indices):
            grads[j] = tf.IndexedSlices(tf.concat([first[j].values, v.concat()], 0),
                                        tf.concat([first[j].indices, ix.concat()], 0),
                                        first[j].dense_shape)
        return grads
