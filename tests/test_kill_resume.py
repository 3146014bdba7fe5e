"""The real `malign train` killed, preempted and diverging: what survives.

A small deterministic run (tiny preset, random data, 60 steps, a restore point every 10)
is killed with SIGKILL inside the writes of a save (``malign.training.fault_injection``)
and at random moments, then re-run until it completes. After every kill: each
``step_*.keras`` and restore point under its name is complete, and the re-run resumes
from the newest complete restore point; at the end no temporary file is left and the
weights (and optimizer state) equal the uninterrupted run's exactly. SIGTERM (one worker,
and two workers on loopback) saves at a step boundary and exits 0; a diverging run stops
naming the step and leaves only finite restore points; ``training.nonfinite=skip``
counts skipped updates.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from malign.training import fault_injection, restore_points

STEPS = 60
RUN = ["--preset", "tiny", "--set", f"training.steps={STEPS}",
       "--set", "training.steps_per_checkpoint=10", "--set", "training.global_batch_size=8",
       "--verbose", "0"]


def _start(workdir: Path, log: Path, env: dict | None = None, args=()) -> subprocess.Popen:
    full_env = {k: v for k, v in os.environ.items()
                if k not in (fault_injection.ENV, fault_injection.NAN_ENV, "TF_CONFIG")}
    full_env.update(TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "malign.cli", "train", *RUN, *args,
                                 "--workdir", str(workdir)], env=full_env, stdout=out,
                                stderr=subprocess.STDOUT)


def _run(workdir: Path, log: Path, env: dict | None = None, args=(), timeout=400
         ) -> tuple[int, str]:
    proc = _start(workdir, log, env, args)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"malign train timed out; its output:\n{log.read_text()[-3000:]}")
    return proc.returncode, log.read_text()


def _h5_arrays(path: Path) -> dict[str, np.ndarray]:
    arrays = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: arrays.__setitem__(name, np.array(obj))
                     if isinstance(obj, h5py.Dataset) else None)
    return arrays


def _final_state(workdir: Path) -> dict[str, np.ndarray]:
    """Model and optimizer variables of the last restore point (step 60)."""
    path = workdir / "restore" / f"step_{STEPS:08d}" / restore_points.WEIGHTS
    return _h5_arrays(path)


def _newest_complete_step(workdir: Path) -> int:
    """Checks that everything under a checkpoint or restore-point name is complete, and
    returns the newest restore point's step (0 if none)."""
    for path in (workdir / "checkpoints").glob("step_*.keras"):
        with zipfile.ZipFile(path) as archive:
            assert archive.testzip() is None, path
    if (workdir / "model.keras").exists():
        with zipfile.ZipFile(workdir / "model.keras") as archive:
            assert archive.testzip() is None
    steps = [0]
    for path in (workdir / "restore").glob("step_*"):
        steps.append(restore_points.read_restore_point(path).step)  # raises if incomplete
    return max(steps)


def _temporary_files(workdir: Path) -> list[Path]:
    return [p for p in workdir.rglob("*") if p.name.startswith(".tmp-")]


