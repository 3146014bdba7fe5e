"""A model's tokenizer fingerprint: recorded beside the model, compared by eval and export.

No model is built here: the fingerprint is checked before the model is loaded, so a
placeholder ``model.keras`` stands for one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

import pytest

import malign
from malign import cli
from malign.evaluation.commands import model_tokenizer_path
from malign.text.fingerprint import (
    FINGERPRINT_NAME,
    TokenizerMismatchError,
    check_tokenizer_fingerprint,
    find_tokenizer_fingerprint,
    write_tokenizer_fingerprint,
)

VOCAB = Path(__file__).resolve().parents[1] / "fixtures" / "align_tiny" / "vocab.txt"


@pytest.fixture()
def run(tmp_path):
    """A run directory as ``malign train`` leaves it: model, tokenizer copy, fingerprint."""
    workdir = tmp_path / "run"
    (workdir / "checkpoints").mkdir(parents=True)
    (workdir / "model.keras").write_bytes(b"placeholder")
    (workdir / "checkpoints" / "step_00000002.keras").write_bytes(b"placeholder")
    shutil.copy(malign.text.test_vocab_path(), workdir / "tokenizer.model")
    write_tokenizer_fingerprint(workdir / "tokenizer.model", "malign train")
    return workdir


@pytest.fixture()
def other(tmp_path):
    """Another tokenizer file, with fewer ids than the model (the size check passes it)."""
    path = tmp_path / "elsewhere" / "vocab.txt"
    path.parent.mkdir()
    shutil.copy(VOCAB, path)
    return path


def test_the_record_holds_the_sha256_of_the_file(run):
    record = json.loads((run / FINGERPRINT_NAME).read_text())
    want = hashlib.sha256((run / "tokenizer.model").read_bytes()).hexdigest()
    assert record == {"sha256": want, "file": "tokenizer.model",
                      "bytes": (run / "tokenizer.model").stat().st_size,
                      "written_by": "malign train"}


def test_the_record_is_found_beside_the_model_and_one_level_up(run):
    for model in (run / "model.keras", run / "checkpoints" / "step_00000002.keras"):
        path, record = find_tokenizer_fingerprint(model)
        assert path == run / FINGERPRINT_NAME and record["file"] == "tokenizer.model"


def test_the_models_own_tokenizer_passes(run):
    assert check_tokenizer_fingerprint(run / "model.keras", run / "tokenizer.model") is None
    copy = run.parent / "copy.model"
    shutil.copy(run / "tokenizer.model", copy)  # same bytes elsewhere: the same tokenizer
    assert check_tokenizer_fingerprint(run / "model.keras", copy) is None


def test_another_tokenizer_is_refused_naming_both_files_and_the_flag(run, other):
    with pytest.raises(TokenizerMismatchError) as info:
        check_tokenizer_fingerprint(run / "checkpoints" / "step_00000002.keras", other)
    message = str(info.value)
    assert str(other) in message and str(run / FINGERPRINT_NAME) in message
    assert "--force-tokenizer" in message


def test_forcing_accepts_it_with_a_warning(run, other, capsys):
    assert model_tokenizer_path(str(run / "model.keras"), str(other), force=True) == other
    assert "warning:" in capsys.readouterr().err


def test_a_model_without_a_record_keeps_working(run, other):
    (run / FINGERPRINT_NAME).unlink()
    assert find_tokenizer_fingerprint(run / "model.keras") is None
    assert model_tokenizer_path(str(run / "model.keras"), str(other)) == other


def test_a_record_is_not_taken_from_above_a_directory_with_its_own_tokenizer(run, other):
    converted = run / "converted"
    converted.mkdir()
    (converted / "model.keras").write_bytes(b"placeholder")
    shutil.copy(VOCAB, converted / "vocab.txt")  # an older conversion: no record
    assert find_tokenizer_fingerprint(converted / "model.keras") is None


@pytest.mark.parametrize("content", ["{", "[]", "{\"sha256\": 5}"])
def test_a_damaged_record_is_named(run, other, content):
    (run / FINGERPRINT_NAME).write_text(content)
    with pytest.raises(ValueError, match=FINGERPRINT_NAME):
        check_tokenizer_fingerprint(run / "model.keras", other)


@pytest.mark.parametrize("command", [
    ["eval", "--data", "records/none"],
    ["eval", "zero-shot", "--data", "records/none", "--classes", "classes.txt"],
    ["export"],
])
def test_eval_and_export_refuse_another_tokenizer(run, other, tmp_path, capsys, command):
    out = tmp_path / "out"
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    command = [str(tmp_path / c) if c == "classes.txt" else c for c in command]
    code = cli.main([*command, "--model", str(run / "model.keras"), "--tokenizer", str(other),
                     "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert str(other) in err and "--force-tokenizer" in err and "Traceback" not in err
    assert not out.exists()


def test_embed_and_search_refuse_another_tokenizer_unless_forced(run, other, tmp_path, capsys):
    from malign.search.commands import check_search

    captions = tmp_path / "captions.txt"
    captions.write_text("a dog\n")
    args = ["embed", "--model", str(run / "model.keras"), "--tokenizer", str(other),
            "--captions", str(captions), "--out", str(tmp_path / "e.npz")]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert str(other) in err and "--force-tokenizer" in err and "Traceback" not in err
    assert not (tmp_path / "e.npz").exists()

    embeddings = tmp_path / "photos.npz"
    embeddings.write_bytes(b"placeholder")  # check_search only needs the file to exist
    search = argparse.Namespace(embeddings=str(embeddings), query=[("text", "a dog")],
                                queries=None, sheet=None, model=str(run / "model.keras"),
                                tokenizer=str(other), force_tokenizer=False)
    with pytest.raises(TokenizerMismatchError, match="--force-tokenizer"):
        check_search(search)
    search.force_tokenizer = True
    check_search(search)


def test_a_missing_model_is_named_before_looking_for_its_tokenizer(tmp_path):
    """``malign eval/export --model nope.keras`` said no tokenizer was found beside it."""
    with pytest.raises(FileNotFoundError, match="model not found: .*nope.keras"):
        model_tokenizer_path(str(tmp_path / "nope.keras"), None)
    with pytest.raises(FileNotFoundError, match="model not found"):
        model_tokenizer_path(str(tmp_path / "nope.keras"), str(malign.text.test_vocab_path()))
