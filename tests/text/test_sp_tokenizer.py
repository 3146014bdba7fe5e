"""SentencePieceTokenizer: parity with the sentencepiece package, packing, special-token checks,
serialisation (.keras and SavedModel), tf.data and tf.function use."""

from __future__ import annotations

import gzip

import hypothesis
import hypothesis.strategies as st
import keras
import numpy as np
import pytest
import sentencepiece as spm
import tensorflow as tf

import malign.text
from malign.text import SentencePieceTokenizer


def _reference(processor: spm.SentencePieceProcessor, texts, length: int):
    """[CLS] + sentencepiece ids + [SEP], truncated/padded, as the layer should produce."""
    ids = np.zeros([len(texts), length], np.int32)
    mask = np.zeros([len(texts), length], np.int32)
    for i, text in enumerate(texts):
        row = [2] + processor.encode(text)[: length - 2] + [3]
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return ids, mask


@pytest.fixture(scope="module")
def processor(vocab_path):
    return spm.SentencePieceProcessor(model_file=str(vocab_path))


def test_special_token_ids_are_fixed(sp_tokenizer, processor):
    assert (sp_tokenizer.pad_token_id, sp_tokenizer.unk_token_id, sp_tokenizer.cls_token_id,
            sp_tokenizer.sep_token_id, sp_tokenizer.mask_token_id) == (0, 1, 2, 3, 4)
    assert [processor.id_to_piece(i) for i in range(5)] == list(malign.text.SPECIAL_TOKENS)
    assert sp_tokenizer.vocabulary_size == 1000 == processor.get_piece_size()
    assert sp_tokenizer.sequence_length == 32
    assert sp_tokenizer.id_to_token(2) == "[CLS]"


@pytest.mark.parametrize("script", ["latin", "cyrillic", "cjk", "arabic", "mixed"])
def test_ids_equal_sentencepiece(sp_tokenizer, processor, multiscript_sentences, script):
    texts = multiscript_sentences[script]
    assert len(texts) >= 50
    out = sp_tokenizer(tf.constant(texts))
    ids, mask = _reference(processor, texts, sp_tokenizer.sequence_length)
    np.testing.assert_array_equal(out["token_ids"].numpy(), ids)
    np.testing.assert_array_equal(out["padding_mask"].numpy(), mask)
    # Unpacked too: no truncation involved.
    ragged = sp_tokenizer.tokenize(texts).to_list()
    assert ragged == [processor.encode(t) for t in texts]


def test_ids_equal_sentencepiece_on_multi30k(sp_tokenizer, processor, multi30k_mini):
    texts = []
    for lang in ("en", "de", "fr", "cs"):
        with gzip.open(multi30k_mini / "data" / "task1" / "raw" / f"val.{lang}.gz", "rt",
                       encoding="utf-8") as handle:
            texts += handle.read().splitlines()
    assert len(texts) == 4 * 242
    ragged = sp_tokenizer.tokenize(texts).to_list()
    assert ragged == [processor.encode(t) for t in texts]


@hypothesis.settings(max_examples=150, deadline=None)
@hypothesis.given(st.lists(st.text(max_size=40), min_size=1, max_size=4))
def test_ids_equal_sentencepiece_on_any_unicode(sp_tokenizer, processor, texts):
    ids = sp_tokenizer.tokenize([t.encode("utf-8") for t in texts]).to_list()
    assert ids == [processor.encode(t) for t in texts]
    # Byte fallback: nothing is ever unknown.
    assert all(i != sp_tokenizer.unk_token_id for row in ids for i in row)


def test_packing_truncates_and_pads(vocab_path):
    tok = SentencePieceTokenizer(vocab_path, sequence_length=6)
    out = tok(["", "a red circle on a white background with many many words"])
    ids, mask = out["token_ids"].numpy(), out["padding_mask"].numpy()
    assert ids.dtype == np.int32 and mask.dtype == np.int32
    assert ids[0].tolist() == [2, 3, 0, 0, 0, 0]
    assert mask[0].tolist() == [1, 1, 0, 0, 0, 0]
    assert ids[1, 0] == 2 and ids[1, -1] == 3 and mask[1].tolist() == [1] * 6
    # A caption far longer than the sequence length is cut, never an error.
    long = tok(["word " * 5000])
    assert long["token_ids"].shape == (1, 6)


def test_input_forms(sp_tokenizer):
    batch = sp_tokenizer(["two red circles", "ein Hund"])
    scalar = sp_tokenizer("two red circles")
    column = sp_tokenizer(tf.constant([["two red circles"], ["ein Hund"]]))
    assert scalar["token_ids"].shape == (32,)
    np.testing.assert_array_equal(scalar["token_ids"], batch["token_ids"][0])
    np.testing.assert_array_equal(column["token_ids"], batch["token_ids"])
    with pytest.raises(ValueError, match="rank-1 batch"):
        sp_tokenizer(tf.constant([["a", "b"]]))


