"""Distributed numerics: N replicas (or 2 workers) equal one device on the global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from distributed_helpers import flat_weights, make_batch

import malign
from malign import distributed

GLOBAL_BATCH = 8
LR = 0.5
HERE = Path(__file__).resolve().parent


def _build(strategy, init_weights):
    with strategy.scope():
        model = malign.AlignModel.from_preset("tiny")
        model.compile(optimizer=keras.optimizers.SGD(LR))
    model.set_weights(init_weights)
    return model


def _gradients(strategy, model, batch):
    """Summed replica gradients of the loss that fit differentiates, and the loss."""
    dist = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices(batch).batch(GLOBAL_BATCH))
    inputs = next(iter(dist))

    @tf.function
    def run(x):
        def step(x):
            with tf.GradientTape() as tape:
                loss = model.compute_loss(x, y_pred=model(x, training=True))
            grads = tape.gradient(loss, model.trainable_variables)
            return [tf.convert_to_tensor(g) for g in grads], loss

        grads, loss = strategy.run(step, args=(x,))
        reduce = lambda t: strategy.reduce(tf.distribute.ReduceOp.SUM, t, axis=None)  # noqa: E731
        return [reduce(g) for g in grads], reduce(loss)

    grads, loss = run(inputs)
    return [g.numpy() for g in grads], float(loss)


def _fit_one_step(strategy, model, batch):
    dist = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices(batch).batch(GLOBAL_BATCH).repeat())
    history = model.fit(dist, epochs=1, steps_per_epoch=1, verbose=0)
    return history.history["loss"][0], flat_weights(model)


@pytest.fixture(scope="module")
def reference():
    """Single device on the global batch: initial weights, gradients, loss, stepped weights."""
    keras.utils.set_random_seed(1)
    init = malign.AlignModel.from_preset("tiny").get_weights()
    batch = make_batch(GLOBAL_BATCH)
    strategy = distributed.get_strategy("default")
    grads, loss = _gradients(strategy, _build(strategy, init), batch)
    fit_loss, weights = _fit_one_step(strategy, _build(strategy, init), batch)
    return dict(init=init, batch=batch, grads=grads, loss=loss, fit_loss=fit_loss,
                weights=weights)


def _assert_weights_equal(got: dict, want: dict):
    assert set(got) == set(want)
    worst = max(float(np.max(np.abs(got[k] - want[k]))) for k in want)
    assert worst <= 1e-5, f"max abs weight difference {worst}"


def test_four_replicas_equal_single_device(reference):
    # One device set per process: TensorFlow's collective group keys clash when
    # MirroredStrategies over different device sets run collectives in one process.
    strategy = distributed.get_strategy("cpu:4")
    assert strategy.num_replicas_in_sync == 4
    grads, loss = _gradients(strategy, _build(strategy, reference["init"]), reference["batch"])
    assert abs(loss - reference["loss"]) <= 1e-5
    for got, want in zip(grads, reference["grads"]):
        np.testing.assert_allclose(got, want, atol=1e-5)
    # The step must move the weights, or the comparison below proves nothing.
    moved = max(float(np.max(np.abs(a - b))) for a, b in
                zip(reference["init"], reference["weights"].values()))
    assert moved > 1e-3
    fit_loss, weights = _fit_one_step(strategy, _build(strategy, reference["init"]),
                                      reference["batch"])
    assert abs(fit_loss - reference["fit_loss"]) <= 1e-5
    _assert_weights_equal(weights, reference["weights"])


@pytest.mark.parametrize("name", ["lamb", "adamw"])
def test_four_replicas_equal_single_device_with_malign_optimizers(reference, name):
    """malign's optimizers on cpu:4 equal one device: the fused update of the token
    embedding, the weight decay with one learning rate a step, and (AdamW) the
    ResourceApplyAdam kernel of the other variables, each run per replica device.

    Run in this order in one process, AdamW's case also guards a fault: the fused program
    was one module-level function, and after LAMB's cpu:4 run the next optimizer's call of
    it failed ("a function referencing variables which have been deleted")."""
    from malign.config import TrainingConfig
    from malign.training import make_optimizer

    cfg = TrainingConfig(optimizer=name, steps=10, warmup_steps=1, learning_rate=1e-2,
                         weight_decay=0.1)
    weights = {}
    for spec in ("default", "cpu:4"):
        strategy = distributed.get_strategy("cpu:4") if spec == "cpu:4" else distributed.get_strategy(spec)
        with strategy.scope():
            model = malign.AlignModel.from_preset("tiny")
            model.compile(optimizer=make_optimizer(cfg, fused_min_size=10_000))
        model.set_weights(reference["init"])
        embedding = [v for v in model.trainable_variables if v.path.endswith("token_embedding/embeddings")]
        assert len(embedding) == 1 and model.optimizer._fuses(embedding[0])
        kernel = model.optimizer._applies_kernel(tf.zeros([1]), model.trainable_variables[0])
        assert kernel == (name == "adamw")
        _, weights[spec] = _fit_one_step(strategy, model, reference["batch"])
    moved = max(float(np.max(np.abs(a - b))) for a, b in
                zip(reference["init"], weights["default"].values()))
    assert moved > 1e-3
    _assert_weights_equal(weights["cpu:4"], weights["default"])


def test_without_loss_scaling_the_step_is_n_times_too_large(reference, monkeypatch):
    """Guards the one place of loss scaling: removing it breaks equivalence."""
    monkeypatch.setattr(malign.models.align_model.distributed, "scale_loss_for_replicas",
                        lambda loss: loss)
    strategy = distributed.get_strategy("cpu:4")
    grads, _ = _gradients(strategy, _build(strategy, reference["init"]), reference["batch"])
    ratio = np.linalg.norm(grads[-1]) / np.linalg.norm(reference["grads"][-1])
    assert ratio == pytest.approx(4.0, rel=1e-4)


def test_one_strategy_per_spec_per_process():
    """A second MirroredStrategy over the same devices clashed with the first's collective
    instance keys once both had run: get_strategy hands out one object per spec."""
    assert distributed.get_strategy("cpu:4") is distributed.get_strategy(" CPU:4 ")


def test_batch_not_divisible_names_field():
    strategy = distributed.get_strategy("cpu:4")
    with pytest.raises(ValueError, match="global_batch_size=6.*4 replicas"):
        distributed.check_global_batch(6, strategy)


def test_unknown_strategy_spec():
    with pytest.raises(ValueError, match="unknown strategy spec 'gpu-cluster'"):
        distributed.get_strategy("gpu-cluster")


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_workers_equal_single_device(reference, tmp_path):
    """Two processes with MultiWorkerMirroredStrategy on loopback, each with half a batch."""
    init_path = tmp_path / "init.weights.h5"
    model = malign.AlignModel.from_preset("tiny")
    model.set_weights(reference["init"])
    model.save_weights(init_path)
    workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    procs = []
    for index in range(2):
        env = dict(os.environ)
        env["TF_CONFIG"] = json.dumps({"cluster": {"worker": workers},
                                       "task": {"type": "worker", "index": index}})
        env["TF_CPP_MIN_LOG_LEVEL"] = "2"
        out = tmp_path / f"worker{index}.npz"
        procs.append((out, subprocess.Popen(
            [sys.executable, str(HERE / "distributed_worker.py"), str(init_path), str(out),
             str(GLOBAL_BATCH)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
    for _out, proc in procs:
        try:
            log, _ = proc.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            for _, p in procs:
                p.kill()
            pytest.fail("multi-worker run timed out")
        assert proc.returncode == 0, log[-3000:]
    for out, _ in procs:
        result = dict(np.load(out))
        loss = float(result.pop("__loss__"))
        result.pop("__task__")
        assert abs(loss - reference["fit_loss"]) <= 1e-5
        _assert_weights_equal(result, reference["weights"])


def test_strategies_of_different_sizes_in_one_process():
    """cpu:2 then cpu:4 in one process: both all-reduce (they used to share group key 1
    and the second failed, "joining a group with size4, but that group has size 2")."""
    code = textwrap.dedent("""
        import tensorflow as tf
        from malign import distributed

        distributed.configure_logical_cpus(4)

        def total(spec):
            strategy = distributed.get_strategy(spec)

            @tf.function
            def step():
                ctx = tf.distribute.get_replica_context()
                return ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.ones([3]))

            out = strategy.run(step)
            return float(strategy.experimental_local_results(out)[0][0])

        print("TOTALS", total("cpu:2"), total("cpu:4"))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, cwd=Path(__file__).parents[1],
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "TOTALS 2.0 4.0" in proc.stdout, proc.stdout
