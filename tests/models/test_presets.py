"""Preset weights by arithmetic (no model built), the small students and their teachers."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys

import pytest

import malign
from malign import presets
from malign.config import ConfigError, ImageTowerConfig, ModelConfig, TextTowerConfig
from malign.models import count_params
from malign.presets import (
    PRESETS,
    STUDENT_TEACHERS,
    TRIMMED_FORMS,
    count_preset_weights,
    get_preset,
    max_vocabulary_within,
    weight_breakdown,
)

# Small configs that exercise every term of the count: a top conv and both projections,
# the sigmoid loss's bias, the ImageNet normalisation layer, a squeeze-excite ratio that
# rounds down, the full B0 stage table (expand ratios 1 and 6, kernels 3 and 5, stride-2
# blocks with both padding rules), a text tower without projection and an odd vocabulary.
SMALL_CONFIGS = {
    "tiny": get_preset("tiny"),
    "tiny-top-projections-sigmoid": get_preset(
        "tiny", loss="sigmoid", normalization="imagenet", se_ratio=0.3, top_filters=48,
        **{"image.projection_dim": 24, "text.projection_dim": 24}, num_layers=3,
        intermediate_dim=40, max_sequence_length=20, vocabulary_size=777,
    ),
    "b0-stages-quarter-width": ModelConfig(
        image=ImageTowerConfig(width_coefficient=0.25, depth_coefficient=0.4, image_size=32,
                               depthwise_padding=(3,), se_ratio=0.25),
        text=TextTowerConfig(vocabulary_size=301, num_layers=1, num_heads=4, hidden_dim=80,
                             intermediate_dim=96, max_sequence_length=16, sequence_length=16,
                             projection_dim=0),
    ),
}


@pytest.mark.parametrize("name", sorted(SMALL_CONFIGS))
def test_counted_weights_equal_the_built_models(name):
    config = SMALL_CONFIGS[name]
    model = malign.AlignModel(config)
    assert count_preset_weights(config) == count_params(model)
    parts = weight_breakdown(config)
    assert parts.image_tower == count_params(model.image_tower)
    assert parts.text_tower == count_params(model.text_tower)
    embedding = model.text_tower.backbone.token_embedding.embeddings
    assert parts.token_embedding == embedding.shape[0] * embedding.shape[1]


def test_every_student_preset_is_at_most_a_quarter_of_its_teacher():
    assert STUDENT_TEACHERS, "no small student presets"
    for student, teacher in STUDENT_TEACHERS.items():
        assert teacher in PRESETS and not teacher.startswith("student-")
        s, t = count_preset_weights(student), count_preset_weights(teacher)
        assert 4 * s <= t, f"{student} has {s:,} weights, more than a quarter of {teacher}'s {t:,}"
        # Distillation compares embeddings directly: the same width as the teacher's.
        assert get_preset(student).text_embedding_dim == get_preset(teacher).text_embedding_dim
        assert get_preset(student).image_embedding_dim == get_preset(teacher).image_embedding_dim


def test_each_student_uses_its_teachers_vocabulary_kind():
    # align-base's student reads the teacher's WordPiece ids; the SentencePiece student a
    # trimmed copy of its teacher's vocabulary, hence fewer pieces.
    assert (get_preset("student-b0-bert-mini").text.vocabulary_size
            == get_preset("align-base").text.vocabulary_size)
    assert (get_preset("student-b0-trimmed").text.vocabulary_size
            < get_preset("malign-b7-mbert").text.vocabulary_size)


def test_every_student_preset_is_small_or_has_a_small_trimmed_form():
    for name in PRESETS:
        if not name.startswith("student-"):
            continue
        assert (name in STUDENT_TEACHERS) != (name in TRIMMED_FORMS), name
    for full, trimmed in TRIMMED_FORMS.items():
        assert trimmed in STUDENT_TEACHERS
        a, b = get_preset(full), get_preset(trimmed)
        assert a.text.vocabulary_size > b.text.vocabulary_size
        assert dataclasses.replace(a, text=dataclasses.replace(
            a.text, vocabulary_size=b.text.vocabulary_size)) == b
        # The full-vocabulary form really is not small: that is why it is listed here.
        assert 4 * count_preset_weights(full) > count_preset_weights(STUDENT_TEACHERS[trimmed])


def test_the_token_embedding_is_what_trimming_saves():
    full, trimmed = weight_breakdown("student-b0-small"), weight_breakdown("student-b0-trimmed")
    assert full.token_embedding == 250_000 * 512 and trimmed.token_embedding == 32_000 * 512
    assert full.total - trimmed.total == (250_000 - 32_000) * 512
    assert full.image_tower == trimmed.image_tower and full.text_rest == trimmed.text_rest


def test_max_vocabulary_within_a_budget_is_the_largest_that_fits():
    for student, teacher in STUDENT_TEACHERS.items():
        budget = count_preset_weights(teacher) // 4
        largest = max_vocabulary_within(student, budget)
        assert count_preset_weights(student, vocabulary_size=largest) <= budget
        assert count_preset_weights(student, vocabulary_size=largest + 1) > budget
    with pytest.raises(ValueError, match="already reach the budget of 1,000"):
        max_vocabulary_within("student-b0-trimmed", 1000)


def test_counting_takes_names_configs_and_overrides_and_names_bad_input():
    assert (count_preset_weights("tiny", vocabulary_size=2000)
            == count_preset_weights(get_preset("tiny")) + 1000 * 32)
    assert (count_preset_weights(get_preset("tiny"), hidden_dim=64, **{"text.projection_dim": 32})
            == count_preset_weights("tiny", hidden_dim=64, **{"text.projection_dim": 32}))
    with pytest.raises(ConfigError, match="unknown preset 'student-b9'"):
        count_preset_weights("student-b9")
    with pytest.raises(ConfigError, match="unknown field 'colour'"):
        count_preset_weights("tiny", colour="red")
    with pytest.raises(TypeError, match="a preset name or a ModelConfig, got dict"):
        count_preset_weights({"image": {}})


def _docstring_rows() -> dict[str, list[str]]:
    rows = {}
    for line in presets.__doc__.splitlines():
        match = re.match(r"``([\w-]+)``\s+([\d,]+)\s+([\d,]+)\s+([\d,]+)\s+([\d,]+)\s*(.*)$", line)
        if match:
            rows[match.group(1)] = list(match.groups()[1:])
    return rows


def test_the_docstring_table_is_what_the_counting_function_computes():
    rows = _docstring_rows()
    assert sorted(rows) == sorted(PRESETS)
    for name, (total, token, image, text, share) in rows.items():
        parts = weight_breakdown(name)
        assert [total, token, image, text] == [
            f"{parts.total:,}", f"{parts.token_embedding:,}", f"{parts.image_tower:,}",
            f"{parts.text_tower:,}"], name
        teacher = STUDENT_TEACHERS.get(name) or STUDENT_TEACHERS.get(TRIMMED_FORMS.get(name, ""))
        if teacher:
            ratio = parts.total / count_preset_weights(teacher)
            assert share == f"{ratio:.3f} of {teacher}", name
        else:
            assert share == "", name


# Imports the presets as the console script does before TensorFlow loads (packages stubbed,
# see malign_launcher) and reports what got imported.
_NO_TF_PROBE = """
import json, sys
import malign_launcher
malign_launcher._stub_packages()
from malign.presets import PRESETS, count_preset_weights, get_preset
counts = {name: count_preset_weights(name) for name in PRESETS}
dims = {name: get_preset(name).image_embedding_dim for name in PRESETS}
heavy = sorted(m for m in ("tensorflow", "keras", "keras_hub", "numpy") if m in sys.modules)
print(json.dumps({"counts": counts, "dims": dims, "heavy": heavy}))
"""


def test_counting_and_config_checks_import_no_tensorflow():
    result = subprocess.run([sys.executable, "-c", _NO_TF_PROBE], capture_output=True, text=True,
                            timeout=60, env=dict(os.environ))
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["heavy"] == []
    assert report["counts"] == {name: count_preset_weights(name) for name in PRESETS}
    assert report["dims"]["malign-b7-mbert"] == 640 and report["dims"]["tiny"] == 32


def test_a_bad_model_setting_is_refused_by_the_launcher_without_tensorflow():
    """A width mismatch needs the EfficientNet width: it is computed without TensorFlow."""
    probe = """
import json, sys
import malign_launcher
try:
    code = malign_launcher.main(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
heavy = sorted(m for m in ("tensorflow", "keras", "keras_hub") if m in sys.modules)
print(json.dumps({"code": code, "heavy": heavy}))
"""
    result = subprocess.run(
        [sys.executable, "-c", probe, "train", "--preset", "student-b0-trimmed", "--set",
         "model.text.projection_dim=512"], capture_output=True, text=True, timeout=60,
        env=dict(os.environ))
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"code": 2, "heavy": []}, result.stdout + result.stderr
    assert ("model.text.projection_dim: the text embedding width (512) must equal the image "
            "embedding width (640" in result.stdout + result.stderr)
