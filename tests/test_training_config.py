"""Training config: values derived from the steps, typed and finite fields, errors that
name the field (and, for inconsistent values, values that work)."""

from __future__ import annotations

import math
import re

import pytest

from malign.config import (
    ConfigError,
    ExperimentConfig,
    ImageTowerConfig,
    TrainingConfig,
    derived_checkpoint_interval,
    derived_warmup_steps,
    divisors,
)
from malign.presets import get_preset


@pytest.fixture(scope="module")
def tiny():
    return ExperimentConfig(model=get_preset("tiny"))


def _nearest_divisor(steps: int, target: int = 100) -> int:
    """Brute force: the divisor of steps nearest ``target`` by ratio, smaller on a tie."""
    best = None
    for d in range(1, steps + 1):
        if steps % d == 0:
            key = (abs(math.log(d) - math.log(target)), d)
            if best is None or key < best[0]:
                best = (key, d)
    return best[1]


@pytest.mark.parametrize("steps, warmup, interval", [
    (1, 0, 1), (4, 0, 4), (20, 2, 20), (99, 9, 99), (101, 10, 101), (150, 15, 75),
    (1000, 100, 100), (1009, 100, 1009), (2024, 100, 92), (1_200_000, 100, 100),
])
def test_derived_values_follow_the_steps(tiny, steps, warmup, interval):
    resolved = tiny.with_overrides({"training.steps": steps}).resolve().training
    assert (resolved.warmup_steps, resolved.steps_per_checkpoint) == (warmup, interval)


