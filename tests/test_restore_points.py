"""Restore points in-process: atomic save, every kill point of one save, damaged ones set
aside, leftovers cleaned, nothing non-finite saved, the optimizer's skip of NaN updates."""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from malign import distributed
from malign.config import ExperimentConfig, TrainingConfig
from malign.training import fault_injection, restore_points
from malign.training.checkpoints import StepCheckpoint, holds_progress
from malign.training.optimizers import make_optimizer


class Killed(Exception):
    """Stands for SIGKILL in-process."""


def _model(optimizer=None) -> keras.Model:
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2),
                              keras.layers.BatchNormalization()])
    model.compile(optimizer=optimizer or keras.optimizers.Adam(0.1), loss="mse")
    model.fit(np.ones((4, 3)), np.ones((4, 2)), epochs=1, verbose=0)  # builds the optimizer
    return model


def _snapshot(model) -> list[np.ndarray]:
    return [np.array(v.numpy()) for v in [*model.weights, *model.optimizer.variables]]


def test_save_scan_load_and_rotation(tmp_path):
    model = _model()
    root = tmp_path / "restore"
    for step in (10, 20, 30):
        model.optimizer.iterations.assign(step)
        restore_points.save_restore_point(model, root, step, {"config_sha256": "abc"}, keep=2)
    assert sorted(p.name for p in root.iterdir()) == ["step_00000020", "step_00000030"]
    found = restore_points.scan(tmp_path, "abc")
    assert found.latest.step == 30 and not found.damaged and not found.leftovers
    state = json.loads((root / "step_00000030" / "state.json").read_text())
    weights = root / "step_00000030" / restore_points.WEIGHTS
    assert state["files"][restore_points.WEIGHTS]["bytes"] == weights.stat().st_size
    saved = _snapshot(model)
    fresh = _model()
    assert not all(np.array_equal(a, b) for a, b in zip(saved, _snapshot(fresh)))
    restore_points.load_restore_point(fresh, found.latest)
    for a, b in zip(saved, _snapshot(fresh)):  # weights, moments and the step
        np.testing.assert_array_equal(a, b)
    assert holds_progress(tmp_path)
    with pytest.raises(restore_points.RestorePointError, match="another config.*--workdir"):
        restore_points.scan(tmp_path, "other")


@pytest.mark.parametrize("point", [p for p in fault_injection.POINTS
                                   if p.startswith("restore.")])
def test_a_kill_at_any_point_of_a_save_leaves_a_complete_restore_point(
        tmp_path, monkeypatch, point):
    """Killed at each point of the second save: the first (or the second, once renamed) is
    found complete, nothing unreadable is under a step_* name, tidy removes the rest."""
    model = _model()
    root = tmp_path / "restore"
    model.optimizer.iterations.assign(10)
    restore_points.save_restore_point(model, root, 10, {}, keep=1)
    fault_injection.reset()
    monkeypatch.setenv(fault_injection.ENV, f"{point}@1")

    def kill():
        raise Killed(point)
    monkeypatch.setattr(fault_injection, "kill", kill)
    model.optimizer.iterations.assign(20)
    with pytest.raises(Killed):
        restore_points.save_restore_point(model, root, 20, {}, keep=1)
    monkeypatch.delenv(fault_injection.ENV)
    renamed = fault_injection.POINTS.index(point) > fault_injection.POINTS.index("restore.rename")
    found = restore_points.scan(tmp_path, None)
    assert found.latest.step == (20 if renamed else 10), point
    assert not found.damaged
    for path in root.glob("step_*"):  # every restore point under its name verifies
        restore_points.read_restore_point(path)
    restore_points.tidy(found)
    assert not list(root.glob(".tmp-*"))
    assert restore_points.scan(tmp_path, None).latest.step == found.latest.step


def test_checkpoint_kill_points_leave_no_partial_keras_file(tmp_path, monkeypatch):
    model = _model()
    directory = tmp_path / "checkpoints"
    callback = StepCheckpoint(directory, keep=1, every_steps=10)
    callback.set_model(model)
    callback.save(10)

    def kill():
        raise Killed()
    monkeypatch.setattr(fault_injection, "kill", kill)
    for point in ("checkpoint.write", "checkpoint.rename", "checkpoint.rotate"):
        fault_injection.reset()
        monkeypatch.setenv(fault_injection.ENV, f"{point}@1")
        with pytest.raises(Killed):
            callback.save(20)
        for path in directory.glob("step_*.keras"):  # complete zip files only
            keras.saving.load_model(path, compile=False)
        if point == "checkpoint.write":
            # Raised in-process, the writer removes its temporary file itself; a SIGKILL
            # (tests/test_kill_resume.py) leaves it: plant it as the kill would.
            leftover = directory / f".tmp-{os.getpid()}-step_00000020.keras"
            assert not leftover.exists()
            leftover.write_bytes(b"PK\x03\x04 half a zip")
            found = restore_points.scan(tmp_path, None)
            assert [p.name for p in found.leftovers] == [
                f".tmp-{os.getpid()}-step_00000020.keras"]
            restore_points.tidy(found)
    monkeypatch.delenv(fault_injection.ENV)
    assert not restore_points.scan(tmp_path, None).leftovers
    assert sorted(p.name for p in directory.iterdir()) == ["step_00000010.keras",
                                                           "step_00000020.keras"]


