"""Vocabulary training: language detection, balanced sampling, special ids, byte fallback, CLI."""

from __future__ import annotations

import gzip
import json
import random

import pytest
import sentencepiece as spm

from malign.text import vocabulary
from malign.text.vocabulary import (
    balanced_sample_sizes,
    language_from_filename,
    parse_input,
    train_vocabulary,
)


@pytest.mark.parametrize(
    "name, lang",
    [
        ("data/task1/raw/train.de.gz", "de"),
        ("val.1.en.gz", "en"),
        ("wiki_fr.txt", "fr"),
        ("news.zh-Hans.txt", "zh-Hans"),
        ("corpus.txt", None),
        ("dev.txt", None),
        ("foo.txt", None),
    ],
)
def test_language_from_filename(name, lang):
    assert language_from_filename(name) == lang


def test_parse_input():
    assert parse_input("cs=x.txt") == vocabulary.InputFile("x.txt", "cs")
    assert parse_input("mixed.tsv.gz").lang is None
    with pytest.raises(ValueError, match="cannot tell the language of 'corpus.txt'"):
        parse_input("corpus.txt")


def test_balanced_sample_sizes():
    counts = {"en": 9000, "de": 900, "cs": 100}
    natural = balanced_sample_sizes(counts, alpha=1.0)
    assert natural == counts
    smoothed = balanced_sample_sizes(counts, alpha=0.3)
    assert sum(smoothed.values()) == pytest.approx(10000, abs=2)
    # p ** 0.3: en 0.9 -> 0.969, de 0.09 -> 0.486, cs 0.01 -> 0.251 (normalised).
    weights = {k: (v / 10000) ** 0.3 for k, v in counts.items()}
    norm = sum(weights.values())
    for lang in counts:
        assert smoothed[lang] == round(10000 * weights[lang] / norm)
    assert smoothed["cs"] > 10 * counts["cs"]  # the small language is up-sampled
    assert balanced_sample_sizes(counts, alpha=0.0, total=300) == {"en": 100, "de": 100,
                                                                   "cs": 100}
    with pytest.raises(ValueError, match="alpha"):
        balanced_sample_sizes(counts, alpha=1.5)


def _pseudo_sentences(n: int, seed: int) -> list[str]:
    """Sentences of made-up words: many distinct substrings, so vocabularies of a few
    hundred pieces can be trained on a small file."""
    rng = random.Random(seed)
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(400)]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(n)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    for seed, lang in enumerate(("en", "de")):
        with gzip.open(root / f"train.{lang}.gz", "wt", encoding="utf-8") as handle:
            handle.write("".join(t + "\n" for t in _pseudo_sentences(300, seed)))
    # Czech only as lang<TAB>text lines, with a few bad lines mixed in.
    cs = [t + " čšž" for t in _pseudo_sentences(30, 7)]
    (root / "extra.tsv").write_bytes(
        "".join(f"cs\t{t}\n" for t in cs).encode() + b"no tab here\n\t\ncs\t\xff\xfe broken\n"
    )
    (root / "ru_only.txt").write_text("Коричневая собака бежит.\n" * 5, encoding="utf-8")
    (root / "ja.txt").write_text("".join(chr(0x4E00 + i) * 3 + "\n" for i in range(40)),
                                 encoding="utf-8")
    return root


def test_train_vocabulary(corpus, tmp_path):
    inputs = [corpus / "train.en.gz", corpus / "train.de.gz", str(corpus / "extra.tsv"),
              f"ru={corpus / 'ru_only.txt'}"]
    path = train_vocabulary(inputs, 300, tmp_path / "v" / "small", alpha=0.3, seed=1,
                            num_threads=1, verbose=False)
    assert path == tmp_path / "v" / "small.model"
    processor = spm.SentencePieceProcessor(model_file=str(path))
    assert processor.get_piece_size() == 300
    assert [processor.id_to_piece(i) for i in range(5)] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]",
                                                             "[MASK]"]
    assert processor.id_to_piece(5) == "<0x00>" and processor.id_to_piece(260) == "<0xFF>"
    assert processor.is_control(2) and processor.is_control(3) and processor.is_control(4)
    # Control symbols are never produced from text: a literal "[SEP]" is not a separator.
    assert 3 not in processor.encode("a [SEP] b")
    # Byte fallback: unseen scripts become bytes, never [UNK].
    assert 1 not in processor.encode("日本語のテキスト 🙂 ∑")
    stats = json.loads((tmp_path / "v" / "small.stats.json").read_text())
    assert stats["sentences"] == {"en": 300, "de": 300, "cs": 30, "ru": 5}
    expected = balanced_sample_sizes(stats["sentences"], 0.3, 635)
    assert stats["sampled"] == expected
    assert stats["sampled"]["ru"] > 5  # repeated to reach its share


def test_train_vocabulary_errors(corpus, tmp_path):
    with pytest.raises(ValueError, match="too large for this corpus"):
        train_vocabulary([corpus / "train.en.gz"], 5000, tmp_path / "x", verbose=False)
    with pytest.raises(ValueError, match="too small for the characters"):
        train_vocabulary([corpus / "train.en.gz", f"ja={corpus / 'ja.txt'}"], 270, tmp_path / "x",
                         character_coverage=1.0, verbose=False)
    with pytest.raises(ValueError, match="must exceed 261"):
        train_vocabulary([corpus / "train.en.gz"], 200, tmp_path / "x", verbose=False)
    with pytest.raises(FileNotFoundError, match="nope.en.txt"):
        train_vocabulary([tmp_path / "nope.en.txt"], 400, tmp_path / "x", verbose=False)
    empty = tmp_path / "empty.en.txt"
    empty.write_text("\n  \n")
    with pytest.raises(ValueError, match="no non-empty"):
        train_vocabulary([empty], 400, tmp_path / "x", verbose=False)


def test_cli_tokenizer_train_and_encode(corpus, tmp_path, capfd, monkeypatch):
    from malign.cli import main

    monkeypatch.delenv("MALIGN_VERBOSE", raising=False)
    capsys = capfd  # SentencePiece logs to file descriptor 2

    out = tmp_path / "cli" / "vocab"
    code = main(["tokenizer", "train", "--input", str(corpus / "train.en.gz"),
                 str(corpus / "train.de.gz"), "--vocab-size", "290", "--out", str(out),
                 "--alpha", "0.5", "--threads", "1"])
    assert code == 0
    captured = capsys.readouterr()
    assert "counting sentences" in captured.err and "sampling" in captured.err  # progress
    assert "en: 300 sentences" in captured.out
    assert "trainer_interface.cc" not in captured.err  # SentencePiece's log only with -v
    assert spm.SentencePieceProcessor(model_file=f"{out}.model").get_piece_size() == 290
    code = main(["tokenizer", "encode", "--model", f"{out}.model", "Zwei rote Kreise"])
    assert code == 0
    assert "[CLS]" in capsys.readouterr().out
    assert main(["tokenizer", "train", "--input", str(tmp_path / "corpus.txt"),
                 "--vocab-size", "350", "--out", str(out)]) == 2
    capsys.readouterr()
    assert main(["-v", "tokenizer", "train", "--input", str(corpus / "train.en.gz"),
                 "--vocab-size", "290", "--out", str(tmp_path / "v2" / "vocab"),
                 "--threads", "1"]) == 0
    assert "trainer_interface.cc" in capsys.readouterr().err
