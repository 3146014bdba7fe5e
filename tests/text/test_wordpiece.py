"""WordPieceTokenizer: the malign interface, vocabulary checks, saving (parity with tokenizers:
test_wordpiece_parity.py)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from malign.text import WordPieceTokenizer

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "circle", "##s", "on",
         "the", "blue", "square", "two", "dog", "run", "##ning", ".", "é"]


def test_ids_and_special_tokens():
    tok = WordPieceTokenizer(VOCAB, sequence_length=8)
    assert (tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id,
            tok.mask_token_id, tok.vocabulary_size) == (0, 1, 2, 3, 4, len(VOCAB))
    out = tok(["Two red circles.", "A dog running on the blue square", "zebra"])
    ids, mask = out["token_ids"].numpy(), out["padding_mask"].numpy()
    assert ids.dtype == np.int32 and mask.dtype == np.int32
    assert ids[0].tolist() == [2, 13, 6, 7, 8, 17, 3, 0]
    assert mask[0].tolist() == [1, 1, 1, 1, 1, 1, 1, 0]
    assert ids[1].tolist() == [2, 5, 14, 15, 16, 9, 10, 3]  # truncated, [SEP] kept
    assert ids[2].tolist() == [2, 1, 3, 0, 0, 0, 0, 0]  # unknown word -> [UNK]


def test_special_ids_come_from_the_vocabulary(tmp_path):
    shuffled = ["a", "[SEP]", "[UNK]", "dog", "[CLS]", "[MASK]", "[PAD]"]
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(shuffled) + "\n", encoding="utf-8")
    tok = WordPieceTokenizer(path, sequence_length=5)
    assert (tok.cls_token_id, tok.sep_token_id, tok.pad_token_id, tok.unk_token_id) == (4, 1, 6, 2)
    assert tok(["a dog"])["token_ids"].numpy().tolist() == [[4, 0, 3, 1, 6]]


def test_missing_special_tokens_fail_loudly():
    with pytest.raises(ValueError, match=r"lacks the special token\(s\) \[MASK\]"):
        WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a"])


def test_keras_save_and_load(tmp_path):
    tok = WordPieceTokenizer(VOCAB, sequence_length=8, lowercase=True)
    inputs = keras.Input(shape=(), dtype="string")
    model = keras.Model(inputs, tok(inputs))
    model.save(tmp_path / "wp.keras")
    loaded = keras.models.load_model(tmp_path / "wp.keras")
    texts = tf.constant(["Two BLUE squares", "a dog"])
    np.testing.assert_array_equal(loaded(texts)["token_ids"], model(texts)["token_ids"])
    layer = [x for x in loaded.layers if isinstance(x, WordPieceTokenizer)][0]
    assert layer.vocabulary == VOCAB and layer.lowercase


def test_in_tf_data():
    tok = WordPieceTokenizer(VOCAB, sequence_length=6)
    ds = tf.data.Dataset.from_tensor_slices(["a red circle", "two dogs"]).batch(2).map(tok)
    batch = next(iter(ds))
    assert batch["token_ids"].shape == (2, 6)
    assert batch["token_ids"].numpy()[0].tolist() == [2, 5, 6, 7, 3, 0]


def test_added_tokens_and_settings_survive_save_and_load(tmp_path):
    vocab = VOCAB + ["<cat>", "café"]
    tok = WordPieceTokenizer(vocab, sequence_length=8, strip_accents=False,
                             added_tokens=["[MASK]", "<cat>"])
    texts = tf.constant(["a<cat>CAFÉ [MASK][CLS]"])
    want = tok(texts)["token_ids"].numpy()
    # <cat> and [MASK] whole; [CLS] is not an added token here: "[", "cls", "]" (unknown, cut).
    assert want.tolist() == [[2, 5, 19, 20, 4, 1, 1, 3]]
    inputs = keras.Input(shape=(), dtype="string")
    keras.Model(inputs, tok(inputs)).save(tmp_path / "wp.keras")
    loaded = keras.models.load_model(tmp_path / "wp.keras")
    np.testing.assert_array_equal(loaded(texts)["token_ids"], want)
    layer = [x for x in loaded.layers if isinstance(x, WordPieceTokenizer)][0]
    assert (layer.added_tokens, layer.lowercase, layer.strip_accents) == (("[MASK]", "<cat>"), True, False)


def test_bad_added_tokens_fail_loudly():
    with pytest.raises(ValueError, match=r"added token\(s\) <dog> are not in the vocabulary"):
        WordPieceTokenizer(VOCAB, added_tokens=["[MASK]", "<dog>"])
    with pytest.raises(ValueError, match="non-empty and hold no NUL"):
        WordPieceTokenizer(VOCAB, added_tokens=["[MASK]", ""])
    with pytest.raises(TypeError, match="list of tokens"):
        WordPieceTokenizer(VOCAB, added_tokens="[MASK]")


def test_invalid_utf8_names_the_positions():
    tok = WordPieceTokenizer(VOCAB, sequence_length=8)
    with pytest.raises(tf.errors.InvalidArgumentError, match="WordPieceTokenizer input is not valid UTF-8"):
        tok(tf.constant([b"a dog", b"caf\xe9", b"\xff"]))


def test_detokenize():
    tok = WordPieceTokenizer(VOCAB, sequence_length=10)
    out = tok.detokenize(tok(["Two red circles.", "a [MASK] dog"])["token_ids"]).numpy().tolist()
    assert out == [b"two red circles .", b"a [MASK] dog"]
