"""Progress lines and TensorBoard scalars keyed on the global step, driven with a fake clock."""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pytest
import tensorflow as tf
from tensorboard_events import read_scalars

from malign.training import progress as training_progress
from malign.training.progress import ProgressLog, ScalarLog, format_duration, logged_steps


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def _fake_model(start_step: int):
    iterations = tf.Variable(start_step, dtype=tf.int64)
    optimizer = SimpleNamespace(iterations=iterations, learning_rate=None)
    model = SimpleNamespace(optimizer=optimizer, temperature=None)
    return model


def _drive(callbacks, monkeypatch, *, start=0, total=100, interval=25, first=30.0,
           step_time=0.5, checkpoint_time=2.0, loss=lambda step: float(step)):
    """Runs callbacks through a fake fit: `interval` steps per Keras epoch, the first step
    taking `first` seconds, later ones `step_time`, and `checkpoint_time` per epoch end.
    The loss of global step k is loss(k); logs carry Keras' running mean per epoch."""
    clock = _Clock()
    monkeypatch.setattr(training_progress, "time", SimpleNamespace(perf_counter=clock))
    model = _fake_model(start)
    for cb in callbacks:
        cb.set_model(model)
        cb.set_params({"verbose": 0, "epochs": total // interval, "steps": interval})
        cb.on_train_begin()
    step = start
    first_step = True
    for epoch in range(start // interval, total // interval):
        for cb in callbacks:
            cb.on_epoch_begin(epoch)
        losses = []
        for batch in range(interval):
            clock.now += first if first_step else step_time
            first_step = False
            step += 1
            model.optimizer.iterations.assign(step)
            model.temperature = np.float32(1.0 / step)
            model.optimizer.learning_rate = np.float32(1e-3 * step / total)
            losses.append(loss(step))
            for cb in callbacks:
                cb.on_train_batch_end(batch, {"loss": np.float32(np.mean(losses))})
        for cb in callbacks:
            cb.on_epoch_end(epoch)
        clock.now += checkpoint_time
    for cb in callbacks:
        cb.on_train_end()


def test_format_duration_and_logged_steps():
    assert [format_duration(s) for s in (0, 59.4, 60, 3599, 3600, 90061)] == [
        "0 s", "59 s", "1m 00s", "59m 59s", "1h 00m", "25h 01m"]
    assert logged_steps(0, 12, 5) == [5, 10, 12]
    assert logged_steps(0, 12, 4) == [4, 8, 12]
    assert logged_steps(0, 12, 20) == [12]
    assert logged_steps(40, 100, 15) == [45, 60, 75, 90, 100]
    assert logged_steps(12, 12, 5) == []


def test_progress_lines_show_tracing_then_rate_and_an_eta_without_the_first_step(monkeypatch):
    out = io.StringIO()
    cb = ProgressLog(total_steps=100, every=10, stream=out)
    _drive([cb], monkeypatch)
    lines = out.getvalue().splitlines()
    assert lines[0] == ("malign train: tracing the train step and running step 1/100 ... 30.0 s")
    steps = [int(line.split()[3].split("/")[0]) for line in lines[1:]]
    assert steps == list(range(10, 101, 10))
    # Step 10: steps 2..10 took 9 x 0.5 s -> 2 steps/s; 90 steps left at 0.5 s -> 45 s.
    assert lines[1] == ("malign train: step 10/100  loss 5.5000  temperature 0.1000  "
                        "lr 1.0e-04  2.00 steps/s  ETA 45 s")
    # Step 30 crosses the checkpoint at step 25 (2 s): 10 steps in 7 s; the ETA counts the
    # steady time since step 1 (29 steps in 16.5 s) for the 70 steps left.
    assert "loss 25.5000" in lines[3] and "1.43 steps/s" in lines[3]
    assert f"ETA {format_duration(70 * 16.5 / 29)}" in lines[3]
    assert "ETA" not in lines[-1]  # the last step


def test_progress_line_with_keras_output_on_is_a_line_of_its_own(monkeypatch):
    out = io.StringIO()
    cb = ProgressLog(total_steps=10, every=5, stream=out)
    clock = _Clock()
    monkeypatch.setattr(training_progress, "time", SimpleNamespace(perf_counter=clock))
    cb.set_model(_fake_model(0))
    cb.set_params({"verbose": 2})
    cb.on_train_begin()
    print("Epoch 1/2", file=out)  # what Keras prints before the first batch
    clock.now += 3
    cb.on_epoch_begin(0)
    cb.model.optimizer.iterations.assign(1)
    cb.on_train_batch_end(0, {"loss": 1.0})
    assert out.getvalue().splitlines() == [
        "malign train: tracing the train step and running step 1/10 ...",
        "Epoch 1/2",
        "malign train: traced the train step and ran step 1 in 3.0 s",
    ]


@pytest.mark.parametrize("start, total, interval, every", [
    (0, 100, 25, 10), (0, 100, 25, 20), (0, 12, 4, 5), (0, 12, 6, 3), (40, 100, 20, 15),
])
def test_scalars_reach_tensorboard_at_every_global_interval(tmp_path, monkeypatch, start, total,
                                                            interval, every):
    cb = ScalarLog(tmp_path, total_steps=total, every=every)
    _drive([cb], monkeypatch, start=start, total=total, interval=interval,
           loss=lambda step: float(step) ** 0.5)
    tags = read_scalars(tmp_path)
    want = logged_steps(start, total, every)
    for tag in ("loss", "temperature", "learning_rate", "steps_per_second"):
        assert sorted(tags[tag]) == want, tag
    previous = start
    for step in want:
        mean = np.mean([k ** 0.5 for k in range(previous + 1, step + 1)])
        assert tags["loss"][step] == pytest.approx(mean, rel=1e-5)
        assert tags["temperature"][step] == pytest.approx(1.0 / step, rel=1e-6)
        assert tags["learning_rate"][step] == pytest.approx(1e-3 * step / total, rel=1e-6)
        previous = step
