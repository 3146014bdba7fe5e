"""WordPieceTokenizer ids equal HuggingFace ``tokenizers`` running the checkpoint's ``tokenizer.json``.

Texts: the issue's examples, every C0/C1 control, every format (Cf), whitespace and separator
character Python knows, private-use and unassigned characters, a dozen scripts with accents and
combining marks, CJK (extensions and compatibility ideographs), kana, Hangul, punctuation,
symbols and emoji, special tokens written in the text, words at the 100-character limit, texts
longer than the sequence, empty ones; and a few hundred seeded random mixtures of these.
The fixture's vocabulary is tiny (most words are ``[UNK]``), so the same texts also go through a
vocabulary built from their own characters, words and word pieces, with four normalizer settings.
"""

from __future__ import annotations

import random
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from malign.text import WordPieceTokenizer

tokenizers = pytest.importorskip("tokenizers")

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "align_tiny"
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

ISSUE = ["a\x00 dog on a red mat", "a dog on a red mat", "a", "a [MASK] cat", "a\x07cat", "a\u00adcat",
         "a\u200bcat", "a\u00a0cat", "a\u2003cat", "a\u3000cat", "a\tcat\non\ra mat"]

SCRIPTS = [
    "Café déjà vu: naïve façade, Ångström, Øresund, Łódź, Ærø, Œuvre, São Paulo, Dvořák, Tiếng Việt",
    "İstanbul ıiİI Şş Ğğ; STRASSE Straße ẞ; ǅ ǈ ǋ; ﬁ ﬂ; Ω K Å", "ΟΔΥΣΣΕΥΣ Ἀθῆναι ἐν ἀρχῇ ἦν ὁ λόγος",
    "Съешь же ещё этих мягких французских булок, да выпей чаю. Ёлка Й й", "Ґанок Їжак Єнот",
    "مَرْحَبًا بِكُمْ فِي الْقَاهِرَة، ١٢٣ ؟", "שָׁלוֹם עֲלֵיכֶם", "नमस्ते दुनिया। क़ ज़",
    "สวัสดีครับ ภาษาไทย", "北京欢迎你。我爱你！", "𠀀𠀁𪜀𫝀 \U0002B820\U0002B91F\U0002B920 \U00030000 豈更",
    "한국어 텍스트입니다", "ひらがな カタカナ ｶﾀｶﾅ ー", "ＡＢＣ１２３ ｈｅｌｌｏ！", "ⓐⓑⓒ Ⅻ ⅻ ¹²³ ½",
    "🙂👍🏽👨‍👩‍👧 🇫🇷 ❤️ ☕", "$5 ^_^ `x` ~ | \\ {a} <b> #1 @me 100% a&b *x* +-=",
    "¿Qué? ¡Sí! « citation » „Zitat“ ‘quote’ — dash – … · • © ® ™ ° ± € £ ¥ ₹ ¢ § ¶",
    "∑∫√∞≠≤ ⊕ ℕ ℝ → ⇒ ↔ ˆ˜ ´ ¨ ¸", "e\u0323\u0301 a\u0301\u0323 A\u0308\u0304 q\u0307\u0323",
    "\u2e52\u2e5d \u0890\u0891\u08e2 \u1c89\u1c8a \ua7cb \U000105c9 \U00016121 \U00013430x",
    "a\u0378b \U000e0001x\U000e0041y \ufffex\uffff", "Tifinagh ⴰⵣⵓⵍ, Ge'ez ሰላም, Cherokee ᏣᎳᎩ ᏌᏊ",
]

SPECIAL_IN_TEXT = [
    "a [MASK] cat", "[CLS]a[SEP]b", "[mask] [Mask] [MASK]", "[[MASK]]", "[MASK][MASK][MASK]",
    "x[PAD]y[UNK]z", "[UNK]", "[MASK", "MASK]", "[ MASK ]", "[MASK]\x00[SEP]", "\u00ad[MASK]\u00ad",
    "[MA\u200bSK]", "[MA\x00SK]", "[unused1] [unused99]", "ＭＡＳＫ [ＭＡＳＫ]", "[MASK]" * 40, "[SEP]",
    "Å[MASK]é", "北[MASK]京",
]

EDGE = ["", " ", "   ", "\u3000", "\x00", "\u200b", "\x00\x00\x00", "\ufeff", "\U000f0000", ".", "...",
        "a" * 99, "a" * 100, "a" * 101, "é" * 100, "é" * 101, "\U00010330" * 100, "\U00010330" * 101,
        "e\u0301" * 100, "A" * 100 + "\u0301", "ab" * 60, " ".join(["a red cat"] * 60),
        "a photo of a cat " * 30, "北京" * 80]


