"""recipes/pretrain.py: the paper's pre-training numbers, field by field; its smoke run; and
the placeholder data path refused before a model is built."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from malign.presets import get_preset
from malign.training.commands import load_recipe

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "pretrain.py"

# Jia et al. 2021 (arXiv:2102.05918), Sec. 5: the pre-training set-up, as config fields.
PAPER = {
    "model.image.image_size": 289,
    "model.text.sequence_length": 64,
    "model.loss": "softmax",
    "model.temperature_init": 1.0,
    "model.learnable_temperature": True,
    "model.label_smoothing": 0.1,
    "training.optimizer": "lamb",
    "training.weight_decay": 1e-5,
    "training.learning_rate": 1e-3,
    "training.warmup_steps": 10_000,
    "training.decay": "linear",
    "training.end_learning_rate": 0.0,
    "training.steps": 1_200_000,
    "training.global_batch_size": 16384,
    "training.strategy": "tpu",
    "training.mixed_precision": "mixed_bfloat16",
}
# What the smoke run keeps of them (the rest is shrunk to CPU size).
KEPT_BY_SMOKE = ("model.loss", "model.temperature_init", "model.learnable_temperature",
                 "model.label_smoothing", "training.optimizer", "training.weight_decay",
                 "training.learning_rate", "training.decay", "training.end_learning_rate",
                 "training.mixed_precision")


def _get(config, dotted: str):
    node = config
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


@pytest.fixture(scope="module")
def full():
    return load_recipe(RECIPE)


@pytest.fixture(scope="module")
def smoke():
    return load_recipe(RECIPE, smoke=True)


def test_full_and_smoke_configs_build_and_validate(full, smoke):
    for config in (full, smoke):
        config.validate()
        resolved = config.resolve()
        assert resolved.training.steps % resolved.training.steps_per_checkpoint == 0
    assert full.name == "pretrain" and full.preset == "malign-b7-mbert"


@pytest.mark.parametrize("field", sorted(PAPER))
def test_full_config_holds_the_papers_number(full, field):
    assert _get(full, field) == PAPER[field]


def test_full_model_is_the_multilingual_b7_preset(full):
    assert full.model == get_preset("malign-b7-mbert")
    assert full.model.text.vocabulary_size == 250_000
    assert full.model.image_embedding_dim == full.model.text_embedding_dim == 640


def test_images_are_resized_to_346_before_the_289_crop(full):
    from malign.data.preprocess import resize_size

    assert resize_size(full.model.image.image_size) == 346


def test_learning_rate_schedule_is_the_papers(full):
    from malign.training import make_schedule

    schedule = make_schedule(full.training.resolve())
    lr = {step: float(schedule(step)) for step in (0, 5_000, 10_000, 605_000, 1_200_000)}
    assert lr[0] == 0.0 and lr[1_200_000] == 0.0
    assert lr[5_000] == pytest.approx(5e-4) and lr[10_000] == pytest.approx(1e-3)
    assert lr[605_000] == pytest.approx(5e-4)  # halfway through the linear decay


def test_data_paths_are_placeholders_without_synthetic_or_random_data(full):
    # A user must point the recipe at their records and tokenizer.
    assert full.data.train_pattern not in ("random", "synthetic")
    assert full.data.train_pattern.startswith("<") and full.data.tokenizer.startswith("<")
    assert full.training.eval_every_steps == 0 and full.data.eval_pattern == ""


def test_smoke_keeps_the_optimizer_and_loss_settings_at_cpu_size(full, smoke):
    for field in KEPT_BY_SMOKE:
        assert _get(smoke, field) == _get(full, field), field
    assert smoke.data.train_pattern == "random"
    assert smoke.training.strategy == "default" and smoke.training.global_batch_size == 8
    assert smoke.training.steps == 4 and smoke.preset == "tiny"


def _malign(args: list[str], timeout: float) -> tuple[subprocess.CompletedProcess, float, float]:
    """Runs the console script's entry point; returns the result, wall and child CPU seconds."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", "import sys, malign_launcher; sys.exit(malign_launcher.main())",
         *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return result, wall, cpu


@pytest.mark.parametrize("pattern", [None, "/nonexistent/alt-text/train-*.tfrecord"])
def test_a_missing_data_path_is_refused_before_any_model_is_built(tmp_path, pattern):
    workdir = tmp_path / "run"
    # training.strategy=default: this machine has no TPU (which would be refused first).
    args = ["train", "--recipe", str(RECIPE), "--set", "training.strategy=default",
            "--workdir", str(workdir)]
    if pattern:
        args += ["--set", f"data.train_pattern={pattern}"]
    result, _, _ = _malign(args, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    shown = pattern or "<your alt-text records>/train-*-of-*.tfrecord"
    assert f"data.train_pattern: no TFRecord files match '{shown}'" in output
    assert "building the model" not in output
    assert not workdir.exists()


def test_smoke_run_trains_a_few_steps_on_cpu(tmp_path):
    workdir = tmp_path / "run"
    result, wall, cpu = _malign(["train", "--recipe", str(RECIPE), "--smoke",
                                 "--workdir", str(workdir)], timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "step 4/4" in output and (workdir / "model.keras").is_file()
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == [
        "step_00000002.keras", "step_00000004.keras"]
    written = json.loads((workdir / "config.json").read_text())
    assert written["training"]["optimizer"] == "lamb"
    assert written["training"]["mixed_precision"] == "mixed_bfloat16"
    # CPU seconds, not wall time: the test machine is shared. About 30 s here.
    print(f"pretrain smoke: {wall:.1f} s wall, {cpu:.1f} s CPU")
    assert cpu < 60, f"the smoke run took {cpu:.0f} CPU seconds"
