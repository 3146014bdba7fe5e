"""Fixtures for the tokenizer tests: the checked-in test vocabulary and multi-script text."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXTRA_LINES = REPO / "tokenizers" / "extra_lines.tsv"


@pytest.fixture(scope="session")
def vocab_path() -> Path:
    import malign.text

    return malign.text.test_vocab_path()


@pytest.fixture(scope="session")
def sp_tokenizer(vocab_path):
    import malign.text

    return malign.text.SentencePieceTokenizer(vocab_path, sequence_length=32)


def _script_lines() -> dict[str, list[str]]:
    by_script: dict[str, list[str]] = {"cyrillic": [], "cjk": [], "arabic": [], "other": []}
    script_of = {"ru": "cyrillic", "uk": "cyrillic", "zh": "cjk", "ja": "cjk", "ko": "cjk",
                 "ar": "arabic"}
    for line in EXTRA_LINES.read_text(encoding="utf-8").splitlines():
        lang, text = line.split("\t", 1)
        by_script[script_of.get(lang, "other")].append(text)
    return by_script


@pytest.fixture(scope="session")
def multiscript_sentences() -> dict[str, list[str]]:
    """A few hundred sentences per script: the hand-written lines of tokenizers/extra_lines.tsv,
    the synthetic captions (Latin: en/de/fr/cs), and random recombinations of their words
    (new sentences, with digits, punctuation and emoji mixed in)."""
    from malign.data.synthetic import synthetic_captions

    rng = random.Random(1234)
    scripts = _script_lines()
    latin = [text for _, text in synthetic_captions(60, seed=99)]
    out: dict[str, list[str]] = {"latin": list(latin)}
    for script in ("cyrillic", "cjk", "arabic"):
        lines = list(scripts[script])
        words = [w for line in lines for w in (line.split() if script != "cjk" else list(line))]
        sentences = list(lines)
        while len(sentences) < 200:
            k = rng.randint(1, 12)
            joiner = "" if script == "cjk" and rng.random() < 0.7 else " "
            sentence = joiner.join(rng.choice(words) for _ in range(k))
            if rng.random() < 0.3:
                sentence += rng.choice([" 42", "!", "?", " 🙂", " (2024)", "…", "  "])
            sentences.append(sentence)
        out[script] = sentences
    mixed = [
        f"{rng.choice(out['latin'])} {rng.choice(out['cyrillic'])} {rng.choice(out['cjk'])} "
        f"{rng.choice(out['arabic'])}"
        for _ in range(60)
    ]
    out["mixed"] = mixed + scripts["other"]
    return out
