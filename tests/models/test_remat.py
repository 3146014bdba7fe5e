"""Recomputation waits for the backward pass (malign.models.remat)."""

import keras
import tensorflow as tf

from malign.models.remat import recompute_grad


def _ancestors(op) -> set:
    seen, stack = set(), [op]
    while stack:
        current = stack.pop()
        for parent in [t.op for t in current.inputs] + list(current.control_inputs):
            if parent.name not in seen:
                seen.add(parent.name)
                stack.append(parent)
    return seen


def test_recomputation_runs_after_the_incoming_gradient():
    """In the traced step the recomputed forward pass depends on the gradient arriving
    from above; without that dependency the executor runs it during the forward pass
    (keeping every activation alive) and no memory is saved."""
    layer = keras.layers.Dense(3, use_bias=False)
    layer.build((None, 4))

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            y = recompute_grad(layer, layer)(x)
            loss = tf.reduce_sum(tf.square(y), name="the_loss")
        return tape.gradient(loss, layer.kernel)

    graph = step.get_concrete_function(tf.TensorSpec((2, 4))).graph
    matmuls = [op for op in graph.get_operations() if op.type == "MatMul"]
    assert len(matmuls) == 4, [op.name for op in matmuls]  # forward, again, 2 gradients
    # The loss's gradient is computed from y = the forward MatMul's output, so every
    # MatMul that waits for the gradient has the forward MatMul among its ancestors.
    first = [op for op in matmuls
             if not any(other.name in _ancestors(op) for other in matmuls)]
    assert len(first) == 1, [op.name for op in first]
