"""One writer per work directory: the lock, its refusal message, stale locks, two `malign train`."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from malign import workdir_lock
from malign.workdir_lock import LOCK_NAME, WorkdirBusyError, lock_workdir

REPO = Path(__file__).resolve().parents[1]

# A process that holds the lock as malign does (flock on .lock, JSON record) until its stdin
# closes; no malign import, so it starts in milliseconds.
_HOLDER = r"""
import fcntl, json, os, socket, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                         "command": "malign train --workdir elsewhere",
                         "started": "2026-01-02T03:04:05+00:00"}).encode())
print("locked", flush=True)
sys.stdin.read()
"""


def _dead_pid() -> int:
    """The id of a process that has ended (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.fixture
def holder(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    process = subprocess.Popen([sys.executable, "-c", _HOLDER, str(workdir / LOCK_NAME)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "locked"
    yield workdir, process
    process.stdin.close()
    process.wait(timeout=10)


def test_a_held_lock_refuses_with_the_holder_named(holder):
    workdir, process = holder
    with pytest.raises(WorkdirBusyError) as caught:
        lock_workdir(workdir, "malign train")
    message = str(caught.value)
    assert f"pid {process.pid} on {socket.gethostname()}" in message
    assert "`malign train --workdir elsewhere`" in message
    assert "since 2026-01-02T03:04:05+00:00" in message
    assert str(workdir) in message and "another --workdir" in message
    assert caught.value.holder["pid"] == process.pid
    # The holder's record is untouched.
    assert json.loads((workdir / LOCK_NAME).read_text())["pid"] == process.pid


def test_the_lock_is_free_again_when_its_holder_ends(holder, capsys):
    workdir, process = holder
    process.stdin.close()
    process.wait(timeout=10)
    lock = lock_workdir(workdir, "malign train")
    try:
        # The holder ended without releasing: its record is a stale lock, taken over.
        assert lock.taken_over["pid"] == process.pid
        assert f"took over the lock of {workdir} left by pid {process.pid}" in \
            capsys.readouterr().err
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    finally:
        lock.release()


def test_a_stale_lock_of_a_dead_pid_is_taken_over(tmp_path, capsys):
    workdir = tmp_path / "run"
    workdir.mkdir()
    dead = _dead_pid()
    (workdir / LOCK_NAME).write_text(json.dumps({
        "pid": dead, "host": socket.gethostname(), "command": "malign distill",
        "started": "2026-01-01T00:00:00+00:00"}))
    lock = lock_workdir(workdir, "malign train")
    record = json.loads(lock.path.read_text())
    assert record["pid"] == os.getpid() and record["command"] == "malign train"
    assert lock.taken_over["pid"] == dead
    err = capsys.readouterr().err
    assert f"left by pid {dead}" in err and "`malign distill`" in err and "no longer running" in err
    lock.release()
    assert not lock.path.exists() and workdir.is_dir()  # the directory existed before


def test_release_removes_what_the_lock_created_and_nests_in_one_process(tmp_path):
    workdir = tmp_path / "new" / "run"
    outer = lock_workdir(workdir)
    inner = lock_workdir(workdir)  # e.g. train() called inside another run of this process
    assert inner is outer
    inner.release()
    assert (workdir / LOCK_NAME).exists()  # still held by the outer run
    outer.release()
    assert not workdir.exists()  # created by the lock and left empty: removed
    outer.release()  # a second release is a no-op


def test_without_flock_the_recorded_pid_decides(tmp_path, monkeypatch, holder):
    """On a file system without flock, a live pid of this host is honoured, a dead one not."""
    import fcntl

    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    workdir, process = holder
    with pytest.raises(WorkdirBusyError, match=f"pid {process.pid}"):
        lock_workdir(workdir)
    other = tmp_path / "other"
    other.mkdir()
    (other / LOCK_NAME).write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname()}))
    lock_workdir(other).release()
    (other / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "another-host"}))
    with pytest.raises(WorkdirBusyError, match="on another-host"):
        lock_workdir(other)
    assert not workdir_lock._HELD


def _train(workdir: Path, steps: int) -> list[str]:
    return [sys.executable, "-m", "malign.cli", "train", "--preset", "tiny",
            "--set", "training.global_batch_size=4", "--set", "training.warmup_steps=1",
            "--set", "training.steps_per_checkpoint=2", "--set", f"training.steps={steps}",
            "--workdir", str(workdir), "--verbose", "0"]


def test_a_second_malign_train_on_one_workdir_is_refused(tmp_path):
    """Two `malign train` on one work directory: the second stops at once, naming the first,
    which goes on training; a lock left by a killed run is taken over by the next one."""
    workdir = tmp_path / "run"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO))
    first = subprocess.Popen(_train(workdir, 100000), env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while not list((workdir / "checkpoints").glob("step_*.keras")):
            assert first.poll() is None, f"the first run ended early: {first.stderr.read()[-3000:]}"
            assert time.time() < deadline, "the first run wrote no checkpoint within 240 s"
            time.sleep(0.2)
        config = (workdir / "config.json").read_bytes()
        second = subprocess.run(_train(workdir, 100000), env=env, capture_output=True,
                                text=True, timeout=240)
        assert second.returncode == 2, second.stderr[-3000:]
        assert "Traceback" not in second.stderr
        lines = [line for line in second.stderr.splitlines() if line.startswith("malign")]
        assert len(lines) == 1, second.stderr[-3000:]
        assert lines[0].startswith(f"malign train: error: work directory {workdir} is in use by "
                                   f"another run: pid {first.pid} on {socket.gethostname()}")
        assert "`malign train --preset tiny" in lines[0] and "since " in lines[0]
        # The first run is unharmed: still training, its config as it wrote it.
        assert first.poll() is None
        assert (workdir / "config.json").read_bytes() == config
        seen = {p.name for p in (workdir / "checkpoints").glob("step_*.keras")}
        while not {p.name for p in (workdir / "checkpoints").glob("step_*.keras")} - seen:
            assert first.poll() is None and time.time() < deadline
            time.sleep(0.2)
    finally:
        first.kill()
        first.wait(timeout=60)
    # SIGKILL leaves the lock file behind; the next run in its place takes it over.
    stale = json.loads((workdir / LOCK_NAME).read_text())
    assert stale["pid"] == first.pid
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / LOCK_NAME).write_text(json.dumps(stale))
    third = subprocess.run(_train(fresh, 2), env=env, capture_output=True, text=True,
                           timeout=240)
    assert third.returncode == 0, third.stderr[-3000:]
    assert f"took over the lock of {fresh} left by pid {first.pid}" in third.stderr
    assert not (fresh / LOCK_NAME).exists() and (fresh / "model.keras").is_file()
