"""recipes/multi30k_finetune.py: its configs build, its starting points, and its smoke run."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "multi30k_finetune.py"


def _recipe():
    spec = importlib.util.spec_from_file_location("recipe_multi30k_finetune", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def recipe(monkeypatch):
    monkeypatch.delenv("MALIGN_MULTI30K_RECORDS", raising=False)
    monkeypatch.delenv("MALIGN_MULTI30K_INIT", raising=False)
    return _recipe()


@pytest.mark.parametrize("smoke", [False, True])
def test_configs_build_and_validate(recipe, smoke, monkeypatch, tmp_path):
    config = recipe.get_config(smoke=smoke)
    config.validate()
    assert config.training.steps % config.training.steps_per_checkpoint == 0
    assert config.data.train_pattern == "records/multi30k/train-*-of-*.tfrecord"
    assert config.data.eval_pattern == "records/multi30k/val-*-of-*.tfrecord"
    assert config.data.languages == ()  # all four languages mixed
    monkeypatch.setenv("MALIGN_MULTI30K_RECORDS", str(tmp_path))
    config = recipe.get_config(smoke=smoke)
    assert config.data.train_pattern == f"{tmp_path}/train-*-of-*.tfrecord"
    if smoke:
        assert config.data.tokenizer == "test" and config.training.steps <= 20
    else:
        assert config.data.tokenizer == f"{tmp_path}/tokenizer.model"
        assert config.model.text.vocabulary_size == recipe.VOCAB_SIZE
        assert config.model.image.image_size == recipe.IMAGE_SIZE
        assert config.training.init_from == ""


def test_start_from_a_malign_run_or_a_converted_checkpoint(recipe, monkeypatch, tmp_path):
    from malign.config import ExperimentConfig
    from malign.presets import get_preset

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    other = get_preset("tiny", image_size=48, vocabulary_size=1000)
    (run / "config.json").write_text(ExperimentConfig(model=other).to_json())
    for start in (run / "model.keras", run / "checkpoints" / "step_00000100.keras"):
        monkeypatch.setenv("MALIGN_MULTI30K_INIT", str(start))
        config = recipe.get_config()
        assert config.model == other
        assert config.data.tokenizer == str(run / "tokenizer.model")
        assert config.training.init_from == str(start)
        assert config.training.learning_rate == recipe.FINETUNE["learning_rate"]
        assert config.training.steps == recipe.FINETUNE["steps"]

    converted = tmp_path / "align-base"
    converted.mkdir()
    base = get_preset("tiny", eval_resize="square")
    (converted / "model.conversion.json").write_text(json.dumps(
        {"model_config": base.to_dict(), "tokenizer": {"vocabulary": str(converted / "vocab.txt")}}))
    monkeypatch.setenv("MALIGN_MULTI30K_INIT", str(converted / "model.keras"))
    config = recipe.get_config()
    assert config.model == base and config.data.tokenizer == str(converted / "vocab.txt")
    assert config.training.learning_rate == 1e-5

    assert recipe.get_config(smoke=True).training.init_from == ""  # the smoke starts fresh
    monkeypatch.setenv("MALIGN_MULTI30K_INIT", str(tmp_path / "nowhere" / "model.keras"))
    with pytest.raises(FileNotFoundError, match="MALIGN_MULTI30K_INIT=.*no model.conversion"):
        recipe.get_config()


def _head(source: Path, target: Path, n: int) -> None:
    """The first ``n`` lines of a (gzip) text file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.suffix == ".gz":
        with gzip.open(source, "rt", encoding="utf-8") as handle:
            lines = handle.read().splitlines()[:n]
        with gzip.open(target, "wt", encoding="utf-8") as handle:
            handle.write("".join(f"{line}\n" for line in lines))
    else:
        target.write_text("".join(f"{line}\n" for line in source.read_text().splitlines()[:n]))


def test_smoke_run(multi30k_mini, tmp_path):
    """The smoke config trains on multi30k-mini records (its first 64 train and 48 val
    images, every caption file) and evaluates all four languages."""
    from malign.data.multi30k import prepare_records

    subset = tmp_path / "m30k"
    for path in (multi30k_mini / "data").rglob("*"):
        if path.is_file():
            _head(path, subset / path.relative_to(multi30k_mini), 64 if "train" in path.name
                  else 48)
    records = tmp_path / "records"
    prepare_records(subset, records, images=multi30k_mini / "images", image_size=32,
                    verbose=False)
    env = dict(os.environ, MALIGN_MULTI30K_RECORDS=str(records), PYTHONPATH=str(REPO),
               TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("MALIGN_MULTI30K_INIT", None)
    workdir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "malign.cli", "train", "--recipe", str(RECIPE), "--smoke",
         "--workdir", str(workdir)],
        env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert (workdir / "model.keras").is_file()
    metrics = json.loads((workdir / "eval" / "metrics.json").read_text())
    assert set(metrics["languages"]) >= {"en", "de", "fr", "cs"}
    assert "step 10/10" in proc.stdout