def test_invalid_utf8_does_not_crash(sp_tokenizer, processor):
    out = sp_tokenizer(tf.constant([b"caf\xe9 \xff\xfe", b"ok"]))
    assert out["padding_mask"].numpy()[0].sum() > 2
    # Invalid bytes are encoded (as the bytes of U+FFFD) exactly as sentencepiece does.
    for raw in (b"caf\xe9", b"\xff\xfe x", b"\xc3("):
        assert sp_tokenizer.tokenize([raw]).to_list()[0] == processor.encode(raw)


def test_detokenize_round_trip(sp_tokenizer):
    texts = ["Zwei rote Kreise auf weißem Hintergrund", "Коричневая собака", "一只狗"]
    back = sp_tokenizer.detokenize(sp_tokenizer(texts)["token_ids"]).numpy()
    assert [b.decode("utf-8") for b in back] == texts


def test_missing_special_tokens_fail_loudly(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"a red circle number {i} on a blue field" for i in range(200)))
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(tmp_path / "plain"), vocab_size=40,
        model_type="unigram", minloglevel=2,  # default specials: <unk>, <s>, </s>; no [CLS]...
    )
    with pytest.raises(ValueError, match=r"lacks the special token\(s\) \[CLS\], \[SEP\], "
                                         r"\[PAD\], \[MASK\], \[UNK\]"):
        SentencePieceTokenizer(tmp_path / "plain.model")
    with pytest.raises(FileNotFoundError):
        SentencePieceTokenizer(tmp_path / "missing.model")
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        SentencePieceTokenizer(b"definitely not a model")
    with pytest.raises(ValueError, match="sequence_length"):
        SentencePieceTokenizer(tmp_path / "plain.model", sequence_length=1)


def test_unloaded_layer_says_so():
    tok = SentencePieceTokenizer(None)
    with pytest.raises(ValueError, match="has no vocabulary"):
        tok(["x"])


def test_proto_as_bytes(vocab_path, sp_tokenizer):
    tok = SentencePieceTokenizer(vocab_path.read_bytes(), sequence_length=32)
    text = ["a blue star"]
    np.testing.assert_array_equal(tok(text)["token_ids"], sp_tokenizer(text)["token_ids"])


def test_keras_save_and_load(tmp_path, vocab_path):
    tok = SentencePieceTokenizer(vocab_path, sequence_length=16)
    inputs = keras.Input(shape=(), dtype="string")
    model = keras.Model(inputs, tok(inputs))
    path = tmp_path / "tok.keras"
    model.save(path)
    # The archive carries the vocabulary: delete nothing needed, load elsewhere.
    loaded = keras.models.load_model(path)
    texts = tf.constant(["Deux étoiles rouges sur fond blanc", "ثلاث دوائر حمراء"])
    for key in ("token_ids", "padding_mask"):
        np.testing.assert_array_equal(loaded(texts)[key], model(texts)[key])
    layer = [x for x in loaded.layers if isinstance(x, SentencePieceTokenizer)][0]
    assert layer.sequence_length == 16 and layer.cls_token_id == 2
    assert layer.get_config()["sequence_length"] == 16


def test_saved_model_signature(tmp_path, sp_tokenizer):
    class Module(tf.Module):
        def __init__(self, tokenizer):
            super().__init__()
            self.tokenizer = tokenizer

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def tokenize(self, texts):
            return self.tokenizer(texts)

    path = str(tmp_path / "saved")
    tf.saved_model.save(Module(sp_tokenizer), path)
    assert not tf.io.gfile.listdir(path + "/assets")  # the proto lives in the graph
    loaded = tf.saved_model.load(path)
    texts = tf.constant(["Tři modré hvězdy na černém pozadí", "", "两个男人"])
    for key in ("token_ids", "padding_mask"):
        np.testing.assert_array_equal(loaded.tokenize(texts)[key], sp_tokenizer(texts)[key])


def test_inside_tf_data_and_tf_function(sp_tokenizer):
    texts = ["a red circle", "ein blaues Quadrat", "une étoile verte"]
    ds = tf.data.Dataset.from_tensor_slices(texts).batch(2).map(sp_tokenizer)
    assert ds.element_spec["token_ids"].shape.as_list() == [None, 32]
    rows = np.concatenate([b["token_ids"] for b in ds.as_numpy_iterator()])
    fn = tf.function(sp_tokenizer, input_signature=[tf.TensorSpec([None], tf.string)])
    np.testing.assert_array_equal(rows, fn(tf.constant(texts))["token_ids"])
    single = tf.data.Dataset.from_tensor_slices(texts).map(sp_tokenizer)
    assert single.element_spec["padding_mask"].shape.as_list() == [32]


def test_a_tokenizer_path_that_is_not_a_file_says_what_to_give(tmp_path):
    from malign.text import tokenizer_from_file

    with pytest.raises(FileNotFoundError, match="is a directory: give the file"):
        tokenizer_from_file(tmp_path, 16)
    with pytest.raises(FileNotFoundError, match=r"tokenizer not found: .*nope\.model \(a "
                                                 r"SentencePiece \.model or a WordPiece vocab"):
        tokenizer_from_file(tmp_path / "nope.model", 16)