def _named_characters() -> dict[str, list[str]]:
    """Every character of Python's Unicode tables in the categories the rules single out."""
    by_category: dict[str, list[str]] = {}
    for cp in range(0x110000):
        category = unicodedata.category(chr(cp))
        if category in ("Cc", "Cf", "Zs", "Zl", "Zp", "Mn", "Mc", "Me", "Pc", "Pd", "Ps", "Pe",
                        "Pi", "Pf", "Po", "Sk", "Sm"):
            by_category.setdefault(category, []).append(chr(cp))
    return by_category


def _texts() -> list[str]:
    """The texts of the module docstring, a few hundred."""
    rng = random.Random(20240613)
    named = _named_characters()
    texts = ISSUE + SCRIPTS + SPECIAL_IN_TEXT + EDGE
    # Every control, format and separator character, inside and between words.
    spaces = [chr(c) for c in (0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x1C, 0x1D, 0x1E, 0x1F, 0x85, 0x180E,
                               0x200B, 0xFEFF)]
    for group in (named["Cc"], named["Cf"], named["Zs"] + named["Zl"] + named["Zp"] + spaces):
        for i in range(0, len(group), 3):
            a, b, c = (group[i:i + 3] + group[:3])[:3]
            texts.append(f"a{a}dog on{b} a red{c}{c}mat{a}")
            texts.append(f"{b}[MASK]{a}caf\u00e9{c}")
    # Random mixtures.
    words = [w for t in SCRIPTS + ISSUE[:2] for w in t.split()]
    pools = {
        "word": words, "special": SPECIALS + ["[mask]", "[unused3]"],
        "control": named["Cc"], "format": named["Cf"],
        "space": named["Zs"] + named["Zl"] + named["Zp"] + spaces,
        "mark": named["Mn"] + named["Mc"] + named["Me"],
        "punct": sum((named[k] for k in ("Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po", "Sk", "Sm")), []),
        "cjk": [chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(50)]
        + [chr(rng.randint(0x20000, 0x2FA1F)) for _ in range(50)],
        "any": [chr(rng.choice([rng.randint(0x20, 0x2FFF), rng.randint(0xA000, 0xD7FF),
                                rng.randint(0xE000, 0xFFFF), rng.randint(0x10000, 0x10FFFF)]))
                for _ in range(400)],
    }
    kinds = list(pools)
    for _ in range(220):
        n = rng.randint(1, 30)
        parts = []
        for _ in range(n):
            kind = rng.choice(kinds + ["word"] * 6)
            parts.append(rng.choice(pools[kind]))
            parts.append(rng.choice(["", " ", " ", " ", "\u00a0"]))
        texts.append("".join(parts))
    return texts


TEXTS = _texts()


def _reference_ids(tokenizer, texts: list[str], length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    tokenizer.enable_truncation(max_length=length)
    tokenizer.enable_padding(length=length, pad_id=pad_id, pad_token="[PAD]")
    encodings = tokenizer.encode_batch(texts)
    return (np.array([e.ids for e in encodings], np.int32),
            np.array([e.attention_mask for e in encodings], np.int32))


def _assert_same(layer: WordPieceTokenizer, reference, texts: list[str]) -> None:
    want_ids, want_mask = _reference_ids(reference, texts, layer.sequence_length, layer.pad_token_id)
    out = layer(tf.constant(texts))
    got_ids, got_mask = out["token_ids"].numpy(), out["padding_mask"].numpy()
    bad = [i for i in range(len(texts))
           if not (np.array_equal(got_ids[i], want_ids[i]) and np.array_equal(got_mask[i], want_mask[i]))]
    assert not bad, f"{len(bad)} of {len(texts)} differ, e.g. " + "; ".join(
        f"{texts[i]!r}: want {want_ids[i].tolist()} got {got_ids[i].tolist()}" for i in bad[:3])


def test_enough_texts_of_every_kind():
    assert 300 <= len(TEXTS) <= 1000
    assert any("\x00" in t for t in TEXTS) and any("\u2029" in t for t in TEXTS)


@pytest.mark.parametrize("length", [16, 64])
def test_fixture_tokenizer_json(length):
    reference = tokenizers.Tokenizer.from_file(str(FIXTURE / "tokenizer.json"))
    layer = WordPieceTokenizer(FIXTURE / "vocab.txt", sequence_length=length)
    assert layer.vocabulary == [t for t, _ in sorted(reference.get_vocab().items(), key=lambda x: x[1])]
    _assert_same(layer, reference, TEXTS)


def test_issue_examples_with_the_fixture():
    layer = WordPieceTokenizer(FIXTURE / "vocab.txt", sequence_length=12)
    ids = layer(["a\x00 dog on a red mat", "a dog on a red mat", "a [MASK] cat"])["token_ids"].numpy()
    assert ids[0].tolist() == ids[1].tolist() and (ids[0] != layer.pad_token_id).sum() == 8
    assert ids[2][2] == layer.mask_token_id and layer.unk_token_id not in ids[2].tolist()

def _rich_vocabulary(texts: list[str]) -> list[str]:
    """Specials, then every character (alone and as ``##`` piece), whole words and word starts
    of the texts' words under the normalizer settings tested, so that few words are ``[UNK]``."""
    rng = random.Random(7)
    words: set[str] = set()
    pre = tokenizers.pre_tokenizers.BertPreTokenizer()
    for lowercase, strip in [(True, None), (False, None), (True, False), (False, True)]:
        normalizer = tokenizers.normalizers.BertNormalizer(strip_accents=strip, lowercase=lowercase)
        for text in texts:
            words.update(w for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(text)))
    words -= set(SPECIALS)
    chars = sorted({c for w in words for c in w})
    pieces = set()
    for word in sorted(words):
        if rng.random() < 0.3:
            pieces.add(word)
        if len(word) > 3 and rng.random() < 0.5:
            cut = rng.randint(1, len(word) - 1)
            pieces.update([word[:cut], "##" + word[cut:]])
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(4)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += chars + ["##" + c for c in chars if rng.random() < 0.9]
    vocab += sorted(pieces - set(vocab))
    return list(dict.fromkeys(vocab))


