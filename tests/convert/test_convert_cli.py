"""``malign convert transformers-align`` end to end on the tiny transformers fixture."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

import malign
from malign import cli
from malign.evaluation.commands import find_tokenizer, load_tokenizer, model_tokenizer_path

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "align_tiny"
REFERENCE = np.load(FIXTURE / "reference.npz")


def test_cli_converts_and_eval_finds_the_tokenizer(tmp_path, capsys):
    out = tmp_path / "align" / "model.keras"
    code = cli.main(["convert", "transformers-align", "--src", str(FIXTURE), "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "converted 175 tensors" in printed and "centre crop 67x67" in printed

    record = json.loads((tmp_path / "align" / "model.conversion.json").read_text())
    assert record["tensors"] == 175 and record["tokenizer"]["lowercase"] is True
    assert record["image_processor"]["resize"] == [80, 80]
    assert record["eval_resize"] == "square" and record["eval_crop_mismatch"] is None
    assert "eval_resize=square (malign eval and export), the processor's crop" in printed
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json"):  # travel together
        assert (tmp_path / "align" / name).read_bytes() == (FIXTURE / name).read_bytes()
    # The vocabulary's fingerprint: eval and export refuse any other tokenizer file.
    sha256 = hashlib.sha256((FIXTURE / "vocab.txt").read_bytes()).hexdigest()
    assert record["tokenizer"]["sha256"] == sha256
    fingerprint = json.loads((tmp_path / "align" / "tokenizer-fingerprint.json").read_text())
    assert fingerprint["sha256"] == sha256 and fingerprint["file"] == "vocab.txt"
    with pytest.raises(ValueError, match="--force-tokenizer"):
        model_tokenizer_path(str(out), str(malign.text.test_vocab_path()))

    model = keras.saving.load_model(out)
    images = REFERENCE["images_uint8"].astype(np.float32) / np.float32(255.0)
    image = model.embed_image(images).numpy()
    assert np.abs(image - REFERENCE["image_embeds"]).max() <= 1e-4

    # `malign eval` finds vocab.txt next to the model and builds the WordPiece tokenizer.
    path = find_tokenizer(str(out))
    assert path == (tmp_path / "align" / "vocab.txt").resolve()
    tokenizer = load_tokenizer(path, model)
    ids = tokenizer(["A photo of a cat."])["token_ids"].numpy()
    np.testing.assert_array_equal(ids, REFERENCE["input_ids"][:1])
    text = model.embed_text(tokenizer(["A photo of a cat."])).numpy()
    assert np.abs(text - REFERENCE["text_embeds"][:1]).max() <= 1e-4


def test_cli_refuses_to_overwrite_or_shadow(tmp_path, capsys):
    out = tmp_path / "model.keras"
    out.write_bytes(b"old")
    args = ["convert", "transformers-align", "--src", str(FIXTURE), "--out", str(out)]
    assert cli.main(args) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    (tmp_path / "tokenizer.model").write_bytes(b"sp")
    assert cli.main(args + ["--overwrite"]) == 2
    assert "would take it as this model's tokenizer" in capsys.readouterr().err
    assert cli.main(args[:-1] + [str(tmp_path / "model.h5")]) == 2
    assert "must end in .keras" in capsys.readouterr().err


def test_cli_names_the_missing_weight(tmp_path, capsys):
    from safetensors.numpy import load_file, save_file

    src = tmp_path / "ckpt"
    shutil.copytree(FIXTURE, src)
    weights = load_file(str(src / "model.safetensors"))
    del weights["text_model.embeddings.LayerNorm.bias"]
    save_file(weights, str(src / "model.safetensors"))
    code = cli.main(["convert", "transformers-align", "--src", str(src),
                     "--out", str(tmp_path / "out" / "model.keras")])
    assert code == 2
    err = capsys.readouterr().err
    assert "checkpoint has no text_model.embeddings.LayerNorm.bias" in err
    assert not (tmp_path / "out" / "model.keras").exists()


@pytest.mark.parametrize("argv", [["convert", "--help"], ["convert", "transformers-align", "--help"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 0
    assert "transformers" in capsys.readouterr().out


def test_imported_model_exports_with_its_tokenizer(tmp_path):
    """The SavedModel of the imported model embeds raw captions as transformers does."""
    import tensorflow as tf

    import malign

    model = malign.convert.from_transformers_align(FIXTURE)
    tokenizer = malign.convert.transformers_align_tokenizer(FIXTURE)
    path = malign.export.export_saved_model(model, tokenizer, tmp_path / "export", version=1)
    loaded = tf.saved_model.load(str(path))
    out = loaded.signatures["embed_text"](text=tf.constant(["A photo of a cat."]))
    assert np.abs(out["embeddings"].numpy() - REFERENCE["text_embeds"][:1]).max() <= 1e-4
