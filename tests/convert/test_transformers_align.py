"""Import of the transformers ALIGN checkpoint: numeric parity and strict loading.

The fixture ``tests/fixtures/align_tiny`` is a randomly initialised transformers
``AlignModel`` (reduced EfficientNet with ``depthwise_padding`` entries and odd image
size 67, 2-layer BERT) with its reference outputs; ``make_align_fixture.py`` made it
with torch and transformers, which these tests do not need.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import malign
from malign import convert
from malign.models.align_model import count_params

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "align_tiny"
REFERENCE = np.load(FIXTURE / "reference.npz")
RECORD = json.loads((FIXTURE / "reference.json").read_text(encoding="utf-8"))


def _images() -> np.ndarray:
    return REFERENCE["images_uint8"].astype(np.float32) / np.float32(255.0)


def _text() -> dict[str, np.ndarray]:
    return {"token_ids": REFERENCE["input_ids"], "padding_mask": REFERENCE["attention_mask"]}


def _max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


@pytest.fixture(scope="module")
def imported() -> convert.AlignImport:
    return convert.import_transformers_align(FIXTURE)


@pytest.fixture(scope="module")
def outputs(imported) -> dict[str, np.ndarray]:
    model = imported.model
    image = model.embed_image(_images())
    text = model.embed_text(_text())
    return {
        "image_features": model.image_tower(_images()).numpy(),
        "text_features": model.text_tower(_text()).numpy(),
        "image_embeds": image.numpy(),
        "text_embeds": text.numpy(),
        "logits_per_image": model.similarity_logits(image, text).numpy(),
    }


# -- the converted config -------------------------------------------------------------------
def test_config_follows_the_checkpoint(imported):
    cfg = imported.model.model_config
    assert cfg.image.image_size == RECORD["image_size"] == 67
    assert cfg.image.depthwise_padding == tuple(RECORD["depthwise_padding"])
    assert (cfg.image.width_coefficient, cfg.image.depth_coefficient) == (0.25, 0.5)
    assert cfg.image.batch_norm_epsilon == 1e-3 and cfg.image.se_ratio == 0.25
    assert cfg.image.normalization == "minus_one_to_one"
    assert cfg.image.eval_resize == "square"  # the processor resizes to 80x80 (both sides)
    assert cfg.image.top_filters == 0 and cfg.image.projection_dim == 0
    assert len(malign.models.image_tower.block_specs(cfg.image)) == RECORD["vision_blocks"]
    assert (cfg.text.num_layers, cfg.text.hidden_dim, cfg.text.vocabulary_size) == (2, 32, 160)
    assert cfg.text.activation == "gelu"  # exact GELU, as transformers' "gelu"
    assert cfg.text.sequence_length == RECORD["sequence_length"]
    assert cfg.min_temperature <= RECORD["temperature"] <= cfg.max_temperature
    np.testing.assert_allclose(float(imported.model.temperature), RECORD["temperature"],
                               rtol=1e-6)
    assert imported.tensors == len(convert.read_transformers_weights(FIXTURE))
    assert imported.vocabulary == FIXTURE / "vocab.txt" and imported.lowercase


def test_odd_sizes_follow_the_transformers_padding_rules(imported):
    """Feature sizes entering the stem and each block equal transformers' (recorded)."""
    tower = imported.model.image_tower
    names = ["stem_pad"] + [f"block{i}_dwpad" if f"block{i}_dwpad" in
                            {layer.name for layer in tower.layers} else f"block{i}_dwconv"
                            for i in range(RECORD["vision_blocks"])]
    probe = keras.Model(tower.input, [tower.get_layer(n).input for n in names])
    sizes = [int(t.shape[1]) for t in probe(_images()[:1])]
    # The expansion conv keeps the size, so a block's depthwise input is its input size.
    assert sizes == RECORD["feature_sizes"]


