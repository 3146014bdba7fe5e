"""Large contrastive batches: gradient caching, recomputation and the chunked sigmoid loss
give the gradients of the plain global-batch step (issue 14)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from distributed_helpers import flat_weights, make_batch

import malign
from malign import distributed, losses
from malign.config import ConfigError, ExperimentConfig, TrainingConfig
from malign.models.remat import random_state_variables
from malign.presets import get_preset
from malign.training import grad_cache

GLOBAL_BATCH = 16
LR = 0.5
TOL = 1e-5


def _strategy(spec: str):
    return distributed.get_strategy(spec)


def _model(strategy, init=None, micro=None, **overrides):
    with strategy.scope():
        model = malign.AlignModel.from_preset("tiny", **overrides)
        model.configure_steps(micro_batch_size=micro)
        model.compile(optimizer=keras.optimizers.SGD(LR))
    if init is not None:
        model.set_weights(init)
    return model


def _dataset(strategy, batch):
    return strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices(batch).batch(GLOBAL_BATCH, drop_remainder=True)
        .repeat())


def _fit_one_step(strategy, model, batch):
    history = model.fit(_dataset(strategy, batch), epochs=1, steps_per_epoch=1, verbose=0,
                        shuffle=False)
    return history.history["loss"][0], flat_weights(model)


def _implied_gradients(init: dict, after: dict) -> dict:
    """SGD: gradient = (weight before - weight after) / learning rate."""
    return {k: (init[k] - after[k]) / LR for k in init}


def _worst(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


@pytest.fixture(scope="module")
def frozen_reference():
    """Keras' plain step on one device, global batch 16, batch norm frozen."""
    keras.utils.set_random_seed(3)
    strategy = _strategy("default")
    model = _model(strategy, freeze_batch_norm=True)
    init = model.get_weights()
    init_flat = flat_weights(model)
    batch = make_batch(GLOBAL_BATCH, seed=5)
    loss, weights = _fit_one_step(strategy, model, batch)
    return dict(init=init, init_flat=init_flat, batch=batch, loss=loss, weights=weights)


# cpu:4: 4 examples per replica as 2 micro-batches of 2; one device: 16 as 2 x 8.
@pytest.mark.parametrize("spec,micro", [("default", 8), ("cpu:4", 2)])
def test_micro_batches_equal_the_plain_step(frozen_reference, spec, micro):
    ref = frozen_reference
    strategy = _strategy(spec)
    model = _model(strategy, ref["init"], micro=micro, freeze_batch_norm=True)
    loss, weights = _fit_one_step(strategy, model, ref["batch"])
    assert abs(loss - ref["loss"]) <= TOL
    got = _implied_gradients(ref["init_flat"], weights)
    want = _implied_gradients(ref["init_flat"], ref["weights"])
    # The step must move the weights, or the comparison proves nothing.
    assert max(float(np.max(np.abs(g))) for g in want.values()) > 1e-3
    assert _worst(got, want) <= TOL, "gradients differ"
    assert _worst(weights, ref["weights"]) <= TOL, "weights after the step differ"


def _one_tape_step(strategy, model, batch, micro):
    """The reference with dropout: one tape over the whole batch, embedded micro-batch by
    micro-batch in the same order (so each micro-batch draws the masks the cached step
    draws), one loss, one gradient, one SGD step."""
    dist = next(iter(_dataset(strategy, batch)))

    @tf.function
    def run(x):
        def step(x):
            count = grad_cache.micro_batch_count(tf.nest.flatten(x)[0].shape[0], micro)
            with tf.GradientTape() as tape:
                outs = [model(part, training=True)
                        for part in grad_cache.micro_batches(x, count)]
                y_pred = {k: tf.concat([o[k] for o in outs], 0) for k in outs[0]}
                loss = model.compute_loss(x, y_pred=y_pred)
            grads = tape.gradient(loss, model.trainable_variables)
            model.optimizer.apply_gradients(zip(grads, model.trainable_variables))
        strategy.run(step, args=(x,))

    run(dist)
    return flat_weights(model)


def _traced_op_count(model, micro: int) -> int:
    """Ops of gradient caching's traced step, the loops' bodies included."""
    batch = make_batch(GLOBAL_BATCH)
    step = tf.function(lambda x: grad_cache.train_step(model, x, micro))
    specs = {k: tf.TensorSpec(v.shape, tf.as_dtype(v.dtype)) for k, v in batch.items()}
    graph_def = step.get_concrete_function(specs).graph.as_graph_def()
    return len(graph_def.node) + sum(len(f.node_def) for f in graph_def.library.function)


