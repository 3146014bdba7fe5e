"""Recomputation (rematerialisation, gradient checkpointing) of blocks of layers.

``recompute_grad(fn, owner)`` returns a function equal to ``fn`` whose backward pass
recomputes ``fn``'s activations from its input instead of keeping them (Chen et al. 2016,
"Training Deep Nets with Sublinear Memory Cost", arXiv:1604.06174). The towers wrap each
EfficientNet stage and each BERT layer with it when ``training.remat`` is on
(``ImageTower.remat``, ``TextTower.remat``): a step then keeps one tensor per stage or
layer, at the cost of about one more forward pass.

Unlike ``tf.recompute_grad`` (which ``keras.RematScope`` uses on TensorFlow), the
recomputation here replays the forward pass exactly, state included:

- randomness: Keras dropout draws its seed from a ``SeedGenerator`` whose state advances at
  every call; the recomputation sets the states back to their values before the forward
  pass, so dropout and stochastic depth draw the same masks, then puts them back;
- batch norm: in training mode each call also moves the moving statistics; the
  recomputation's update is undone, so statistics move once per forward pass.

The same two snapshots (``random_state_variables``, ``batch_norm_statistics``,
``snapshot``, ``restore``) let gradient caching (``malign.training.grad_cache``) replay a
micro-batch's forward pass.

Example:
    >>> layer = keras.layers.Dense(4)
    >>> layer.build((None, 3))
    >>> x = tf.ones((2, 3))
    >>> with tf.GradientTape() as tape:
    ...     tape.watch(x)
    ...     y = recompute_grad(layer, layer)(x)
    >>> tape.gradient(y, x).shape
    TensorShape([2, 3])
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import tensorflow as tf
from tensorflow.python.eager import record  # stop_recording, as tf.recompute_grad

__all__ = [
    "batch_norm_statistics",
    "random_state_variables",
    "recompute_grad",
    "restore",
    "snapshot",
]


def _layers(owner: keras.layers.Layer) -> list[keras.layers.Layer]:
    return list(owner._flatten_layers(include_self=True, recursive=True))


def _unique(variables: list) -> list:
    seen, out = set(), []
    for v in variables:
        if id(v) not in seen:
            seen.add(id(v))
            out.append(v)
    return out


def random_state_variables(owner: keras.layers.Layer) -> list:
    """The ``SeedGenerator`` states of ``owner`` and every layer inside it.

    Keras' dropout (and any seeded random op of a layer) reads its seed from such a state
    and advances it by one per call; setting the states back replays the same draws.
    """
    return _unique([generator.state for layer in _layers(owner)
                    for generator in getattr(layer, "_seed_generators", [])])


def batch_norm_statistics(owner: keras.layers.Layer) -> list:
    """The moving means and variances of the batch norms inside ``owner`` that update them.

    Frozen batch norms (``trainable=False`` runs them in inference mode) are left out.
    """
    return _unique([v for layer in _layers(owner)
                    if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
                    for v in (layer.moving_mean, layer.moving_variance)])


def snapshot(variables: list) -> list[tf.Tensor]:
    """The current values of ``variables`` as tensors (read now, in program order)."""
    return [tf.identity(tf.convert_to_tensor(v)) for v in variables]


def restore(variables: list, values: list[tf.Tensor]) -> None:
    """Assigns ``values`` (from ``snapshot``) back to ``variables``."""
    for variable, value in zip(variables, values):
        variable.assign(value)


def recompute_grad(fn: Callable[[tf.Tensor], tf.Tensor],
                   owner: keras.layers.Layer) -> Callable[[tf.Tensor], tf.Tensor]:
    """``fn`` with its activations recomputed in the backward pass.

    Args:
        fn: a function of one float tensor (the block's input) returning one tensor; it may
            close over other tensors (masks) that need no gradient, and read the variables
            of ``owner``.
        owner: the layer whose layers ``fn`` runs (its seed generators and batch norms are
            replayed exactly, see the module docstring).

    Returns:
        A function of the same tensor with the same value and the same gradients, with
        respect to the input and to every trainable variable ``fn`` reads.
    """
    seeds = random_state_variables(owner)
    statistics = batch_norm_statistics(owner)

    def wrapped(x: tf.Tensor) -> tf.Tensor:
        before = snapshot(seeds)

        @tf.custom_gradient
        def block(x):
            with record.stop_recording():
                y = fn(x)
            after = snapshot(seeds)

            def grad(dy, variables=None):
                variables = list(variables or [])
                moved = snapshot(statistics)
                restore(seeds, before)
                # The recomputation must wait for the incoming gradient: without this
                # dependency the executor may run it as soon as ``x`` exists (during the
                # forward pass), keeping every activation alive, and Grappler may merge it
                # with the forward pass's identical ops.
                with tf.control_dependencies(tf.nest.flatten(dy)):
                    x_again = tf.identity(x)
                with tf.GradientTape() as tape:
                    tape.watch(x_again)
                    tape.watch(variables)
                    y_again = fn(x_again)
                grads = tape.gradient(y_again, [x_again] + variables, output_gradients=dy,
                                      unconnected_gradients=tf.UnconnectedGradients.ZERO)
                restore(seeds, after)
                restore(statistics, moved)
                return grads[0], grads[1:]

            return y, grad

        return block(x)

    return wrapped