# -- numeric parity -------------------------------------------------------------------------
def test_image_embeddings_match_transformers(outputs):
    assert _max_diff(outputs["image_embeds"], REFERENCE["image_embeds"]) <= 1e-4
    # Before normalisation too (relative: random weights give features up to ~80).
    scale = np.max(np.abs(REFERENCE["image_features"]))
    assert _max_diff(outputs["image_features"], REFERENCE["image_features"]) <= 1e-5 * scale


def test_text_embeddings_match_transformers(outputs):
    assert _max_diff(outputs["text_embeds"], REFERENCE["text_embeds"]) <= 1e-4
    assert _max_diff(outputs["text_features"], REFERENCE["text_features"]) <= 1e-4


def test_logits_match_transformers(outputs):
    assert outputs["logits_per_image"].shape == REFERENCE["logits_per_image"].shape == (3, 5)
    assert _max_diff(outputs["logits_per_image"], REFERENCE["logits_per_image"]) <= 1e-3


def test_model_call_gives_the_same_embeddings(imported, outputs):
    out = imported.model({"image": _images()[:3], **{k: v[:3] for k, v in _text().items()}})
    assert _max_diff(out["image_embeddings"], outputs["image_embeds"]) <= 1e-6
    assert _max_diff(out["text_embeddings"], outputs["text_embeds"][:3]) <= 1e-6


# -- save / reload ----------------------------------------------------------------------------
def test_converted_model_saves_and_reloads_equal(imported, outputs, tmp_path):
    path = tmp_path / "align.keras"
    imported.model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.model_config == imported.model.model_config
    assert loaded.model_config.image.eval_resize == "square"
    assert malign.data.model_eval_resize(loaded) == "square"
    for a, b in zip(loaded.weights, imported.model.weights):
        assert a.path == b.path
        np.testing.assert_array_equal(a.value.numpy(), b.value.numpy(), err_msg=a.path)
    image = loaded.embed_image(_images())
    text = loaded.embed_text(_text())
    np.testing.assert_array_equal(image.numpy(), outputs["image_embeds"])
    np.testing.assert_array_equal(text.numpy(), outputs["text_embeds"])  # exact GELU kept
    np.testing.assert_array_equal(loaded.similarity_logits(image, text).numpy(),
                                  outputs["logits_per_image"])


# -- strict loading -------------------------------------------------------------------------
def _copy_fixture(tmp_path: Path) -> Path:
    target = tmp_path / "ckpt"
    shutil.copytree(FIXTURE, target)
    return target


def _rewrite_weights(directory: Path, edit) -> None:
    from safetensors.numpy import load_file, save_file

    file = directory / "model.safetensors"
    weights = load_file(str(file))
    edit(weights)
    save_file(weights, str(file), metadata={"format": "pt"})


def test_missing_weight_is_named(tmp_path):
    name = "vision_model.encoder.blocks.3.depthwise_conv.depthwise_norm.running_var"
    src = _copy_fixture(tmp_path)
    _rewrite_weights(src, lambda w: w.pop(name))
    with pytest.raises(convert.ConversionError, match=r"checkpoint has no " + name.replace(
            ".", r"\.") + r" \(needed for model weight image_tower/block3_dw_bn/moving_variance"):
        convert.from_transformers_align(src)


def test_renamed_weight_is_named_both_ways(tmp_path):
    old = "text_model.encoder.layer.1.attention.self.query.weight"
    new = "text_model.encoder.layer.1.attention.self.querry.weight"
    src = _copy_fixture(tmp_path)
    _rewrite_weights(src, lambda w: w.__setitem__(new, w.pop(old)))
    with pytest.raises(convert.ConversionError) as info:
        convert.from_transformers_align(src)
    message = str(info.value)
    assert f"checkpoint has no {old}" in message
    assert "text_tower/transformer_layer_1/self_attention_layer/query/kernel" in message
    assert f"checkpoint weight {new} (32, 32) is not used" in message
    assert "2 problem(s)" in message


