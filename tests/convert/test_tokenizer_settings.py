"""A converted checkpoint tokenizes as its own tokenizer.json says: case, accents, added tokens."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from malign.convert import transformers_align_tokenizer
from malign.convert.checkpoint import ConversionError
from malign.text import tokenizer_from_file, wordpiece_settings

tokenizers = pytest.importorskip("tokenizers")

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "align_tiny"
TEXTS = ["A Photo of a CAT", "Ünïcödé café <cat> on a mat", "a<cat>b [MASK] Dog", "",
         "naïve Straße 東京 <CAT>", "zero\u200bwidth and soft\u00adhyphen"]


def _checkpoint(tmp_path: Path, lowercase: bool, strip_accents: bool | None) -> Path:
    """The fixture with another normaliser setting and one added token, ``<cat>``."""
    directory = tmp_path / f"ckpt-{lowercase}-{strip_accents}"
    shutil.copytree(FIXTURE, directory)
    vocab = (directory / "vocab.txt").read_text(encoding="utf-8").splitlines()
    spec = json.loads((directory / "tokenizer.json").read_text(encoding="utf-8"))
    spec["normalizer"].update(lowercase=lowercase, strip_accents=strip_accents)
    spec["added_tokens"].append({"id": len(vocab), "content": "<cat>", "single_word": False,
                                 "lstrip": False, "rstrip": False, "normalized": False,
                                 "special": False})
    spec["model"]["vocab"]["<cat>"] = len(vocab)
    (directory / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    (directory / "vocab.txt").write_text("\n".join([*vocab, "<cat>"]) + "\n", encoding="utf-8")
    return directory


@pytest.mark.parametrize("lowercase,strip_accents", [(False, None), (False, True), (True, False)])
def test_converted_tokenizer_follows_tokenizer_json(tmp_path, lowercase, strip_accents):
    directory = _checkpoint(tmp_path, lowercase, strip_accents)
    settings = wordpiece_settings(directory)
    assert settings["lowercase"] is lowercase and "<cat>" in settings["added_tokens"]
    reference = tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json"))
    reference.enable_truncation(16)
    reference.enable_padding(length=16, pad_id=0)
    want = np.array([e.ids for e in reference.encode_batch(TEXTS)])
    # The converter's tokenizer and the one eval/export build from the copied vocab.txt.
    for tokenizer in (transformers_align_tokenizer(directory, sequence_length=16),
                      tokenizer_from_file(directory / "vocab.txt", 16)):
        got = tokenizer(TEXTS)
        np.testing.assert_array_equal(got["token_ids"].numpy(), want)
        np.testing.assert_array_equal(got["padding_mask"].numpy(), (want != 0).astype(np.int32))


@pytest.mark.parametrize("edit,message", [
    (lambda spec: spec.update(normalizer={"type": "Sequence", "normalizers": []}),
     "normalizer 'Sequence' is not supported"),
    (lambda spec: spec["normalizer"].update(handle_chinese_chars=False),
     "handle_chinese_chars=false is not supported"),
    (lambda spec: spec.update(pre_tokenizer={"type": "Whitespace"}),
     "pre_tokenizer 'Whitespace' is not supported"),
    (lambda spec: spec["added_tokens"][0].update(normalized=True),
     "normalized"),
])
def test_unsupported_tokenizer_settings_are_named(tmp_path, edit, message):
    directory = tmp_path / "ckpt"
    shutil.copytree(FIXTURE, directory)
    spec = json.loads((directory / "tokenizer.json").read_text(encoding="utf-8"))
    edit(spec)
    (directory / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    with pytest.raises(ConversionError, match=message) as error:
        transformers_align_tokenizer(directory)
    assert "tokenizer.json" in str(error.value)
    (directory / "tokenizer.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="tokenizer.json is not valid JSON"):
        tokenizer_from_file(directory / "vocab.txt", 16)
