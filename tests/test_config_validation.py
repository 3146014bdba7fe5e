"""Every config field refuses values of the wrong type or range, by its annotation.

The bad values are chosen from each field's type annotation (walked over every config
class, nested), not from a list of fields, so a field added later is covered too. Each
must be a ``ConfigError`` whose message starts with the field's dotted name, as ``--set``
takes it, and says what is expected. A few cases run the real command in a subprocess:
non-zero exit, the field named, no traceback, nothing written.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from malign.config import INT_MAX, ConfigError, ExperimentConfig, _Config, _is_optional
from malign.presets import get_preset
from malign.training.commands import parse_overrides

REPO = Path(__file__).resolve().parents[1]


def _leaf_fields(config_class: type, prefix: str = ""):
    """(dotted name, annotation) of every field of ``config_class``, nested configs included."""
    hints = typing.get_type_hints(config_class)
    for field in dataclasses.fields(config_class):
        hint = hints[field.name]
        name = f"{prefix}{field.name}"
        yield name, hint
        if isinstance(hint, type) and issubclass(hint, _Config):
            yield from _leaf_fields(hint, f"{name}.")


def _bad_values(hint) -> list:
    """Values that no field annotated ``hint`` may take."""
    optional, hint = _is_optional(hint)
    values = [] if optional else [None]
    if isinstance(hint, type) and issubclass(hint, _Config):
        return values + [3, [1], "text"]
    if typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0]
        values += [5, 2.5, True, {"a": 1}, [None]]
        if item is int:
            values += [[True], [-1], [1.5]]
        if typing.get_origin(item) is tuple:
            values += [[5], [[True]]]
        return values
    if hint is bool:
        return values + ["maybe", 2, [1], 0.5]
    if hint is int:
        return values + [True, False, -1, 2.5, "ten", "nan", INT_MAX + 1, 10**400,
                         float("inf"), [1]]
    if hint is float:
        return values + [float("nan"), float("inf"), float("-inf"), "nan", "inf", "-inf",
                         True, [1], 10**400, "x"]
    if hint is str:
        return values + [[1], {"a": 1}]
    raise AssertionError(f"no bad values known for {hint}")


CASES = [(name, value) for name, hint in _leaf_fields(ExperimentConfig)
         for value in _bad_values(hint)]


@pytest.fixture(scope="module")
def tiny():
    return ExperimentConfig(name="tiny", preset="tiny", model=get_preset("tiny"))


def test_every_field_and_type_is_covered():
    names = {name for name, _ in CASES}
    assert {"training.steps", "training.learning_rate", "training.seed", "data.languages",
            "model.image.stages", "model.text.vocabulary_size",
            "distillation.cache_teacher"} <= names
    assert len(CASES) > 300


@pytest.mark.parametrize("key, value", CASES, ids=[f"{k}={v!r:.20}" for k, v in CASES])
def test_a_value_of_the_wrong_type_names_the_field(tiny, key, value):
    with pytest.raises(ConfigError) as info:
        tiny.with_overrides({key: value}).resolve()
    message = str(info.value)
    assert message.startswith(f"{key}:"), message
    assert re.search(r"\b(expected|must|needs)\b", message), message
    assert len(message) < 400, message


@pytest.mark.parametrize("raw", ["null", "NaN", "Infinity", "-Infinity", "-1", "true",
                                 "1e400", "9" * 5000, "[1]", "{}"])
@pytest.mark.parametrize("key", ["training.steps", "training.seed", "training.learning_rate",
                                 "model.image.depth_divisor", "data.shuffle_buffer"])
def test_set_text_of_the_wrong_type_names_the_field(tiny, key, raw):
    with pytest.raises(ConfigError, match=f"^{key}:"):
        tiny.with_overrides(parse_overrides([f"{key}={raw}"])).resolve()


@pytest.mark.parametrize("key, value", [
    ("model.image.depth_divisor", 0), ("model.image.batch_norm_epsilon", 0.0),
    ("model.image.batch_norm_momentum", 1.5), ("model.image.batch_norm_momentum", -0.1),
    ("model.image.depth_coefficient", 1e30), ("training.steps", 10**30),
    ("model.text.num_heads", 0), ("training.global_batch_size", 0),
])
def test_values_out_of_range_name_the_field(tiny, key, value):
    with pytest.raises(ConfigError, match=f"^{key}:"):
        tiny.with_overrides({key: value}).resolve()


def test_optional_fields_take_null(tiny):
    got = tiny.with_overrides(parse_overrides(["training.warmup_steps=null"]))
    assert got.training.warmup_steps is None
    assert got.resolve().training.warmup_steps == 100


def _run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3",
           "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, "-m", "malign.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("setting, field", [
    ("training.steps=null", "training.steps"),
    ("data.languages=5", "data.languages"),
    ("training.learning_rate=inf", "training.learning_rate"),
    ("model.image.depth_divisor=-2", "model.image.depth_divisor"),
])
def test_the_command_refuses_a_bad_set_without_a_traceback(tmp_path, setting, field):
    workdir = tmp_path / "run"
    result = _run_cli(["train", "--preset", "tiny", "--set", setting, "--workdir", str(workdir),
                       "--print-config"], cwd=tmp_path)
    assert result.returncode != 0
    assert field in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert list(tmp_path.iterdir()) == [], "the refused command wrote files"