def test_extra_weight_is_named(tmp_path):
    src = _copy_fixture(tmp_path)
    _rewrite_weights(src, lambda w: w.__setitem__("vision_model.top_conv.weight",
                                                  np.zeros((4, 4, 1, 1), np.float32)))
    with pytest.raises(convert.ConversionError,
                       match=r"checkpoint weight vision_model\.top_conv\.weight \(4, 4, 1, 1\) "
                             r"is not used"):
        convert.from_transformers_align(src)


def test_shape_mismatch_is_named(tmp_path):
    src = _copy_fixture(tmp_path)
    _rewrite_weights(src, lambda w: w.__setitem__(
        "text_projection.weight", w["text_projection.weight"][:, :16].copy()))
    with pytest.raises(convert.ConversionError,
                       match=r"checkpoint text_projection\.weight has shape \(32, 16\); model "
                             r"weight text_tower/text_projection/kernel \(32, 32\) needs \(32, 32\)"):
        convert.from_transformers_align(src)


def test_model_weight_left_unset_is_named(imported):
    """A model with a weight the checkpoint cannot fill (sigmoid loss bias) is refused."""
    cfg = dataclasses.replace(imported.model.model_config, loss="sigmoid")
    model = malign.AlignModel(cfg)
    with pytest.raises(convert.ConversionError,
                       match="model weight logit_bias is not set by the checkpoint"):
        convert.load_transformers_align_weights(model, convert.read_transformers_weights(FIXTURE))


def test_known_buffers_are_ignored(tmp_path, imported):
    """Older checkpoints carry num_batches_tracked and position_ids buffers: not weights."""
    src = _copy_fixture(tmp_path)

    def add_buffers(w):
        w["vision_model.embeddings.batchnorm.num_batches_tracked"] = np.array(7, np.int64)
        w["text_model.embeddings.position_ids"] = np.arange(40, dtype=np.int64)[None]

    _rewrite_weights(src, add_buffers)
    model = convert.from_transformers_align(src)
    assert count_params(model) == count_params(imported.model)


def test_missing_files_and_foreign_configs_are_explained(tmp_path):
    with pytest.raises(convert.ConversionError, match="no config.json"):
        convert.from_transformers_align(tmp_path)
    src = _copy_fixture(tmp_path)
    (src / "model.safetensors").unlink()
    with pytest.raises(convert.ConversionError, match="no weights in .*model.safetensors"):
        convert.from_transformers_align(src)
    config = json.loads((src / "config.json").read_text())
    config["model_type"] = "clip"
    (src / "config.json").write_text(json.dumps(config))
    with pytest.raises(convert.ConversionError, match="model_type is 'clip', not 'align'"):
        convert.config_from_transformers_align(src)


def test_pytorch_bin_without_torch_says_so(tmp_path, monkeypatch):
    src = _copy_fixture(tmp_path)
    (src / "model.safetensors").rename(src / "pytorch_model.bin.unused")
    (src / "pytorch_model.bin").write_bytes(b"not read")
    monkeypatch.setitem(__import__("sys").modules, "torch", None)  # import torch fails
    with pytest.raises(convert.ConversionError, match="PyTorch pickle.*needs torch"):
        convert.read_transformers_weights(src)


def test_unsupported_settings_name_the_field(tmp_path):
    src = _copy_fixture(tmp_path)
    config = json.loads((src / "config.json").read_text())
    config["vision_config"]["pooling_type"] = "max"
    (src / "config.json").write_text(json.dumps(config))
    with pytest.raises(convert.ConversionError, match="vision_config.pooling_type: 'max'"):
        convert.config_from_transformers_align(src)
    config["vision_config"]["pooling_type"] = "mean"
    config["text_config"]["hidden_act"] = "relu"
    (src / "config.json").write_text(json.dumps(config))
    with pytest.raises(convert.ConversionError, match="text_config.hidden_act: 'relu'"):
        convert.config_from_transformers_align(src)