def test_micro_batch_loop_keeps_the_traced_step_size_fixed():
    """Micro-batches 1..k-1 run in a ``tf.while_loop``: the traced step of 8 micro-batches
    has as many ops as that of 2 (an unrolled loop holds 2k copies of the towers)."""
    keras.utils.set_random_seed(3)
    model = _model(_strategy("default"), freeze_batch_norm=True)
    model.optimizer.build(model.trainable_variables)
    assert grad_cache.loops_over_micro_batches(model)
    assert _traced_op_count(model, GLOBAL_BATCH // 8) == _traced_op_count(model,
                                                                           GLOBAL_BATCH // 2)


@pytest.mark.parametrize("spec,micro", [
    ("default", 8), pytest.param("cpu:4", 2, marks=pytest.mark.slow)])
def test_micro_batches_with_dropout_replay_the_same_masks(spec, micro):
    """Dropout and stochastic depth on: the cached step's gradient is the one-tape gradient
    with the same masks; with other masks it is not (so dropout is really on)."""
    strategy = _strategy(spec)
    dropout = dict(freeze_batch_norm=True, dropout_rate=0.3, drop_connect_rate=0.3,
                   **{"text.dropout": 0.3})
    keras.utils.set_random_seed(4)
    cached = _model(strategy, micro=micro, **dropout)
    init = cached.get_weights()
    init_flat = flat_weights(cached)
    seeds = [tf.convert_to_tensor(v).numpy() for v in random_state_variables(cached)]
    assert len(seeds) >= 4  # the towers' dropout layers
    batch = make_batch(GLOBAL_BATCH, seed=6)

    def reference(seed_shift: int) -> dict:
        model = _model(strategy, init, **dropout)
        for variable, value in zip(random_state_variables(model), seeds):
            variable.assign(value + np.array([seed_shift, 0], value.dtype))
        return _implied_gradients(init_flat, _one_tape_step(strategy, model, batch, micro))

    _, weights = _fit_one_step(strategy, cached, batch)
    got = _implied_gradients(init_flat, weights)
    assert _worst(got, reference(0)) <= TOL
    assert _worst(got, reference(1)) > 1e-3


def test_remat_gives_equal_gradients_and_state(monkeypatch):
    """Recomputation per EfficientNet stage and BERT layer, dropout and batch norm on: the
    same loss, gradients, batch-norm statistics and seed states as without it."""
    keras.utils.set_random_seed(7)
    model = malign.AlignModel.from_preset("tiny", dropout_rate=0.2, drop_connect_rate=0.2,
                                          **{"text.dropout": 0.2})
    batch = make_batch(8, seed=8)
    start = [tf.convert_to_tensor(v).numpy() for v in model.variables]
    from malign.models import remat as remat_lib

    wrapped = []
    original = remat_lib.recompute_grad

    def counting(fn, owner):
        wrapped.append(owner.name)
        return original(fn, owner)

    monkeypatch.setattr(remat_lib, "recompute_grad", counting)

    def step(remat: bool):
        for variable, value in zip(model.variables, start):
            variable.assign(value)
        model.configure_steps(remat=remat)

        @tf.function
        def run(x):
            with tf.GradientTape() as tape:
                loss = model.compute_loss(x, y_pred=model(x, training=True))
            return loss, tape.gradient(loss, model.trainable_variables)

        wrapped.clear()
        loss, grads = run(batch)
        recomputed = len(wrapped)
        state = [tf.convert_to_tensor(v).numpy() for v in model.variables]
        return float(loss), [tf.convert_to_tensor(g).numpy() for g in grads], state, recomputed

    plain, remat = step(False), step(True)
    assert (plain[3], remat[3]) == (0, 3 + 2)  # 3 EfficientNet stages, 2 BERT layers
    assert abs(plain[0] - remat[0]) <= TOL
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(plain[1], remat[1])) <= TOL
    moved = [i for i, (a, b) in enumerate(zip(start, plain[2])) if not np.array_equal(a, b)]
    assert moved, "the step should move batch-norm statistics and seed states"
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(plain[2], remat[2])) <= TOL


def _embeddings(n: int, d: int, seed: int):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype("float32")
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_chunked_sigmoid_equals_gathered_on_four_replicas():
    """cpu:4: the loss summed over replicas and every gradient (images, texts,
    temperature, bias) equal the all-gather implementation's."""
    strategy = _strategy("cpu:4")
    img, txt = _embeddings(16, 8, 1), _embeddings(16, 8, 2)
    img[3] = txt[3]  # one confident positive
    ds = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices((img, txt)).batch(16))
    inputs = next(iter(ds))

    def run(loss_fn):
        @tf.function
        def go(x):
            def step(x):
                i, t = x
                temperature, bias = tf.constant(0.3), tf.constant(-2.0)
                with tf.GradientTape() as tape:
                    tape.watch([i, t, temperature, bias])
                    loss = loss_fn(i, t, temperature, bias)
                return (loss, *tape.gradient(loss, [i, t, temperature, bias]))
            out = strategy.run(step, args=(x,))
            loss, d_i, d_t, d_temp, d_bias = out
            total = lambda v: strategy.reduce("SUM", v, axis=None)  # noqa: E731
            rows = lambda v: tf.concat(strategy.experimental_local_results(v), 0)  # noqa: E731
            return total(loss), rows(d_i), rows(d_t), total(d_temp), total(d_bias)
        return [v.numpy() for v in go(inputs)]

    gathered, chunked = run(losses.sigmoid_loss), run(losses.chunked_sigmoid_loss)
    assert np.abs(gathered[2]).max() > 1e-3  # texts get gradients from other replicas' images
    for want, got in zip(gathered, chunked):
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=1e-5)