@pytest.fixture(scope="module")
def rich_vocabulary() -> list[str]:
    return _rich_vocabulary(TEXTS)


def _reference_tokenizer(vocab: list[str], lowercase: bool, strip_accents: bool | None):
    from tokenizers import models, normalizers, pre_tokenizers, processors

    ids = {t: i for i, t in enumerate(vocab)}
    tokenizer = tokenizers.Tokenizer(models.WordPiece(ids, unk_token="[UNK]", max_input_chars_per_word=100))
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=strip_accents, lowercase=lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])])
    tokenizer.add_special_tokens(SPECIALS)
    return tokenizer


@pytest.mark.parametrize("lowercase,strip_accents", [(True, None), (False, None), (True, False), (False, True)])
def test_rich_vocabulary(rich_vocabulary, lowercase, strip_accents):
    reference = _reference_tokenizer(rich_vocabulary, lowercase, strip_accents)
    layer = WordPieceTokenizer(rich_vocabulary, sequence_length=48, lowercase=lowercase,
                               strip_accents=strip_accents)
    _assert_same(layer, reference, TEXTS)
    ids = layer(tf.constant(TEXTS))["token_ids"].numpy()
    words = ids[ids > layer.mask_token_id]  # neither special nor [unused]
    assert (ids == layer.unk_token_id).sum() < 0.1 * words.size  # the ids compared are mostly real

def test_saved_model_gives_the_same_ids(tmp_path, rich_vocabulary):
    """The layer inside a tf.Module SavedModel (as malign.export serves it), loaded back."""
    layer = WordPieceTokenizer(rich_vocabulary, sequence_length=48)

    class Serving(tf.Module):
        def __init__(self, tokenizer):
            super().__init__()
            self.tokenizer = tokenizer

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def __call__(self, text):
            return self.tokenizer(text)

    tf.saved_model.save(Serving(layer), str(tmp_path / "saved"))
    loaded = tf.saved_model.load(str(tmp_path / "saved"))
    out = loaded(tf.constant(TEXTS))
    want_ids, want_mask = _reference_ids(_reference_tokenizer(rich_vocabulary, True, None), TEXTS, 48, 0)
    np.testing.assert_array_equal(out["token_ids"].numpy(), want_ids)
    np.testing.assert_array_equal(out["padding_mask"].numpy(), want_mask)


def test_other_added_tokens(rich_vocabulary):
    """Added tokens besides BERT's specials (tokenizer.json entries with "normalized": false)."""
    extra = ["<cat>", "x<cat>y", "ab", "Ünï"]
    vocab = rich_vocabulary + extra
    reference = _reference_tokenizer(vocab, True, None)
    reference.add_tokens([tokenizers.AddedToken(t, normalized=False) for t in extra])
    layer = WordPieceTokenizer(vocab, sequence_length=32, added_tokens=SPECIALS + extra)
    texts = ["a<cat>b x<cat>y x<cat>", "about abab Ab", "Ünïcode ünï ÜNÏ", "<cat>[MASK]x<cat>y<cat>"]
    _assert_same(layer, reference, texts + TEXTS[:100])