# -- tokenizer and image preprocessing -----------------------------------------------------
PLAIN_TEXTS = [t for t in RECORD["texts"] if t.isascii()]


def test_tokenizer_matches_transformers_bert_tokenizer():
    tokenizer = convert.transformers_align_tokenizer(FIXTURE)
    rows = [i for i, t in enumerate(RECORD["texts"]) if t.isascii()]
    out = tokenizer(PLAIN_TEXTS)
    np.testing.assert_array_equal(out["token_ids"].numpy(), REFERENCE["input_ids"][rows])
    np.testing.assert_array_equal(out["padding_mask"].numpy(), REFERENCE["attention_mask"][rows])
    assert tokenizer.cls_token_id == 101 and tokenizer.pad_token_id == 0  # BERT's ids


def test_tokenizer_strips_accents_like_bert_uncased():
    tokenizer = convert.transformers_align_tokenizer(FIXTURE)
    rows = [i for i, t in enumerate(RECORD["texts"]) if not t.isascii()]
    out = tokenizer([RECORD["texts"][i] for i in rows])
    np.testing.assert_array_equal(out["token_ids"].numpy(), REFERENCE["input_ids"][rows])


def test_image_preprocessing_matches_the_processor(imported):
    settings = imported.image_processor
    assert settings == convert.ImageProcessorSettings(
        resize=(RECORD["resize"],) * 2, crop=(67, 67), method="bilinear",
        normalization="minus_one_to_one")
    image = convert.processor_image_preprocess(REFERENCE["raw_image"], settings).numpy()
    assert image.shape == (67, 67, 3) and 0.0 <= image.min() and image.max() <= 1.0
    # The model sees 2x - 1; the processor's pixel_values are the same up to one grey level
    # (PIL's and TensorFlow's antialiased bilinear resizes round differently).
    diff = np.abs((2.0 * image - 1.0) - REFERENCE["processed_image"])
    assert diff.max() <= 2.0 / 255.0 + 1e-6
    assert diff.mean() <= 0.01


def test_evaluation_crop_is_the_processors_on_a_non_square_image(imported):
    """malign eval / export pixels of the converted model (eval_resize "square") are the
    processor's: equal to processor_image_preprocess, within one grey level of transformers."""
    from malign.data.preprocess import decode_and_crop, eval_crop

    model = imported.model
    raw = REFERENCE["raw_image"]  # 90x70: not square
    mode = malign.data.model_eval_resize(model)
    assert mode == "square" and imported.image_processor.eval_crop_mismatch(67) is None
    crop = eval_crop(raw, model.image_size, eval_resize=mode).numpy()
    np.testing.assert_array_equal(
        crop, convert.processor_image_preprocess(raw, imported.image_processor).numpy())
    png = tf.io.encode_png(raw)
    np.testing.assert_array_equal(
        decode_and_crop(png, model.image_size, training=False, eval_resize=mode).numpy(), crop)
    theirs = (REFERENCE["processed_image"].astype(np.float64) + 1.0) / 2.0  # back to [0, 1]
    assert _max_diff(crop, theirs) <= 1.0 / 255.0 + 1e-5
    # The shorter-side crop (the default) sees other pixels, and the embedding shows it.
    shorter = eval_crop(raw, model.image_size).numpy()
    assert _max_diff(shorter, theirs) > 0.5

    def embed(image):
        return model.embed_image(np.asarray(image, np.float32)[None]).numpy()

    reference = embed(theirs)
    assert _max_diff(embed(crop), reference) <= 0.02
    assert _max_diff(embed(shorter), reference) > 0.1


