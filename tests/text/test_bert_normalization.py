"""bert_normalization: every step equals HuggingFace ``tokenizers`` on every Unicode character.

The default run covers every assigned character; ``--runslow`` all 1.1M code points and more
normalizer settings.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import tensorflow as tf

from malign.text import bert_normalization as bn

tokenizers = pytest.importorskip("tokenizers")

HERE = Path(__file__).resolve().parent
SEPARATOR = "|"
CHUNK = 4096


def _characters(scope: str) -> list[str]:
    """Unicode scalar values but the separator: ``"all"``, or ``"assigned"``: planes 0-3 and 14
    (where every assigned character is, Unicode 16) and every 97th code point of the others."""
    def wanted(cp: int) -> bool:
        return scope == "all" or cp < 0x40000 or 0xE0000 <= cp < 0xF0000 or cp % 97 == 0

    return [chr(cp) for cp in range(0x110000)
            if not 0xD800 <= cp <= 0xDFFF and chr(cp) != SEPARATOR and wanted(cp)]


def _chunks(scope: str) -> list[str]:
    """``CHUNK`` characters a string, each between separators; and the ASCII characters again in
    strings of their own (pure ASCII text takes a shorter path)."""
    chars = _characters(scope)
    ascii_chars = [c for c in chars if c.isascii()]
    return ([SEPARATOR.join(chars[i:i + CHUNK]) for i in range(0, len(chars), CHUNK)]
            + [SEPARATOR.join(ascii_chars), SEPARATOR, "".join(ascii_chars)] + ascii_chars)


def _decoded(tensor: tf.Tensor) -> list[str]:
    return [x.decode("utf-8") for x in tensor.numpy()]


def _first_differences(chunks: list[str], got: list[str], want: list[str], n: int = 8) -> list:
    out = []
    for chunk, g, w in zip(chunks, got, want):
        for c, gc, wc in zip(chunk.split(SEPARATOR), g.split(SEPARATOR), w.split(SEPARATOR)):
            if gc != wc:
                out.append((f"U+{ord(c[0]):04X}" if c else "", wc, gc))
                if len(out) == n:
                    return out
    return out


SLOW = pytest.mark.slow


@pytest.mark.parametrize("scope,lowercase,strip_accents", [
    ("assigned", True, None),  # BERT uncased: what tokenizer.json of align-base says
    ("assigned", False, None),  # BERT cased
    pytest.param("all", True, None, marks=SLOW),
    pytest.param("all", False, None, marks=SLOW),
    pytest.param("all", True, False, marks=SLOW),
    pytest.param("all", False, True, marks=SLOW),
])
def test_normalize_equals_bert_normalizer_on_every_character(scope, lowercase, strip_accents):
    chunks = _chunks(scope)
    reference = tokenizers.normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=strip_accents, lowercase=lowercase)
    want = [reference.normalize_str(chunk) for chunk in chunks]
    got = _decoded(bn.normalize(tf.constant(chunks), lowercase=lowercase, strip_accents=strip_accents))
    assert got == want, _first_differences(chunks, got, want)


@pytest.mark.parametrize("scope", ["assigned", pytest.param("all", marks=SLOW)])
def test_pre_tokenize_equals_bert_pre_tokenizer_on_every_character(scope):
    # Each character before a letter: kept in the word ("ca"), split off (punctuation: "c", "a")
    # or a split point (whitespace: "a"). NUL is not given: it never reaches this step (cleaning
    # deletes it; tensorflow-text's regex_split would stop at it).
    chars = [c for c in _characters(scope) if c != "\x00"] + [SEPARATOR]
    texts = [" ".join(f"{c}a" for c in chars[i:i + CHUNK]) for i in range(0, len(chars), CHUNK)]
    reference = tokenizers.pre_tokenizers.BertPreTokenizer()
    want = [[w for w, _ in reference.pre_tokenize_str(t)] for t in texts]
    got = [[w.decode("utf-8") for w in row] for row in bn.pre_tokenize(tf.constant(texts)).to_list()]
    for text, g, w in zip(texts, got, want):
        assert g == w, (text[:40], next((x, y) for x, y in zip(g, w) if x != y))


def test_combining_sequences_and_case_in_context():
    """NFD reorders stacked marks, and lowercase is per character (no final sigma, İ -> i̇)."""
    texts = ["e\u0323\u0301 a\u0301\u0323 A\u0308\u0304 \u1e69\u0307 q\u0307\u0323 \u0958",
             "ΟΔΥΣΣΕΥΣ ΣΑΣ Σ", "İSTANBUL ıi ǅ ǈ ẞ ß Ω K Å ﬁ Ｋ", "\u0130\u0301 \u0149 \u01f0"]
    for lowercase, strip in [(True, None), (True, False), (False, True)]:
        reference = tokenizers.normalizers.BertNormalizer(strip_accents=strip, lowercase=lowercase)
        want = [reference.normalize_str(t) for t in texts]
        assert _decoded(bn.normalize(tf.constant(texts), lowercase, strip)) == want


def test_issue_examples():
    text = tf.constant(["a\x00 dog on a red mat", "a\x07b\u00adc\u200bd", "a\u00a0b\u2003c\u3000d\te\nf"])
    assert _decoded(bn.normalize(text)) == ["a dog on a red mat", "abcd", "a b c d e f"]
    pieces = bn.split_added_tokens(tf.constant(["a [MASK] cat", "x\x00[CLS][SEP][mask]"]),
                                   bn.DEFAULT_ADDED_TOKENS)
    assert pieces.to_list() == [[b"a ", b"[MASK]", b" cat"],
                                ["x\ufffd".encode(), b"[CLS]", b"[SEP]", b"[mask]"]]


def test_added_tokens_longest_match_wins():
    pieces = bn.split_added_tokens(tf.constant(["a<s><s>x</s>"]), ["<s>", "<s><s>x", "</s>"])
    assert pieces.to_list() == [[b"a", b"<s><s>x", b"</s>"]]


def test_invalid_utf8_is_an_error_naming_the_positions():
    with pytest.raises(tf.errors.InvalidArgumentError, match="not valid UTF-8"):
        bn.check_utf8(tf.constant([b"ok", b"caf\xe9"]), "captions")


def test_placeholders_are_deleted_by_cleaning():
    """The NFD placeholders are private-use characters, which never survive clean_text."""
    protect_from, protect_to = bn._NFD_PROTECT
    cleaned = bn.normalize(tf.constant(["".join(map(chr, protect_to))]), lowercase=False)
    assert _decoded(cleaned) == [""] and len(protect_from) == len(protect_to)


@pytest.mark.slow
def test_tables_are_those_of_the_installed_tokenizers():
    """Regenerating the tables from ``tokenizers`` changes nothing (about a minute)."""
    result = subprocess.run([sys.executable, str(HERE / "bert_unicode_tables.py")],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

