"""`malign tokenizer train --input`: every form of input names its actual fault.

All of these fail before SentencePiece runs (and before anything is written), so they are fast.
"""

from __future__ import annotations

import gzip
import os

import pytest

from malign.cli import main
from malign.text.vocabulary import (
    InputFile,
    check_inputs,
    iter_sentences,
    language_code_problem,
    parse_input,
    train_vocabulary,
)

CODE_FORM = "expected an ISO 639-1 code in lower case such as en"


@pytest.fixture()
def good(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("a small sentence\nanother one\n", encoding="utf-8")
    return path


def _cli_error(capsys, tmp_path, *inputs) -> str:
    out = tmp_path / "out" / "vocab"
    code = main(["tokenizer", "train", "--input", *map(str, inputs), "--vocab-size", "300",
                 "--out", str(out), "--quiet"])
    assert code == 2
    assert not (tmp_path / "out").exists()          # nothing written before the inputs are checked
    return capsys.readouterr().err


@pytest.mark.parametrize(
    "lang, message",
    [
        ("english", "'english' is a language name, not a code: use en"),
        ("German", "'German' is a language name, not a code: use de"),
        ("EN", "'EN': write the language in lower case: en"),
        ("Pt-BR", "'Pt-BR': write the language in lower case: pt-BR"),
        ("xx", "'xx' is not an ISO 639-1 language code"),
        ("e1", "'e1' is not a language code"),
        ("en-", "'en-' is not a language code"),
        ("", "the language code is empty"),
    ],
)
def test_lang_equals_path_names_the_bad_language(capsys, tmp_path, good, lang, message):
    err = _cli_error(capsys, tmp_path, f"{lang}={good}")
    assert f"--input '{lang}={good}': {message}; {CODE_FORM}" in err
    assert "not found" not in err


def test_input_file_objects_are_checked_too(good):
    with pytest.raises(ValueError, match=f"input {good}: 'english' is a language name"):
        parse_input(InputFile(str(good), "english"))
    assert parse_input(InputFile(str(good), None)).lang is None      # lang<TAB>text lines


@pytest.mark.parametrize("lang", ["en", "zh-Hans", "pt-BR", "es-419", "yue", "sr-Latn"])
def test_valid_language_codes(good, lang):
    assert language_code_problem(lang) is None
    assert parse_input(f"{lang}={good}") == InputFile(str(good), lang)


def test_missing_file_is_named(capsys, tmp_path):
    err = _cli_error(capsys, tmp_path, f"de={tmp_path / 'nope.txt'}")
    assert f"vocabulary input not found: {tmp_path / 'nope.txt'}" in err
    with pytest.raises(FileNotFoundError, match="nope.en.txt"):
        train_vocabulary([tmp_path / "nope.en.txt"], 300, tmp_path / "v", verbose=False)


def test_nothing_after_equals(capsys, tmp_path):
    assert "--input 'de=': no file after '='; expected LANG=PATH" in _cli_error(capsys, tmp_path, "de=")


@pytest.mark.parametrize(
    "name, hint",
    [
        ("train.english.gz", "('english' is a language name, not a code: use en)"),
        ("train.EN.txt", "('EN': write the language in lower case: en)"),
        ("corpus.txt", ""),
    ],
)
def test_language_missing_from_the_file_name(capsys, tmp_path, name, hint):
    path = tmp_path / name
    path.write_text("text\n")
    err = _cli_error(capsys, tmp_path, path)
    assert f"cannot tell the language of '{path}' from its name{' ' + hint if hint else ''}; name it like" in err
    assert "ISO 639-1" in err


def test_a_directory(capsys, tmp_path):
    folder = tmp_path / "corpus.de"
    folder.mkdir()
    for spec in (folder, f"de={folder}"):
        err = _cli_error(capsys, tmp_path, spec)
        assert f"vocabulary input {folder} is a directory; pass the text files in it" in err


def test_an_empty_file(capsys, tmp_path):
    empty = tmp_path / "empty.de.txt"
    empty.write_bytes(b"")
    assert f"vocabulary input {empty} is empty (0 bytes)" in _cli_error(capsys, tmp_path, empty)
    blank = tmp_path / "blank.de.txt"
    blank.write_bytes(b"\n   \n\xff\xfe\n")
    err = _cli_error(capsys, tmp_path, blank)
    assert f"vocabulary input {blank} holds no non-empty UTF-8 line to learn from (skipped: 1 invalid UTF-8)" in err


def test_gzip_faults(capsys, tmp_path):
    plain = tmp_path / "train.de.gz"
    plain.write_text("not compressed\n")
    assert f"vocabulary input {plain} is named .gz but is not gzip-compressed" in _cli_error(capsys, tmp_path, plain)

    packed = tmp_path / "train.fr.txt"
    packed.write_bytes(gzip.compress(b"compressed\n"))
    assert f"vocabulary input {packed} is gzip-compressed; name it {packed}.gz" in _cli_error(capsys, tmp_path, packed)

    truncated = tmp_path / "train.cs.gz"
    whole = gzip.compress("".join(f"sentence number {i} with some words\n" for i in range(2000)).encode())
    truncated.write_bytes(whole[: len(whole) // 2])
    err = _cli_error(capsys, tmp_path, truncated)
    assert f"cannot read {truncated} after line" in err and "truncated gzip" in err


def test_tsv_lines_name_file_line_and_code(capsys, tmp_path):
    tsv = tmp_path / "mixed.tsv"
    tsv.write_text("en\ta dog\nenglish\ta cat\n", encoding="utf-8")
    err = _cli_error(capsys, tmp_path, tsv)
    assert f"{tsv}:2: 'english' is a language name, not a code: use en; {CODE_FORM}" in err

    no_tabs = tmp_path / "notabs.tsv"
    no_tabs.write_text("a dog\na cat\n\n")
    err = _cli_error(capsys, tmp_path, no_tabs)
    assert f"{no_tabs} holds no non-empty UTF-8 line to learn from (skipped: 2 no tab in a lang<TAB>text file)" in err


def test_skipped_lines_are_counted(tmp_path):
    tsv = tmp_path / "mixed.tsv.gz"
    tsv.write_bytes(gzip.compress(b"de\tein Hund\nno tab\n\tno language\n\t\nfr\t\xff broken\n\nde\tzwei\n"))
    skipped = {}
    assert list(iter_sentences([InputFile(str(tsv), None)], skipped)) == [("de", "ein Hund"), ("de", "zwei")]
    assert skipped == {"no_tab": 1, "no_language": 1, "invalid_utf8": 1}


def test_every_fault_is_reported_at_once(capsys, tmp_path, good):
    folder = tmp_path / "dir"
    folder.mkdir()
    err = _cli_error(capsys, tmp_path, f"english={good}", folder, f"de={tmp_path / 'gone.txt'}", f"en={good}",
                     f"xx={tmp_path / 'lost.txt'}")
    assert "unusable vocabulary inputs (4 of 5):" in err
    assert f"--input 'english={good}': 'english' is a language name" in err
    assert f"vocabulary input {folder} is a directory" in err
    assert "cannot tell the language" not in err                 # a directory has no language to find
    assert f"vocabulary input not found: {tmp_path / 'gone.txt'}" in err
    # Both faults of one input: the language and the file.
    assert "'xx' is not an ISO 639-1 language code" in err
    assert f"vocabulary input not found: {tmp_path / 'lost.txt'}" in err
    assert err.count("\n  - ") == 5
    with pytest.raises(FileNotFoundError, match=r"unusable vocabulary inputs \(2 of 2\)"):
        check_inputs([tmp_path / "a.en.txt", tmp_path / "b.de.txt"])


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(capsys, tmp_path, good):
    good.chmod(0)
    assert f"cannot read vocabulary input {good}: Permission denied" in _cli_error(capsys, tmp_path, f"en={good}")


def test_skipped_lines_reach_the_stats_file(tmp_path, capsys):
    import json
    import random

    rng = random.Random(0)
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(300)]
    lines = [" ".join(rng.choice(words) for _ in range(8)) for _ in range(400)]
    tsv = tmp_path / "corpus.tsv"
    tsv.write_bytes("".join(f"{'en' if i % 2 else 'de'}\t{t}\n" for i, t in enumerate(lines)).encode()
                    + b"no tab\n\tno language\nen\t\xff\xfe\n")
    train_vocabulary([tsv], 300, tmp_path / "v", num_threads=1, verbose=True)
    stats = json.loads((tmp_path / "v.stats.json").read_text())
    assert stats["sentences"] == {"de": 200, "en": 200}
    assert stats["skipped_lines"] == {"invalid_utf8": 1, "no_tab": 1, "no_language": 1}
    assert ("skipped lines: 1 no tab in a lang<TAB>text file, 1 text without a language, 1 invalid UTF-8"
            in capsys.readouterr().out)