def test_derived_values_always_work_for_every_step_count():
    for steps in range(1, 2500):
        warmup, interval = derived_warmup_steps(steps), derived_checkpoint_interval(steps)
        assert 0 <= warmup <= min(steps, 100) and warmup == min(100, steps // 10)
        assert steps % interval == 0
        assert interval == _nearest_divisor(steps), steps
        TrainingConfig(steps=steps).resolve()  # validates


def test_divisors():
    assert divisors(1) == [1]
    assert divisors(36) == [1, 2, 3, 4, 6, 9, 12, 18, 36]
    assert divisors(97) == [1, 97]


def test_unset_is_null_and_resolved_values_are_written(tiny):
    exp = tiny.with_overrides({"training.steps": 20})
    assert exp.training.warmup_steps is None and exp.training.steps_per_checkpoint is None
    assert ExperimentConfig.from_dict(exp.to_dict()) == exp
    resolved = exp.resolve()
    assert resolved.training.is_resolved and not exp.training.is_resolved
    assert '"warmup_steps": 2' in resolved.to_json()
    assert resolved.resolve() == resolved
    # Set values are kept; null unsets again.
    assert exp.with_overrides({"training.warmup_steps": 5}).resolve().training.warmup_steps == 5
    again = resolved.with_overrides({"training.warmup_steps": None, "training.steps": 40})
    assert again.resolve().training.warmup_steps == 4
    assert resolved.with_overrides({"training.warmup_steps": "null"}).training.warmup_steps is None


def test_resolve_keeps_the_values_of_the_run_it_resumes():
    first = TrainingConfig(steps=20).resolve()
    extended = TrainingConfig(steps=60).resolve(previous=first)
    assert (extended.warmup_steps, extended.steps_per_checkpoint) == (2, 20)
    explicit = TrainingConfig(steps=60, warmup_steps=6).resolve(previous=first)
    assert explicit.warmup_steps == 6


def _numbers_after(text: str, word: str) -> list[int]:
    match = re.search(word + r" ([\d or]+)", text)
    return [int(n) for n in re.findall(r"\d+", match.group(1))] if match else []


@pytest.mark.parametrize("steps, interval", [(20, 7), (1000, 7), (20, 100), (12, 5), (97, 10)])
def test_inconsistent_interval_names_the_field_and_values_that_work(tiny, steps, interval):
    with pytest.raises(ConfigError) as info:
        tiny.with_overrides({"training.steps": steps, "training.steps_per_checkpoint": interval})
    message = str(info.value)
    assert message.startswith("training.steps_per_checkpoint:")
    intervals = _numbers_after(message, "use")
    step_counts = _numbers_after(message, "training.steps to")
    assert intervals and step_counts, message
    for good in intervals:
        tiny.with_overrides({"training.steps": steps, "training.steps_per_checkpoint": good})
    for good in step_counts:
        tiny.with_overrides({"training.steps": good, "training.steps_per_checkpoint": interval})


@pytest.mark.parametrize("steps, warmup", [(20, 100), (1, 2), (50, -1)])
def test_inconsistent_warmup_names_the_field_and_a_value_that_works(tiny, steps, warmup):
    with pytest.raises(ConfigError) as info:
        tiny.with_overrides({"training.steps": steps, "training.warmup_steps": warmup})
    message = str(info.value)
    assert message.startswith("training.warmup_steps:")
    good = _numbers_after(message, "use e.g.")
    assert good, message
    tiny.with_overrides({"training.steps": steps, "training.warmup_steps": good[0]})


@pytest.mark.parametrize("key, value", [
    ("training.steps", None), ("training.steps", "null"), ("training.steps", True),
    ("training.steps", 2.5), ("training.steps", float("inf")), ("training.steps", "ten"),
    ("training.seed", None), ("training.seed", -1), ("training.seed", 2**32),
    ("training.learning_rate", float("nan")), ("training.learning_rate", "nan"),
    ("training.learning_rate", "inf"), ("training.learning_rate", float("-inf")),
    ("training.learning_rate", None), ("training.learning_rate", [1]),
    ("training.weight_decay", "NaN"), ("training.beta_2", 1.0), ("training.epsilon", 0),
    ("training.clipnorm", -1), ("training.log_every_steps", 0), ("training.end_learning_rate", -1),
    ("training.strategy", None), ("training.strategy", ["cpu:2"]), ("training.jit_compile", "maybe"),
    ("data.languages", 5), ("data.languages", {"en": 1}), ("data.languages", ["en", " "]),
    ("data.train_pattern", None), ("data.shuffle_buffer", 0),
    ("model.temperature_init", "nan"), ("model.text.vocabulary_size", None),
    ("model.text.dropout", float("inf")), ("model.image", 3), ("model.image.image_size", "big"),
    ("model.learnable_temperature", "maybe"), ("model.learnable_temperature", 2),
])
def test_bad_values_are_errors_naming_the_field(tiny, key, value):
    with pytest.raises(ConfigError) as info:
        tiny.with_overrides({key: value})
    assert str(info.value).startswith(f"{key}:"), str(info.value)


@pytest.mark.parametrize("key, value, want", [
    ("training.jit_compile", True, "true"), ("training.jit_compile", False, "false"),
    ("training.steps", 20.0, 20), ("training.steps", "20", 20),
    ("training.learning_rate", "1e-4", 1e-4), ("training.learning_rate", 1, 1.0),
    ("data.languages", "en, de", ("en", "de")), ("data.languages", ["fr"], ("fr",)),
    ("model.learnable_temperature", "false", False),
])
def test_values_are_converted_to_the_field_type(tiny, key, value, want):
    section, *rest = key.split(".")
    got = tiny.with_overrides({key: value})
    node = getattr(got, section)
    for part in rest:
        node = getattr(node, part)
    assert node == want and type(node) is type(want)


@pytest.mark.parametrize("config, field", [
    (TrainingConfig(steps=None), "training.steps"),
    (TrainingConfig(learning_rate=float("nan")), "training.learning_rate"),
    (TrainingConfig(seed=None), "training.seed"),
    (TrainingConfig(global_batch_size=8.0), "training.global_batch_size"),
    (TrainingConfig(steps=True), "training.steps"),
    (ImageTowerConfig(image_size=None), "image_tower.image_size"),
])
def test_configs_built_in_python_are_type_checked(config, field):
    with pytest.raises(ConfigError, match=f"^{re.escape(field)}:"):
        config.validate()


def test_nested_errors_use_the_path_set_takes(tiny):
    with pytest.raises(ConfigError, match=r"^model\.text\.vocabulary_size:"):
        tiny.with_overrides({"model.text.vocabulary_size": 3})
    with pytest.raises(ConfigError, match=r"^model\.image\.image_size:"):
        tiny.with_overrides({"model.image.image_size": 4})
    with pytest.raises(ConfigError, match=r"^model\.text\.num_layers:"):
        ExperimentConfig.from_dict({"model": {"text": {"num_layers": "x"}}})


@pytest.mark.parametrize("key, expected", [
    ("training.step", "unknown field 'training.step' (did you mean 'steps'?)"),
    ("trainng.steps", "no config section 'trainng' in --set 'trainng.steps' (did you mean "
                      "'training'?)"),
    ("model.txt.num_layers", "no config section 'model.txt' in --set 'model.txt.num_layers' "
                             "(did you mean 'text'?)"),
])
def test_a_mistyped_set_key_gets_the_closest_name(key, expected):
    with pytest.raises(ConfigError) as error:
        ExperimentConfig(model=get_preset("tiny")).with_overrides({key: 1})
    assert str(error.value).startswith(expected)