def _assert_same_state(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    different = [k for k in want if not np.array_equal(got[k], want[k])]
    assert not different, f"{len(different)} variables differ, e.g. {different[:3]}"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[str, np.ndarray]:
    """The final state of the run never interrupted."""
    workdir = tmp_path_factory.mktemp("uninterrupted") / "run"
    code, out = _run(workdir, workdir.parent / "log.txt", env={})
    assert code == 0, out[-3000:]
    assert (workdir / "model.keras").is_file()
    return _final_state(workdir)


def _resume_chain(workdir: Path, kills: list[str], uninterrupted: dict) -> list[int]:
    """Runs, killing at each fault point in turn, then to completion; returns resume steps."""
    resumed = []
    expected = 0
    for i, point in enumerate([*kills, None]):
        log = workdir.parent / f"log{i}.txt"
        code, out = _run(workdir, log, env={fault_injection.ENV: point} if point else {})
        if expected:
            assert f"resuming from step {expected} " in out, out[-3000:]
            resumed.append(expected)
        if point is None:
            assert code == 0, out[-3000:]
            break
        assert code == -signal.SIGKILL, f"{point}: exit {code}\n{out[-3000:]}"
        assert f"SIGKILL at {point}" in out
        expected = _newest_complete_step(workdir)
    assert not _temporary_files(workdir), _temporary_files(workdir)
    _newest_complete_step(workdir)
    _assert_same_state(_final_state(workdir), uninterrupted)
    return resumed


def test_kills_inside_a_save_resume_to_the_uninterrupted_state(tmp_path, uninterrupted):
    """Inside the weights write of the 2nd save, inside the state.json write of the 1st save
    after resuming, before the rename of the 2nd: resumes at 10, 10, 20; same final state."""
    resumed = _resume_chain(tmp_path / "run",
                            ["restore.weights@2", "restore.state@1", "restore.rename@2"],
                            uninterrupted)
    assert resumed == [10, 10, 20]


@pytest.mark.slow
def test_kills_at_every_write_of_a_save(tmp_path, uninterrupted):
    """Every fault point of one save (restore point and .keras checkpoint), in one chain of
    re-runs; it ends at the uninterrupted state."""
    _resume_chain(tmp_path / "points", [f"{p}@1" for p in fault_injection.POINTS],
                  uninterrupted)


@pytest.mark.slow
def test_kills_at_random_moments(tmp_path, uninterrupted):
    """>= 20 SIGKILLs at random moments of the training loop (and of the final model.keras
    write), each followed by a re-run; every run ends at the uninterrupted state."""
    rng = random.Random(12)
    kills, chain = 0, 0
    while kills < 20:
        chain += 1
        workdir = tmp_path / f"random{chain}"
        expected = 0
        for attempt in range(40):
            log = workdir.parent / f"random{chain}-{attempt}.txt"
            proc = _start(workdir, log, env={})
            delay = None
            deadline = time.time() + 400
            while proc.poll() is None and time.time() < deadline:
                # Kill at a random moment once the first (tracing) step is done.
                if delay is None and re.search(r"running step \d+/\d+ \.\.\. [\d.]+ s",
                                               log.read_text()):
                    delay = time.time() + rng.uniform(0.0, 8.0)
                if delay is not None and time.time() >= delay:
                    proc.send_signal(signal.SIGKILL)
                    break
                time.sleep(0.02)
            code = proc.wait(timeout=60)
            out = log.read_text()
            if expected:
                assert f"resuming from step {expected} " in out, out[-3000:]
            if code == 0:
                break
            assert code == -signal.SIGKILL, out[-3000:]
            kills += 1
            expected = _newest_complete_step(workdir)
        assert code == 0, "no completion after 40 attempts"
        assert not _temporary_files(workdir), _temporary_files(workdir)
        _assert_same_state(_final_state(workdir), uninterrupted)
    print(f"{kills} random kills over {chain} runs, all ending at the uninterrupted state")


def _wait_for(path_glob: tuple[Path, str], proc: subprocess.Popen, log: Path, timeout=400):
    directory, pattern = path_glob
    deadline = time.time() + timeout
    while time.time() < deadline:
        if list(directory.glob(pattern)):
            return
        if proc.poll() is not None:
            pytest.fail(f"exited early ({proc.returncode}):\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("no restore point in time")


def test_sigterm_saves_at_a_step_exits_0_and_resumes_exactly(tmp_path, uninterrupted):
    workdir = tmp_path / "run"
    log = tmp_path / "log.txt"
    proc = _start(workdir, log, env={})
    _wait_for((workdir / "restore", "step_00000010"), proc, log)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
    out = log.read_text()
    stopped = int(re.search(r"stopped by SIGTERM at step (\d+); restore point", out).group(1))
    assert 10 <= stopped < STEPS
    assert _newest_complete_step(workdir) == stopped
    assert not (workdir / "model.keras").exists()
    code, out = _run(workdir, tmp_path / "log2.txt", env={})
    assert code == 0, out[-3000:]
    assert f"resuming from step {stopped} " in out
    # Exactly the remaining steps: one progress line per 10 global steps, up to 60.
    logged = [int(s) for s in re.findall(r"step (\d+)/60  loss", out)]
    assert logged == list(range((stopped // 10 + 1) * 10, STEPS + 1, 10))
    _assert_same_state(_final_state(workdir), uninterrupted)
    assert (workdir / "model.keras").is_file() and not _temporary_files(workdir)


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _start_workers(tmp_path: Path, tag: str) -> list[tuple[subprocess.Popen, Path, Path]]:
    workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    started = []
    for index in range(2):
        tf_config = json.dumps({"cluster": {"worker": workers},
                                "task": {"type": "worker", "index": index}})
        workdir, log = tmp_path / f"worker{index}", tmp_path / f"{tag}{index}.txt"
        started.append((_start(workdir, log, env={"TF_CONFIG": tf_config},
                               args=("--set", "training.strategy=multiworker")), workdir, log))
    return started


def test_sigterm_to_one_of_two_workers_stops_both_at_the_same_step(tmp_path):
    """MultiWorkerMirroredStrategy on loopback, each worker with its own work directory;
    SIGTERM reaches worker 1 only: both save a restore point at the same step and exit 0,
    and both resume from it to the same final state."""
    started = _start_workers(tmp_path, "first")
    _wait_for((started[1][1] / "restore", "step_00000010"), started[1][0], started[1][2])
    started[1][0].send_signal(signal.SIGTERM)
    steps = []
    for proc, workdir, log in started:
        try:
            code = proc.wait(timeout=180)
        except subprocess.TimeoutExpired:
            for p, _, _ in started:
                p.kill()
            pytest.fail(f"a worker did not stop:\n{log.read_text()[-3000:]}")
        out = log.read_text()
        assert code == 0, out[-3000:]
        steps.append(int(re.search(r"stopped by SIGTERM at step (\d+)", out).group(1)))
        assert _newest_complete_step(workdir) == steps[-1]
    assert steps[0] == steps[1] and steps[0] < STEPS
    finals = []
    for proc, workdir, log in _start_workers(tmp_path, "second"):
        assert proc.wait(timeout=400) == 0, log.read_text()[-3000:]
        assert f"resuming from step {steps[0]} " in log.read_text()
        finals.append(_final_state(workdir))
    _assert_same_state(finals[0], finals[1])


def _all_finite(workdir: Path) -> list[int]:
    steps = []
    for path in sorted((workdir / "restore").glob("step_*")):
        point = restore_points.read_restore_point(path)
        for name, array in _h5_arrays(path / restore_points.WEIGHTS).items():
            if array.dtype.kind == "f":
                assert np.all(np.isfinite(array)), (path, name)
        steps.append(point.step)
    return steps


def test_diverging_run_stops_naming_the_step_and_keeps_finite_state(tmp_path):
    """Peak learning rate 10 (LAMB): the run diverges; it exits non-zero naming the step,
    and every restore point and checkpoint left is finite. Which sign comes first depends
    on the CPU's float kernels: the loss becoming NaN (checked every step), or an optimizer
    slot overflowing to Inf while the loss stays finite (checked before each save; seen on
    an AMD EPYC, where LAMB's velocity overflowed first)."""
    workdir = tmp_path / "run"
    code, out = _run(workdir, tmp_path / "log.txt", env={},
                     args=("--set", "training.learning_rate=10",
                           "--set", "training.steps_per_checkpoint=5"))
    assert code == 2, out[-3000:]
    match = re.search(r"error: step (\d+): (the loss is nan.*training.nonfinite=skip|"
                      r"\d+ variables hold NaN or Inf .*no restore point written)", out)
    assert match, out[-3000:]
    step = int(match.group(1))
    saved = _all_finite(workdir)
    assert saved and max(saved) < step and not (workdir / "model.keras").exists()


def test_skip_mode_counts_skipped_updates(tmp_path):
    """NaN gradients injected at steps 3 and 7 (finite forward passes): the updates are
    skipped and counted (progress line, TensorBoard, the optimizer's state, the end)."""
    workdir = tmp_path / "run"
    code, out = _run(workdir, tmp_path / "log.txt",
                     env={fault_injection.NAN_ENV: "3,7"},
                     args=("--set", "training.nonfinite=skip", "--set", "training.steps=20"))
    assert code == 0, out[-3000:]
    assert "step 3: the loss is finite; 1 update(s) with NaN/Inf gradients skipped" in out
    assert "step 10/20  loss" in out and "2 NaN/Inf updates skipped" in out
    assert "2 update(s) with NaN/Inf gradients were skipped (training.nonfinite=skip)" in out
    state = _h5_arrays(workdir / "restore" / "step_00000020" / restore_points.WEIGHTS)
    optimizer = {k: v for k, v in state.items() if k.startswith("optimizer/")}
    assert int(optimizer["optimizer/vars/0"]) == 20  # iterations: skipped steps count
    assert sorted(int(v) for v in optimizer.values() if v.dtype == np.int64) == [2, 20]
    assert _all_finite(workdir) == [10, 20]
    import tensorflow as tf

    values = {}
    for path in (workdir / "logs" / "train").glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.tag == "nonfinite_updates":
                    values[event.step] = float(tf.make_ndarray(value.tensor))
    assert values == {10: 2.0, 20: 2.0}
