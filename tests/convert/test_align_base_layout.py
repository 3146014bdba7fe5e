"""The full-size kakaobrain/align-base layout, checked without its 700 MB of weights.

``tests/fixtures/align_base_layout`` holds align-base's ``config.json`` and
``preprocessor_config.json`` and the name and shape of every state-dict tensor of
transformers' ``AlignModel`` built from that config; ``reference.json`` holds its
parameter counts (``make_align_fixture.py`` made both with transformers).

Parameter-count mapping (exact):

- transformers parameters (172,117,841) include the BERT tanh pooler (590,592) and the
  temperature (1); batch-norm ``running_mean``/``running_var`` (305,600) are buffers.
- malign's Keras weights are the same tensors: trainable = parameters - pooler (the
  pooler is kept but frozen, since ALIGN embeds the [CLS] state); non-trainable =
  batch-norm moving mean/variance + pooler.
- not counted on either side: ``num_batches_tracked`` (162 step counters) and BERT's
  constant ``position_ids``/``token_type_ids`` buffers (1,024 ids), which hold no
  learned values.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
from pathlib import Path

import numpy as np
import pytest

import malign
from malign import convert
from malign.presets import get_preset

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
LAYOUT = FIXTURES / "align_base_layout"
COUNTS = json.loads((FIXTURES / "align_tiny" / "reference.json").read_text())["align_base"]


def _shapes() -> dict[str, tuple[int, ...]]:
    with gzip.open(LAYOUT / "state_dict_shapes.json.gz", "rt", encoding="utf-8") as f:
        return {name: tuple(shape) for name, shape in json.load(f).items()}


def test_align_base_config_converts_to_the_preset():
    converted = convert.config_from_transformers_align(LAYOUT)
    preset = get_preset("align-base")
    # The preset keeps keras-hub's tanh GELU; the import needs transformers' exact GELU.
    assert converted == dataclasses.replace(
        preset, text=dataclasses.replace(preset.text, activation="gelu"))
    assert len(malign.models.image_tower.block_specs(converted.image)) == COUNTS["vision_blocks"]
    settings = convert.read_image_processor(LAYOUT)
    assert settings == convert.ImageProcessorSettings.align_base()


@pytest.fixture(scope="module")
def align_base():
    return malign.AlignModel.from_preset("align-base")


def _count(weights) -> int:
    return int(sum(np.prod(w.shape) for w in weights))


def test_parameter_count_equals_transformers(align_base):
    trainable = _count(align_base.trainable_weights)
    non_trainable = _count(align_base.non_trainable_weights)
    pooler = COUNTS["parameters_text_pooler"]
    assert trainable == COUNTS["parameters"] - pooler == 171_527_249
    assert non_trainable == COUNTS["buffers_bn_running_stats"] + pooler == 896_192
    assert trainable + non_trainable == COUNTS["parameters"] + COUNTS[
        "buffers_bn_running_stats"] == 172_423_441
    assert _count(align_base.text_tower.get_layer("text_projection").weights) == COUNTS[
        "parameters_text_projection"]
    assert _count(align_base.image_tower.weights) == COUNTS["parameters_vision"] + COUNTS[
        "buffers_bn_running_stats"]


def test_every_align_base_tensor_maps_with_its_shape(align_base):
    """The state dict of the real architecture loads completely (zeros for values)."""
    shapes = _shapes()
    assert len(shapes) == COUNTS["state_dict_tensors"]
    weights = {name: np.zeros(shape, np.float32) for name, shape in shapes.items()
               if not name.endswith(convert.IGNORED_BUFFER_SUFFIXES)}
    assert len(shapes) - len(weights) == 162  # the num_batches_tracked counters
    copied = convert.load_transformers_align_weights(align_base, weights)
    assert copied == len(weights) == len(align_base.weights) == 1232
