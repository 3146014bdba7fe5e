"""Towers and AlignModel: config round-trips, .keras save/load, presets, bad configs."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from distributed_helpers import make_batch

import malign
from malign.config import ConfigError, ExperimentConfig, ModelConfig
from malign.models import ImageTower, TextTower, count_params
from malign.models.image_tower import block_specs, round_filters
from malign.presets import count_preset_weights, get_preset, list_presets


@pytest.fixture(scope="module")
def batch():
    return make_batch(3, seed=5)


def test_model_config_round_trip(tiny_model):
    config = tiny_model.get_config()
    rebuilt = malign.AlignModel.from_config(config)
    assert rebuilt.get_config() == config
    assert ModelConfig.from_dict(config["config"]) == tiny_model.model_config
    for tower in (tiny_model.image_tower, tiny_model.text_tower):
        again = type(tower).from_config(tower.get_config())
        assert again.get_config() == tower.get_config()
        assert count_params(again) == count_params(tower)


def test_embeddings_are_normalised_float32(tiny_model, batch):
    out = tiny_model(batch)
    for key in ("image_embeddings", "text_embeddings"):
        emb = out[key].numpy()
        assert emb.dtype == np.float32 and emb.shape == (3, tiny_model.embedding_dim)
        np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(tiny_model.embed_image(batch["image"]),
                               out["image_embeddings"], atol=1e-6)
    np.testing.assert_allclose(tiny_model.embed_text(batch), out["text_embeddings"], atol=1e-6)


def test_keras_save_load_same_embeddings(batch, tmp_path):
    tiny_model = malign.AlignModel.from_preset("tiny")
    # Move the batch-norm statistics and temperature off their initial values first, so
    # that a load that silently skipped them would fail.
    tiny_model.temperature_variable.assign(0.25)
    for w in tiny_model.image_tower.weights:
        if "moving_mean" in w.path:
            w.assign(np.full(w.shape, 0.1, "float32"))
    path = tmp_path / "tiny.keras"
    tiny_model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, malign.AlignModel)
    want, got = tiny_model(batch), loaded(batch)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], atol=1e-6)
    assert float(loaded.temperature) == pytest.approx(0.25)


def test_temperature_is_bounded_after_updates():
    model = malign.AlignModel.from_preset("tiny", min_temperature=0.01, max_temperature=2.0)
    opt = keras.optimizers.SGD(1000.0)
    opt.apply_gradients([(np.float32(1.0), model.temperature_variable)])
    assert float(model.temperature_variable.numpy()) == pytest.approx(0.01)
    opt.apply_gradients([(np.float32(-1.0), model.temperature_variable)])
    assert float(model.temperature_variable.numpy()) == pytest.approx(2.0)


def test_properties_and_overrides():
    model = malign.AlignModel.from_preset("tiny", image_size=48, sequence_length=8,
                                          vocabulary_size=500)
    assert (model.image_size, model.sequence_length, model.vocabulary_size,
            model.embedding_dim) == (48, 8, 500, 32)


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_builds_and_reports_parameters(name):
    model = malign.AlignModel.from_preset(name)
    n = count_params(model)
    print(f"preset {name}: {n:,} parameters")
    # Exactly the arithmetic of malign.presets.count_preset_weights (no model built).
    assert n == count_preset_weights(name)
    assert model.embedding_dim == model.text_tower.output_dim


def test_align_base_layout():
    cfg = get_preset("align-base").image
    specs = block_specs(cfg)
    assert len(specs) == 55
    assert round_filters(cfg.stem_filters, 2.0, 8) == 64
    assert specs[-1]["filters_out"] == 640 and cfg.top_filters == 0


def test_image_tower_top_conv_and_projection():
    cfg = get_preset("tiny").image.replace(top_filters=48, projection_dim=24)
    tower = ImageTower(cfg)
    assert tower.output_dim == 24
    assert tower.get_layer("top_conv").filters == 48
    assert tower(np.zeros((1, 32, 32, 3), "float32")).shape == (1, 24)


def test_text_tower_uses_cls_state():
    """Changing a non-CLS token changes the output only through attention, and the
    output equals the projection of the backbone's position-0 state."""
    tower = TextTower(get_preset("tiny").text)
    ids = np.array([[2, 9, 10, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]], "int32")
    mask = (ids > 0).astype("int32")
    seq = tower.backbone({"token_ids": ids, "segment_ids": np.zeros_like(ids),
                          "padding_mask": mask})["sequence_output"]
    proj = tower.get_layer("text_projection")
    np.testing.assert_allclose(tower({"token_ids": ids, "padding_mask": mask}),
                               proj(seq[:, 0, :]), atol=1e-6)


def test_unknown_preset_names_it():
    with pytest.raises(ConfigError, match="unknown preset 'nope'.*tiny"):
        malign.AlignModel.from_preset("nope")


def test_mismatched_embedding_widths_name_the_field():
    with pytest.raises(ConfigError, match=r"model.text.projection_dim.*\(16\).*\(32"):
        get_preset("tiny", **{"text.projection_dim": 16})


def test_ambiguous_and_unknown_overrides():
    with pytest.raises(ConfigError, match="'projection_dim' is ambiguous"):
        get_preset("tiny", projection_dim=16)
    with pytest.raises(ConfigError, match="unknown field 'colour'"):
        get_preset("tiny", colour="red")


@pytest.mark.parametrize("overrides, field", [
    ({"training.global_batch_size": 1}, "training.global_batch_size"),
    ({"training.optimizer": "sgd"}, "training.optimizer"),
    ({"model.image.image_size": 4}, r"model\.image\.image_size"),   # the path --set takes
    ({"model.text.num_heads": 3}, r"model\.text\.hidden_dim"),
    ({"training.steps": "many"}, "training.steps"),
    ({"training.warmup": 3}, "'training.warmup'"),
])
def test_bad_experiment_settings_name_the_field(overrides, field):
    exp = ExperimentConfig(model=get_preset("tiny"))
    with pytest.raises(ConfigError, match=field):
        exp.with_overrides(overrides)


def test_experiment_config_round_trip():
    exp = ExperimentConfig(name="x", preset="tiny", model=get_preset("tiny"))
    assert ExperimentConfig.from_dict(exp.to_dict()) == exp