def test_micro_batch_size_must_divide_the_batch():
    with pytest.raises(ConfigError, match="training.micro_batch_size: 5 must divide.*use 4 or 8"):
        TrainingConfig(global_batch_size=16, micro_batch_size=5).validate()
    TrainingConfig(global_batch_size=16, micro_batch_size=0).validate()  # 0 = off
    with pytest.raises(ValueError, match="micro_batch_size=3 must divide the per-replica "
                                         "batch of 4"):
        grad_cache.micro_batch_count(4, 3)


def test_sigmoid_chunked_needs_the_sigmoid_loss():
    with pytest.raises(ConfigError, match="training.sigmoid_chunked.*model.loss is 'softmax'"):
        ExperimentConfig(model=get_preset("tiny"),
                         training=TrainingConfig(sigmoid_chunked=True)).validate()
    ExperimentConfig(model=get_preset("tiny", loss="sigmoid"),
                     training=TrainingConfig(sigmoid_chunked=True)).validate()


def test_per_replica_batch_is_checked_before_writing(tmp_path):
    from malign.training.run_plan import prepare_run

    exp = ExperimentConfig(model=get_preset("tiny"), training=TrainingConfig(
        strategy="cpu:4", global_batch_size=8, micro_batch_size=4, steps=2))
    with pytest.raises(ConfigError, match="micro_batch_size=4 must divide the per-replica "
                                          "batch.*2 each"):
        prepare_run(exp, tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["default", "cpu:4"])
def test_micro_batches_with_chunked_sigmoid_loss(spec):
    """The sigmoid loss (chunked) with micro-batches equals the plain gathered step."""
    keras.utils.set_random_seed(9)
    strategy = _strategy(spec)
    plain = _model(strategy, loss="sigmoid", freeze_batch_norm=True)
    init, init_flat = plain.get_weights(), flat_weights(plain)
    batch = make_batch(GLOBAL_BATCH, seed=10)
    _, want = _fit_one_step(strategy, plain, batch)
    cached = _model(strategy, init, micro=2, loss="sigmoid", freeze_batch_norm=True)
    cached.configure_steps(micro_batch_size=2, sigmoid_chunked=True)
    _, got = _fit_one_step(strategy, cached, batch)
    assert _worst(_implied_gradients(init_flat, want), _implied_gradients(init_flat, got)) \
        <= TOL


@pytest.mark.slow
def test_distiller_micro_batches_equal_the_plain_step():
    """The Distiller (cached teacher embeddings of another width, so the loss pass also
    trains the linear maps) with micro-batches equals its plain step."""
    from malign.config import DistillationConfig
    from malign.training.distillation import Distiller

    strategy = _strategy("default")
    student = get_preset("tiny", freeze_batch_norm=True)
    config = DistillationConfig(teacher="t.keras", image_alignment_weight=0.5,
                                text_alignment_weight=0.5, distill_temperature=2.0)
    batch = make_batch(GLOBAL_BATCH, seed=11)
    batch["teacher_image_embeddings"] = _embeddings(GLOBAL_BATCH, 48, 12)
    batch["teacher_text_embeddings"] = _embeddings(GLOBAL_BATCH, 48, 13)
    weights, init = [], None
    for micro in (None, 4):
        keras.utils.set_random_seed(14)
        with strategy.scope():
            d = Distiller(student, None, config, teacher_embedding_dim=48,
                          teacher_temperature=0.5)
            d.configure_steps(micro_batch_size=micro)
            d.compile(optimizer=keras.optimizers.SGD(LR))
        if init is None:
            init = d.get_weights()
        d.set_weights(init)
        d.fit(_dataset(strategy, batch), epochs=1, steps_per_epoch=1, verbose=0,
              shuffle=False)
        weights.append(d.get_weights())
    assert d.image_projection is not None

    def worst(a, b):
        return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))

    assert worst(init, weights[0]) > 1e-3
    assert worst(weights[0], weights[1]) <= TOL


@pytest.mark.slow
def test_train_command_with_every_large_batch_tool(tmp_path):
    """``malign train`` in its own process with micro-batches, recomputation and the chunked
    sigmoid loss on two replicas: it trains, saves, and records the settings."""
    import json
    import os
    import subprocess
    import sys

    workdir = tmp_path / "run"
    settings = ["training.global_batch_size=8", "training.steps=2", "training.warmup_steps=1",
                "training.strategy=cpu:2", "training.micro_batch_size=2", "training.remat=true",
                "model.loss=sigmoid", "training.sigmoid_chunked=true"]
    args = ["train", "--preset", "tiny", "--workdir", str(workdir)]
    for setting in settings:
        args += ["--set", setting]
    proc = subprocess.run([sys.executable, "-m", "malign.cli", *args], capture_output=True,
                          text=True, timeout=600, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "step 2/2  loss" in proc.stdout and "nan" not in proc.stdout.lower()
    assert (workdir / "model.keras").is_file()
    training = json.loads((workdir / "config.json").read_text())["training"]
    assert (training["micro_batch_size"], training["remat"], training["sigmoid_chunked"]) == (
        2, True, True)

