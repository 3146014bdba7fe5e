"""Which tokenizer a model was made with: the SHA-256 of the tokenizer file's bytes.

A model's token embedding only means something with the tokenizer it was trained (or
converted) with; another tokenizer with no more ids than the model still runs, and gives
meaningless embeddings. So ``malign train`` / ``malign distill`` (beside the run's
``model.keras``, with the tokenizer copy) and ``malign convert`` (beside the converted
model and its ``vocab.txt``) write :data:`FINGERPRINT_NAME`::

    {"sha256": "<64 hex digits>", "file": "tokenizer.model", "bytes": 12345,
     "written_by": "malign train"}

and ``malign eval`` / ``malign export`` (:func:`check_tokenizer_fingerprint`) refuse a
tokenizer file with another SHA-256 unless forced (``--force-tokenizer``). The record is
looked up where the tokenizer is (``malign.evaluation.commands.find_tokenizer``): the
model's directory, then the one above (a checkpoint in ``workdir/checkpoints/``). A model
without a record (made before fingerprints existed) keeps working as before: only its
vocabulary size is checked.

This module imports no TensorFlow.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "tokenizer.model").write_bytes(b"abc")
    >>> write_tokenizer_fingerprint(d / "tokenizer.model", "doctest")["sha256"][:12]
    'ba7816bf8f01'
    >>> find_tokenizer_fingerprint(d / "model.keras")[1]["file"]
    'tokenizer.model'
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

# The one SHA-256 of a file's bytes that malign uses (also for ``malign embed``'s records).
from malign import atomic_files
from malign.search.fingerprint import file_sha256

__all__ = [
    "FINGERPRINT_NAME",
    "FORCE_FLAG",
    "TokenizerMismatchError",
    "check_tokenizer_fingerprint",
    "file_sha256",
    "find_tokenizer_fingerprint",
    "write_tokenizer_fingerprint",
]

#: The record's file name, beside the model and its tokenizer copy.
FINGERPRINT_NAME = "tokenizer-fingerprint.json"
#: The command-line flag that accepts a tokenizer whose fingerprint differs.
FORCE_FLAG = "--force-tokenizer"
#: Tokenizer files a model directory may hold (``find_tokenizer``'s names); a directory with
#: one of them and no record is a model made before fingerprints existed.
_TOKENIZER_NAMES = ("tokenizer.model", "sentencepiece.model", "vocab.txt")


class TokenizerMismatchError(ValueError):
    """The tokenizer given is not the one the model was made with (another SHA-256)."""


def write_tokenizer_fingerprint(tokenizer_file: str | os.PathLike, written_by: str,
                                directory: str | os.PathLike | None = None) -> dict[str, Any]:
    """Writes the fingerprint record of ``tokenizer_file`` (atomically: beside, then renamed).

    Args:
        tokenizer_file: the tokenizer copy that travels with the model.
        written_by: the command, for the record (e.g. "malign train").
        directory: where to write :data:`FINGERPRINT_NAME`; default the tokenizer's directory.

    Returns:
        The record written.
    """
    tokenizer_file = Path(tokenizer_file)
    directory = Path(directory) if directory is not None else tokenizer_file.parent
    record = {"sha256": file_sha256(tokenizer_file), "file": tokenizer_file.name,
              "bytes": tokenizer_file.stat().st_size, "written_by": written_by}
    path = directory / FINGERPRINT_NAME
    atomic_files.write_text(path, json.dumps(record, indent=2) + "\n")
    return record


def find_tokenizer_fingerprint(model_path: str | os.PathLike) -> tuple[Path, dict] | None:
    """The fingerprint record of the model at ``model_path``, or None if it has none.

    Looks in the model's directory, then the one above, as ``find_tokenizer`` does; a
    directory that holds a tokenizer file but no record ends the search (that tokenizer
    belongs to the model, and it was made before fingerprints existed).

    Raises:
        ValueError: naming the record, when it is unreadable or holds no SHA-256.
    """
    here = Path(model_path).resolve().parent
    for directory in (here, here.parent):
        path = directory / FINGERPRINT_NAME
        if path.is_file():
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as error:
                raise ValueError(f"{path}: the model's tokenizer fingerprint cannot be read "
                                 f"({error}); delete it to check only the vocabulary size, or "
                                 f"pass {FORCE_FLAG}") from None
            digest = record.get("sha256") if isinstance(record, dict) else None
            if not isinstance(digest, str) or len(digest) != 64:
                raise ValueError(f"{path}: holds no SHA-256 (\"sha256\": 64 hex digits); delete "
                                 f"it to check only the vocabulary size, or pass {FORCE_FLAG}")
            return path, record
        if any((directory / name).is_file() for name in _TOKENIZER_NAMES):
            return None
    return None


def check_tokenizer_fingerprint(model_path: str | os.PathLike,
                                tokenizer_file: str | os.PathLike,
                                force: bool = False) -> str | None:
    """Refuses a tokenizer file that is not the one the model was made with.

    Args:
        model_path: the ``.keras`` file (``preset:NAME`` has no record: nothing to check).
        tokenizer_file: the tokenizer about to be used.
        force: accept a different tokenizer (a warning is returned instead).

    Returns:
        None when the fingerprints agree or the model has none; with ``force``, a warning
        line for a tokenizer that differs.

    Raises:
        TokenizerMismatchError: naming both files and :data:`FORCE_FLAG`, when the SHA-256
            of ``tokenizer_file`` is not the recorded one and ``force`` is false.
        ValueError: the record is damaged (named).
    """
    if str(model_path).startswith("preset:"):
        return None
    found = find_tokenizer_fingerprint(model_path)
    if found is None:
        return None
    record_path, record = found
    digest = file_sha256(tokenizer_file)
    if digest == record["sha256"]:
        return None
    message = (f"tokenizer {tokenizer_file} (SHA-256 {digest[:12]}...) is not the tokenizer "
               f"model {model_path} was made with: {record_path} records "
               f"{record.get('file', 'its tokenizer')} with SHA-256 {record['sha256'][:12]}...")
    if force:
        return f"warning: {message}; used anyway ({FORCE_FLAG})"
    raise TokenizerMismatchError(
        f"{message}. Its embeddings would be meaningless: use the model's own tokenizer "
        f"(leave out --tokenizer to take the one beside the model), or pass {FORCE_FLAG} "
        "if this tokenizer gives the same ids")
