"""Fuzzing the tokenizer layers with random Unicode: every text gives a well-formed row.

Any valid Unicode text (controls, NUL, combining marks, private use, astral characters,
right-to-left scripts, empty, very long) tokenizes to ``[CLS] pieces [SEP] [PAD]...``: ids
inside the vocabulary, a padding mask that is a prefix of ones, and the row of a text the
same alone as in a batch. Examples per test are few (fast enough for ``make test``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import malign.text
from malign.text.tokenizers import WordPieceTokenizer

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "align_tiny"
LENGTH = 16

# Every code point but the surrogates (not representable in UTF-8 text).
TEXTS = st.text(st.characters(exclude_categories=("Cs",)), max_size=200)
FUZZ = settings(max_examples=30, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
EDGE_CASES = ["", " ", "\x00", "\ufeff", "e\u0301" * 300, "🙂" * 3000, "a" * 20000,
              "שלום עולם", "\u200b\u00ad\u0007", "[CLS] [SEP] [PAD]", "\U0010ffff\ue000",
              "日本語のテキスト" * 100, "\r\n\t\x0b\x0c\x1c\x85\u2028"]


@pytest.fixture(scope="module", params=["sentencepiece", "wordpiece"])
def tokenizer(request):
    if request.param == "sentencepiece":
        layer = malign.text.SentencePieceTokenizer(malign.text.test_vocab_path(), LENGTH)
    else:
        layer = WordPieceTokenizer(FIXTURE / "vocab.txt", sequence_length=LENGTH)
    # In a graph, as the input pipeline and the SavedModel call it (and traced once).
    layer.graph = tf.function(layer.__call__, input_signature=[tf.TensorSpec([None], tf.string)])
    return layer


def _check_rows(tokenizer, texts: list[str]) -> np.ndarray:
    out = tokenizer.graph(tf.constant([t.encode("utf-8") for t in texts], tf.string))
    ids, mask = out["token_ids"].numpy(), out["padding_mask"].numpy()
    assert out["token_ids"].dtype == tf.int32 and out["padding_mask"].dtype == tf.int32
    assert ids.shape == mask.shape == (len(texts), LENGTH)
    assert ((ids >= 0) & (ids < tokenizer.vocabulary_size)).all()
    lengths = mask.sum(axis=1)
    for row, n in zip(range(len(texts)), lengths):
        assert 2 <= n <= LENGTH
        assert (mask[row, :n] == 1).all() and (mask[row, n:] == 0).all()  # a prefix of ones
        assert ids[row, 0] == tokenizer.cls_token_id and ids[row, n - 1] == tokenizer.sep_token_id
        assert (ids[row, n:] == tokenizer.pad_token_id).all()
        assert tokenizer.cls_token_id not in ids[row, 1:n - 1].tolist() or "[CLS]" in texts[row]
    return ids


@FUZZ
@given(texts=st.lists(TEXTS, min_size=1, max_size=4))
@example(texts=EDGE_CASES[:3])
@example(texts=EDGE_CASES[3:6])
@example(texts=EDGE_CASES[6:9])
@example(texts=EDGE_CASES[9:12])
@example(texts=EDGE_CASES[10:13])
def test_any_unicode_text_gives_a_well_formed_row(tokenizer, texts):
    ids = _check_rows(tokenizer, texts)
    # A row does not depend on the other texts of the batch.
    assert (ids[-1] == _check_rows(tokenizer, texts[-1:])[0]).all()


@pytest.fixture(scope="module")
def sentencepiece():
    return malign.text.SentencePieceTokenizer(malign.text.test_vocab_path(), LENGTH)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=64))
def test_arbitrary_bytes_never_crash_the_sentencepiece_layer(sentencepiece, data):
    """Bytes that are not UTF-8 reach the layer from records and requests: a row, no crash."""
    out = sentencepiece(tf.constant([data]))
    mask = out["padding_mask"].numpy()
    assert out["token_ids"].shape == (1, LENGTH) and mask[0, 0] == 1 and mask.sum() >= 2