def test_eval_resize_follows_the_processor(tmp_path):
    src = _copy_fixture(tmp_path)
    nested = json.loads((src / "processor_config.json").read_text())
    (src / "processor_config.json").unlink()  # no processor file: align-base's 346 -> 289
    assert convert.config_from_transformers_align(src).image.eval_resize == "square"
    no_resize = dict(nested["image_processor"], do_resize=False)
    (src / "preprocessor_config.json").write_text(json.dumps(no_resize))
    assert convert.config_from_transformers_align(src).image.eval_resize == "shorter_side"
    assert "does not resize" in convert.read_image_processor(src).eval_crop_mismatch(67)
    # Another resize-to-crop ratio than 346/289: still "square", with a warning naming sizes.
    other = dict(nested["image_processor"], size={"height": 72, "width": 72})
    (src / "preprocessor_config.json").write_text(json.dumps(other))
    with pytest.warns(UserWarning, match="resizes to 72x72 and crops 67x67; malign evaluates "
                                         "with 80x80"):
        result = convert.import_transformers_align(src)
    assert result.model.model_config.image.eval_resize == "square"


def test_flat_preprocessor_config_is_read(tmp_path):
    """align-base ships preprocessor_config.json (flat), transformers 5 processor_config.json."""
    src = _copy_fixture(tmp_path)
    nested = json.loads((src / "processor_config.json").read_text())
    (src / "processor_config.json").unlink()
    flat = dict(nested["image_processor"], crop_size={"height": 63, "width": 63})
    (src / "preprocessor_config.json").write_text(json.dumps(flat))
    assert convert.read_image_processor(src).crop == (63, 63)
    assert convert.config_from_transformers_align(src).image.image_size == 63
    flat["include_top"] = True
    (src / "preprocessor_config.json").write_text(json.dumps(flat))
    with pytest.raises(convert.ConversionError, match="include_top"):
        convert.read_image_processor(src)


def test_align_base_settings():
    settings = convert.ImageProcessorSettings.align_base()
    assert (settings.resize, settings.crop, settings.image_size) == ((346, 346), (289, 289), 289)
    out = convert.processor_image_preprocess(np.zeros((300, 500, 3), np.uint8), settings)
    assert out.shape == (289, 289, 3)


def test_pytorch_bin_is_read_when_torch_is_installed(tmp_path, outputs):
    torch = pytest.importorskip("torch")
    from safetensors.numpy import load_file

    src = _copy_fixture(tmp_path)
    weights = load_file(str(src / "model.safetensors"))
    state = {k: torch.from_numpy(v) for k, v in weights.items()}
    state["vision_model.embeddings.batchnorm.num_batches_tracked"] = torch.tensor(3)
    torch.save(state, src / "pytorch_model.bin")
    (src / "model.safetensors").unlink()
    model = convert.from_transformers_align(src)
    assert _max_diff(model.embed_image(_images()), outputs["image_embeds"]) == 0.0


def test_converted_model_fine_tunes():
    """One fit step: the loss is finite, the towers and temperature train, the pooler does not."""
    model = convert.from_transformers_align(FIXTURE)
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    x = {"image": _images(), **{k: v[:3] for k, v in _text().items()}}
    pooler = model.text_tower.backbone.get_layer("pooled_dense").kernel.value.numpy()
    stem = model.image_tower.get_layer("stem_conv").kernel.value.numpy()
    history = model.fit(x, batch_size=3, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert not np.array_equal(model.image_tower.get_layer("stem_conv").kernel.value.numpy(), stem)
    np.testing.assert_array_equal(
        model.text_tower.backbone.get_layer("pooled_dense").kernel.value.numpy(), pooler)
    assert float(model.temperature) != pytest.approx(RECORD["temperature"], abs=1e-9)


def test_image_size_override_scales_the_processor():
    result = convert.import_transformers_align(FIXTURE, image_size=101, sequence_length=8)
    assert result.model.image_size == 101 and result.model.sequence_length == 8
    assert result.image_processor.crop == (101, 101)
    assert result.image_processor.resize == (round(80 * 101 / 67),) * 2
    assert result.model.embed_image(np.zeros((1, 101, 101, 3), np.float32)).shape == (1, 32)
