"""recipes/multi30k_finetune.py and recipes/distill_student.py: their configs build,
multi30k_finetune's starting points, and both smoke runs (the distillation's teacher is the
multi30k smoke model)."""

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
DISTILL_RECIPE = REPO / "recipes" / "distill_student.py"


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


def _malign(args: list, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environment = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2", **env)
    for name in ("MALIGN_MULTI30K_INIT", "MALIGN_DISTILL_TOKENIZER"):
        environment.pop(name, None)
    proc = subprocess.run([sys.executable, "-m", "malign.cli", *map(str, args)],
                          env=environment, capture_output=True, text=True, timeout=300, cwd=cwd)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def smoke_run(multi30k_mini, tmp_path_factory):
    """multi30k_finetune's smoke run on multi30k-mini records (its first 64 train and 48
    val images, every caption file): ``(records, workdir, stdout)``."""
    from malign.data.multi30k import prepare_records

    tmp_path = tmp_path_factory.mktemp("m30k-smoke")
    subset = tmp_path / "m30k"
    for path in (multi30k_mini / "data").rglob("*"):
        if path.is_file():
            _head(path, subset / path.relative_to(multi30k_mini), 64 if "train" in path.name
                  else 48)
    records = tmp_path / "records"
    prepare_records(subset, records, images=multi30k_mini / "images", image_size=32,
                    verbose=False)
    workdir = tmp_path / "run"
    proc = _malign(["train", "--recipe", RECIPE, "--smoke", "--workdir", workdir], tmp_path,
                   MALIGN_MULTI30K_RECORDS=str(records))
    return records, workdir, proc.stdout


def test_smoke_run(smoke_run):
    """The smoke config trains on the records and evaluates all four languages."""
    _, workdir, stdout = smoke_run
    assert (workdir / "model.keras").is_file()
    metrics = json.loads((workdir / "eval" / "metrics.json").read_text())
    assert set(metrics["languages"]) >= {"en", "de", "fr", "cs"}
    assert "step 10/10" in stdout


def _distill_recipe():
    spec = importlib.util.spec_from_file_location("recipe_distill_student", DISTILL_RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("smoke", [False, True])
def test_distill_student_configs(smoke, monkeypatch, tmp_path):
    """Baseline and distilled student differ only in the teacher; the student's vocabulary
    size is read from its tokenizer (the trimmed one when present)."""
    import sentencepiece

    from malign import text as text_lib

    for name in ("MALIGN_DISTILL_RECORDS", "MALIGN_DISTILL_TEACHER", "MALIGN_DISTILL_TOKENIZER"):
        monkeypatch.delenv(name, raising=False)
    recipe = _distill_recipe()
    baseline, distilled = recipe.get_config(smoke), recipe.get_distill_config(smoke)
    baseline.validate()
    distilled.validate()
    assert distilled.model == baseline.model and distilled.data == baseline.data
    assert distilled.training == baseline.training
    assert baseline.distillation.teacher == ""
    assert distilled.distillation.teacher == "runs/multi30k/model.keras"
    assert distilled.distillation.cache_teacher and distilled.distillation.pivot_language == "en"
    if smoke:
        assert baseline.data.tokenizer == "test" and baseline.training.steps <= 20
        return
    assert baseline.data.tokenizer == "records/multi30k/tokenizer.model"
    assert baseline.model.text.vocabulary_size == 4000  # before the tokenizer exists
    vocab = text_lib.test_vocab_path()
    (tmp_path / "student.model").write_bytes(Path(vocab).read_bytes())
    monkeypatch.setenv("MALIGN_DISTILL_RECORDS", str(tmp_path))
    monkeypatch.setenv("MALIGN_DISTILL_TEACHER", str(tmp_path / "t.keras"))
    config = recipe.get_distill_config()
    pieces = sentencepiece.SentencePieceProcessor(model_file=str(vocab)).get_piece_size()
    assert config.data.tokenizer == str(tmp_path / "student.model")
    assert config.model.text.vocabulary_size == pieces
    assert config.data.train_pattern == f"{tmp_path}/train-*-of-*.tfrecord"
    assert config.distillation.teacher == str(tmp_path / "t.keras")


def test_distill_student_smoke(smoke_run):
    """distill_student's smoke: the student distilled from the multi30k smoke model (cached
    teacher embeddings), and its baseline trained alone, each a command in its own process."""
    records, teacher, _ = smoke_run
    env = {"MALIGN_DISTILL_RECORDS": str(records),
           "MALIGN_DISTILL_TEACHER": str(teacher / "model.keras")}
    distilled = teacher.parent / "distilled"
    proc = _malign(["distill", "--recipe", DISTILL_RECIPE, "--smoke", "--workdir", distilled],
                   teacher.parent, **env)
    assert "step 10/10" in proc.stdout and " kl " in proc.stdout
    assert (distilled / "teacher_cache").is_dir()
    alone = teacher.parent / "alone"
    _malign(["train", "--recipe", DISTILL_RECIPE, "--smoke", "--workdir", alone],
            teacher.parent, **env)
    for workdir in (distilled, alone):
        metrics = json.loads((workdir / "eval" / "metrics.json").read_text())
        assert set(metrics["languages"]) >= {"en", "de", "fr", "cs"}
