"""The real `malign train` command: a smoke run, and a killed run that resumes."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import malign
from malign.cli import main
from malign.training.commands import parse_overrides

REPO = Path(__file__).resolve().parents[1]

SMOKE = ["--preset", "tiny", "--set", "training.global_batch_size=4",
         "--set", "training.warmup_steps=1", "--set", "training.steps_per_checkpoint=2"]


def _malign(args, **kwargs):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-m", "malign.cli", *args], env=env,
                          capture_output=True, text=True, **kwargs)


def test_smoke_train_writes_checkpoints_and_config(tmp_path):
    workdir = tmp_path / "run"
    result = _malign(["train", *SMOKE, "--set", "training.steps=4",
                      "--set", "training.strategy=cpu:2", "--workdir", str(workdir),
                      "--verbose", "2"], timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == [
        "step_00000002.keras", "step_00000004.keras"]
    assert (workdir / "model.keras").is_file()
    config = json.loads((workdir / "config.json").read_text())
    assert config["training"]["strategy"] == "cpu:2" and config["training"]["steps"] == 4
    assert list((workdir / "logs" / "train").glob("events.out.tfevents.*"))


def test_a_run_records_its_tokenizer_fingerprint(tmp_path):
    """The tokenizer copy beside model.keras comes with its SHA-256, which eval and export
    compare any --tokenizer against."""
    workdir = tmp_path / "run"
    result = _malign(["train", *SMOKE, "--set", "training.steps=2",
                      "--set", "data.train_pattern=synthetic",
                      "--set", "data.synthetic_examples=8", "--set", "data.tokenizer=test",
                      "--workdir", str(workdir)], timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((workdir / "tokenizer-fingerprint.json").read_text())
    copy = (workdir / "tokenizer.model").read_bytes()
    assert copy == malign.text.test_vocab_path().read_bytes()
    assert record["sha256"] == hashlib.sha256(copy).hexdigest()
    assert record["file"] == "tokenizer.model" and record["written_by"] == "malign train"


def test_killed_run_resumes_from_saved_step(tmp_path):
    workdir = tmp_path / "run"
    args = ["train", *SMOKE, "--workdir", str(workdir), "--verbose", "0"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.Popen([sys.executable, "-m", "malign.cli", *args,
                             "--set", "training.steps=100000"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    restore = workdir / "restore"
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            if len(list(restore.glob("step_*"))) >= 2:
                break
            if proc.poll() is not None:
                pytest.fail(f"training exited early with code {proc.returncode}")
            time.sleep(0.2)
        else:
            pytest.fail("no checkpoint within 240 s")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    saved_step = max(int(p.name.split("_")[1]) for p in restore.glob("step_*"))
    # Re-run to two more checkpoints past the saved one (only training.steps changes).
    result = _malign([*args, "--set", f"training.steps={saved_step + 4}"], timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming from step {saved_step}" in result.stdout
    steps = sorted(int(p.stem.split("_")[1]) for p in (workdir / "checkpoints").glob("*.keras"))
    assert steps[-1] == saved_step + 4
    assert max(int(p.name.split("_")[1]) for p in restore.glob("step_*")) == saved_step + 4
    # The resumed run's scalars continue at global steps (its own, newest event file).
    from malign.training.progress import logged_steps

    newest = max((workdir / "logs" / "train").glob("events.out.tfevents.*"),
                 key=lambda p: p.stat().st_mtime)
    want = logged_steps(saved_step, saved_step + 4, 10)
    assert _scalar_steps_in(newest, "loss") == want
    assert f"running step {saved_step + 1}/{saved_step + 4}" in result.stdout


def _scalar_steps_in(path: Path, tag: str) -> list[int]:
    import tensorflow as tf

    return sorted(event.step for event in tf.compat.v1.train.summary_iterator(str(path))
                  for value in event.summary.value if value.tag == tag)


def _scalar_steps(log_dir: Path, tag: str) -> list[int]:
    return sorted(step for path in log_dir.glob("events.out.tfevents.*")
                  for step in _scalar_steps_in(path, tag))


def test_demo_recipe_smoke_trains_evaluates_during_and_after(tmp_path):
    """`make demo`'s recipe end to end (smoke size): synthetic data, training, the
    in-training retrieval evaluation every 10 steps, and the final held-out report."""
    workdir = tmp_path / "demo"
    root = Path(__file__).resolve().parents[1]
    result = _malign(["train", "--recipe", str(root / "recipes" / "demo.py"), "--smoke",
                      "--set", "training.eval_every_steps=10", "--workdir", str(workdir),
                      "--verbose", "2"], timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "retrieval @ step 10" in result.stdout and "held-out retrieval" in result.stdout
    # The final report reuses the evaluation at step 20: it runs (and prints) once.
    assert result.stdout.count("retrieval @ step 20") == 1
    assert _scalar_steps(workdir / "logs" / "retrieval", "retrieval/en/mean_recall") == [10, 20]
    metrics = json.loads((workdir / "eval" / "metrics.json").read_text())
    assert set(metrics["languages"]) == {"en", "de", "fr", "cs"}
    assert (workdir / "eval" / "recall.png").stat().st_size > 0
    assert (workdir / "model.keras").is_file() and (workdir / "tokenizer.model").is_file()


def test_eval_every_steps_needs_a_held_out_set(tmp_path):
    result = _malign(["train", *SMOKE, "--set", "training.eval_every_steps=5",
                      "--workdir", str(tmp_path)], timeout=120)
    assert result.returncode == 2
    assert "training.eval_every_steps" in result.stderr and "data.eval_pattern" in result.stderr


def test_changed_config_in_same_workdir_is_refused(tmp_path):
    workdir = tmp_path / "run"
    ok = _malign(["train", *SMOKE, "--set", "training.steps=2", "--workdir", str(workdir),
                  "--verbose", "0"], timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    bad = _malign(["train", *SMOKE, "--set", "training.steps=2", "--set",
                   "training.learning_rate=0.5", "--workdir", str(workdir)], timeout=120)
    assert bad.returncode == 2
    assert "training.learning_rate" in bad.stderr


def test_cli_errors_name_the_problem(tmp_path):
    result = _malign(["train", "--preset", "tiny", "--set", "training.global_batch_size=6",
                      "--set", "training.strategy=cpu:4", "--workdir", str(tmp_path)],
                     timeout=120)
    assert result.returncode == 2
    assert "global_batch_size=6 is not divisible by the 4 replicas" in result.stderr
    result = _malign(["train", "--preset", "huge"], timeout=120)
    assert result.returncode == 2 and "unknown preset 'huge'" in result.stderr


def test_parse_overrides():
    assert parse_overrides(["a.b=1", "c.d=x,y", 'e.f=["p"]']) == {
        "a.b": 1, "c.d": "x,y", "e.f": ["p"]}


def test_help_lists_commands():
    result = _malign(["--help"], timeout=120)
    assert result.returncode == 0 and "train" in result.stdout
    assert Path(__file__).exists()


def _readme_command(marker: str) -> list[str]:
    """The arguments of the README command line containing ``marker`` (comment removed)."""
    for line in (REPO / "README.md").read_text().splitlines():
        if marker in line and line.startswith("malign train"):
            return line.split("#")[0].split()[1:]
    raise AssertionError(f"no README command with {marker!r}")


def test_readme_smoke_command_trains_with_values_that_follow_the_steps(tmp_path):
    """`malign train --preset tiny --set training.steps=20 --workdir runs/smoke`, as the
    README shows it: warm-up and checkpoint interval follow the 20 steps; --print-config
    shows the config the run writes, and writes nothing itself."""
    args = _readme_command("--preset tiny --set training.steps=20")
    printed = _malign([*args, "--print-config"], cwd=tmp_path, timeout=300)
    assert printed.returncode == 0, printed.stderr[-3000:]
    config = json.loads(printed.stdout)
    assert (config["training"]["warmup_steps"], config["training"]["steps_per_checkpoint"]) == (2, 20)
    assert not (tmp_path / "runs").exists()

    result = _malign(args, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    workdir = tmp_path / "runs" / "smoke"
    assert json.loads((workdir / "config.json").read_text()) == config
    assert [p.name for p in (workdir / "checkpoints").iterdir()] == ["step_00000020.keras"]
    out = result.stdout
    assert "training.warmup_steps=2, training.steps_per_checkpoint=20 (derived from " \
           "training.steps=20" in out
    assert re.search(r"building the model \.\.\. \d+\.\d s \([\d,]+ weights\)", out), out
    assert re.search(r"tracing the train step and running step 1/20 \.\.\. \d+\.\d s\n", out), out
    assert re.search(r"step 10/20  loss \d\.\d{4}  temperature \d\.\d{4}  lr \S+  "
                     r"\d+\.\d\d steps/s  ETA \d+", out), out
    assert re.search(r"step 20/20  loss", out), out
    assert "Epoch 1/1" not in out and "\u2501" not in out  # no Keras progress bar by default


BAD_SETTINGS = [
    (["training.steps=20", "training.steps_per_checkpoint=7"], "training.steps_per_checkpoint"),
    (["training.steps=20", "training.warmup_steps=100"], "training.warmup_steps"),
    (["training.steps=null"], "training.steps"),
    (["training.seed=null"], "training.seed"),
    (["training.learning_rate=nan"], "training.learning_rate"),
    (["training.learning_rate=inf"], "training.learning_rate"),
    (["data.languages=5"], "data.languages"),
    (["training.strategy=gpu:9"], "training.strategy"),
    (["data.train_pattern=synthetic", "model.text.vocabulary_size=900"],
     "model.text.vocabulary_size"),
    (["data.train_pattern=/nonexistent/train-*"], "data.train_pattern"),
]


@pytest.mark.parametrize("settings, field", BAD_SETTINGS, ids=[b[1] for b in BAD_SETTINGS])
def test_print_config_refuses_what_training_refuses(tmp_path, capsys, settings, field):
    """One check path: the run and --print-config give the same error naming the field,
    exit 2, and write nothing."""
    args = ["train", "--preset", "tiny", "--workdir", str(tmp_path / "run")]
    for item in settings:
        args += ["--set", item]
    errors = []
    for extra in ([], ["--print-config"]):
        assert main([*args, *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"malign train: error: {field}"), err
        errors.append(err)
    assert errors[0] == errors[1]
    assert not (tmp_path / "run").exists()


def test_records_without_a_usable_example_end_the_run_with_the_counts(tmp_path):
    """Every image undecodable: `malign train` exits 2 naming the drop counts instead of
    waiting forever for its first batch (the timeout turns a hang into a failure)."""
    from malign.data.schema import ImageTextExample
    from malign.data.writer import RecordWriter

    prefix = str(tmp_path / "unusable")
    with RecordWriter(prefix, 2) as writer:
        for i in range(10):
            writer.write(ImageTextExample(f"img{i}", b"not an image", "png", [f"item {i}"],
                                          ["en"]))
    result = _malign(["train", *SMOKE, "--set", "training.steps=2",
                      "--set", f"data.train_pattern={prefix}", "--set", "data.tokenizer=test",
                      "--workdir", str(tmp_path / "run")], timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert (f"malign train: error: malign.data: no usable record in a whole pass over {prefix} "
            "(read 10 records; dropped 10: 10 undecodable image, 0 no usable caption"
            in result.stderr), result.stderr[-3000:]
    assert f"`malign data inspect --strict {prefix}`." in result.stderr
