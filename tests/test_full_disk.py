"""Full and read-only disks: one clear error naming the path, the previous state whole.

A small tmpfs needs root, so the disk "fills" through RLIMIT_FSIZE: with SIGXFSZ ignored, a
write past the limit fails with EFBIG in Python, TensorFlow's file system layer and Keras
alike, exactly where a full disk fails with ENOSPC. ENOSPC itself is injected where a test
can raise it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from malign import atomic_files
from malign.atomic_files import WriteFailedError

REPO = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def file_size_limit(nbytes: int):
    """Files written by this process cannot grow past ``nbytes`` inside the block (EFBIG)."""
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def _tree(path: Path) -> dict[str, str]:
    """Every file below ``path`` (hidden ones too) by relative name, with its SHA-256."""
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def _temps(path: Path) -> list[str]:
    return [str(p) for p in path.rglob(".tmp-*")]


# --- the helper itself ------------------------------------------------------------------------

def test_an_enospc_during_a_write_leaves_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "metrics.json"
    atomic_files.write_text(path, '{"old": true}\n')
    with pytest.raises(WriteFailedError) as caught:
        with atomic_files.replacing(path) as tmp:
            tmp.write_text('{"new": ')  # half written, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    error = caught.value
    assert error.errno == errno.ENOSPC and error.path == str(path)
    assert str(error).startswith(f"could not write {path}: No space left on device; free some "
                                 "space")
    assert "unchanged" in str(error)
    assert path.read_text() == '{"old": true}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_library_errors_that_only_say_it_in_words_are_write_failures(tmp_path):
    import tensorflow as tf

    full = tf.errors.ResourceExhaustedError(None, None, "/x/.tmp-1-a.tfrecord; No space left "
                                                        "on device")
    read_only = OSError("Unable to synchronously create file (unable to open file: name = "
                        "'x.h5', errno = 30, error message = 'Read-only file system')")
    assert atomic_files.WriteFailedError("a", full).errno == errno.ENOSPC
    assert atomic_files.WriteFailedError("a", read_only).errno == errno.EROFS
    assert "the file system is read-only" in str(atomic_files.WriteFailedError("a", read_only))
    assert not atomic_files.is_write_failure(ValueError("No space left on device"))
    assert not atomic_files.is_write_failure(tf.errors.InvalidArgumentError(None, None, "shape"))
    # Other errors pass through as they are; the temporary file still goes.
    with pytest.raises(ValueError, match="bad"):
        with atomic_files.replacing(tmp_path / "a.txt") as tmp:
            tmp.write_text("x")
            raise ValueError("bad")
    assert list(tmp_path.iterdir()) == []


def test_a_directory_is_replaced_whole(tmp_path):
    target = tmp_path / "export"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_files.replacing(target) as tmp:
        tmp.mkdir()
        (tmp / "new.txt").write_text("new")
    assert _tree(tmp_path) == {"export/new.txt": hashlib.sha256(b"new").hexdigest()}


def test_leftovers_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    dead = tmp_path / f".tmp-{process.pid}-train-00000-of-00001.tfrecord"
    live = tmp_path / f".tmp-{os.getppid()}-train-00000-of-00001.tfrecord"
    other = tmp_path / f".tmp-{process.pid}-val-00000-of-00001.tfrecord"
    for path in (dead, live, other):
        path.write_bytes(b"partial")
    assert atomic_files.remove_dead_temps(tmp_path, "train-*") == [dead]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name])


# --- malign data build ------------------------------------------------------------------------

def _images_and_rows(root: Path, count: int, seed: int) -> tuple[Path, Path]:
    from PIL import Image

    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        name = f"img{seed}-{i}.png"  # noise: about 27 KB each
        Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(images / name)
        rows.append({"image": name, "caption": f"picture {i}", "lang": "en"})
    path = root / f"rows{seed}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return images, path


_LIMITED = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
from malign.cli import main
sys.argv = ["malign", *sys.argv[2:]]
sys.exit(main(sys.argv[1:]))
"""


def _malign_limited(limit: int, args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-c", _LIMITED, str(limit), *args], env=env,
                          capture_output=True, text=True, timeout=300)


def test_data_build_on_a_full_disk_keeps_the_previous_records(tmp_path):
    """A rebuild that runs out of space ends with one error naming the shard; the shards and
    summary of the previous build stay as they were, and no partial file remains."""
    out = tmp_path / "records"
    out.mkdir()
    images, rows = _images_and_rows(tmp_path, 4, seed=1)
    build = ["data", "build", "--images", str(images), "--out", str(out / "train"),
             "--shards", "2", "--quiet"]
    first = _malign_limited(10**9, [*build, "--input", str(rows)])
    assert first.returncode == 0, first.stderr[-3000:]
    before = _tree(out)
    assert sorted(before) == ["train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord",
                              "train.summary.json"]

    images, more_rows = _images_and_rows(tmp_path, 8, seed=2)
    second = _malign_limited(64 * 1024, [*build, "--input", str(more_rows)])
    assert second.returncode == 2, second.stderr[-3000:]
    assert "Traceback" not in second.stderr
    errors = [line for line in second.stderr.splitlines() if line.startswith("malign")]
    assert len(errors) == 1, second.stderr[-3000:]
    assert errors[0].startswith(
        f"malign data: error: could not write {out}/train-0000")
    assert "-of-00002.tfrecord: File too large;" in errors[0]
    assert _tree(out) == before  # old shards and summary whole, no temporary file left
    assert _temps(tmp_path) == []


# --- a training checkpoint and an export ------------------------------------------------------

def test_a_checkpoint_save_on_a_full_disk_keeps_the_previous_one(tmp_path, tiny_model):
    from malign.training.checkpoints import save_model_atomically

    path = tmp_path / "checkpoints" / "step_00000002.keras"
    path.parent.mkdir()
    save_model_atomically(tiny_model, path)
    before = _tree(tmp_path)
    assert path.stat().st_size > 64 * 1024
    with file_size_limit(64 * 1024), pytest.raises(WriteFailedError) as caught:
        save_model_atomically(tiny_model, path)
    assert caught.value.path == str(path) and caught.value.errno == errno.EFBIG
    assert _tree(tmp_path) == before and _temps(tmp_path) == []


def test_an_export_on_a_full_disk_keeps_the_previous_version(tmp_path, tiny_model):
    import malign.text
    from malign import export

    tokenizer = malign.text.SentencePieceTokenizer(malign.text.test_vocab_path(),
                                                   tiny_model.sequence_length)
    base = tmp_path / "serving"
    export.export_saved_model(tiny_model, tokenizer, base, version=1, towers="text",
                              verify=False)
    before = _tree(base)
    with file_size_limit(16 * 1024), pytest.raises(WriteFailedError) as caught:
        export.export_saved_model(tiny_model, tokenizer, base, version=1, towers="text",
                                  verify=False, overwrite=True)
    assert caught.value.path == str(base / "1")
    assert str(caught.value).startswith(f"could not write {base / '1'}: File too large")
    assert _tree(base) == before
    assert sorted(p.name for p in base.iterdir()) == ["1"]  # no staging directory left