def test_damaged_newest_is_set_aside_with_a_message(tmp_path, capsys):
    model = _model()
    root = tmp_path / "restore"
    for step in (10, 20):
        model.optimizer.iterations.assign(step)
        restore_points.save_restore_point(model, root, step, {"config_sha256": "c"})
    weights = root / "step_00000020" / restore_points.WEIGHTS
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    (root / "step_00000030").mkdir()  # a restore point of a hand copy without state.json
    found = restore_points.scan(tmp_path, "c")
    assert found.latest.step == 10
    assert [p.name for p, _ in found.damaged] == ["step_00000030", "step_00000020"]
    assert "SHA-256" in found.damaged[1][1] and "state.json cannot be read" in found.damaged[0][1]
    messages = restore_points.tidy(found)
    assert len(messages) == 2 and "moved to" in capsys.readouterr().out
    assert sorted(p.name.split("-")[0] for p in (root / "damaged").iterdir()) == [
        "step_00000020", "step_00000030"]
    assert [p.name for p in root.glob("step_*")] == ["step_00000010"]


def test_nothing_nonfinite_is_saved(tmp_path):
    model = _model()
    model.layers[0].kernel.assign(np.full((3, 2), np.nan, np.float32))
    with pytest.raises(restore_points.NonFiniteError, match="step 5: .*NaN or Inf"):
        restore_points.save_restore_point(model, tmp_path / "restore", 5, {})
    assert not (tmp_path / "restore").exists() or not list((tmp_path / "restore").iterdir())
    callback = StepCheckpoint(tmp_path / "ck")
    callback.set_model(model)
    assert callback.save(5) is None and not list((tmp_path / "ck").glob("*"))


def test_config_hash_ignores_steps_and_nonfinite_only():
    base = ExperimentConfig(training=TrainingConfig(steps=20))
    same = ExperimentConfig(training=TrainingConfig(steps=40, nonfinite="skip"))
    other = ExperimentConfig(training=TrainingConfig(steps=20, learning_rate=0.5))
    assert restore_points.config_sha256(base) == restore_points.config_sha256(same)
    assert restore_points.config_sha256(base) != restore_points.config_sha256(other)
    # A field a newer malign adds (at its default) leaves the hash as it was: a run started
    # before an upgrade still resumes. Changing it from its default is a change.
    assert restore_points._without_defaults(
        {"training": {"lr": 1, "new_field": None}}, {"training": {"lr": 2, "new_field": None}}
    ) == {"training": {"lr": 1}}
    remat = ExperimentConfig(training=TrainingConfig(steps=20, remat=True))
    assert restore_points.config_sha256(base) != restore_points.config_sha256(remat)


def test_nonfinite_setting_is_validated():
    from malign.config import ConfigError

    with pytest.raises(ConfigError, match="training.nonfinite: must be 'stop' or 'skip'"):
        TrainingConfig(nonfinite="ignore").validate()


# -- the optimizer skips non-finite updates ----------------------------------------------------

def _optimizer_step(strategy, grads_per_replica):
    """One optimizer update on a 2-variable problem; returns (weights, iterations, skipped)."""
    with strategy.scope():
        w = keras.Variable(np.ones((2, 2), np.float32), name="w")
        b = keras.Variable(np.zeros((2,), np.float32), name="b")
        optimizer = make_optimizer(TrainingConfig(optimizer="adamw", steps=10, warmup_steps=0,
                                                  learning_rate=0.1), fused_min_size=0)
        optimizer.build([w, b])

    kernel_grads, bias_grads = (tf.constant(g) for g in grads_per_replica)

    @tf.function
    def step():
        def replica_fn():
            index = distributed.replica_id()
            optimizer.apply([tf.gather(kernel_grads, index), tf.gather(bias_grads, index)],
                            [w, b])
        strategy.run(replica_fn)
    step()
    return (np.array(w.numpy()), int(optimizer.iterations.numpy()),
            int(optimizer.nonfinite_updates.numpy()))


@pytest.mark.parametrize("spec", ["default", "cpu:2"])
def test_optimizer_skips_an_update_with_nan_on_one_replica(spec):
    strategy = distributed.get_strategy(spec)
    n = strategy.num_replicas_in_sync
    finite = (np.ones((n, 2, 2), np.float32), np.ones((n, 2), np.float32))
    w, iterations, skipped = _optimizer_step(strategy, finite)
    assert iterations == 1 and skipped == 0 and not np.array_equal(w, np.ones((2, 2)))
    nan_kernel = finite[0].copy()
    nan_kernel[n - 1, 0, 0] = np.nan  # only the last replica's gradient
    w, iterations, skipped = _optimizer_step(strategy, (nan_kernel, finite[1]))
    assert iterations == 1 and skipped == 1
    np.testing.assert_array_equal(w, np.ones((2, 2)))  # no weight decay, no moment, no step


def test_all_replicas_finite_agrees_across_replicas():
    strategy = distributed.get_strategy("cpu:2")

    @tf.function
    def check(values):
        return strategy.run(lambda: distributed.all_replicas_finite(
            [tf.gather(values, distributed.replica_id())]))
    clean = strategy.experimental_local_results(check(tf.constant([1.0, 2.0])))
    dirty = strategy.experimental_local_results(check(tf.constant([1.0, np.inf])))
    assert [bool(x) for x in clean] == [True, True]
    assert [bool(x) for x in dirty] == [False, False]
