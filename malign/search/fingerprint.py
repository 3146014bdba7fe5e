"""Which model made an embedding: model paths, their formats and fingerprints.

Embeddings of two models live in different spaces; a similarity between them means
nothing. ``malign embed`` records the model that made a file (its path, format and
fingerprint); ``malign search`` embeds its query with a model of the same fingerprint or
refuses (:func:`check_same_model`).

- A ``.keras`` file's fingerprint is the SHA-256 of its bytes. Its tokenizer (a separate
  file) is recorded beside it with its own SHA-256, and checked whenever captions are
  embedded.
- An exported SavedModel's (a version directory of ``malign export``) is the SHA-256 of
  the list of its files with their SHA-256, except ``assets.extra/`` (the model card); its
  tokenizer is inside it. A base directory (``export/malign``) means its newest version.

This module imports nothing heavy: the command line's prechecks use it.

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.keras"
    >>> _ = path.write_bytes(b"weights")
    >>> model_format(path), model_fingerprint(path)[:12]
    ('keras', '9a129038d9a0')
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "check_same_model",
    "file_sha256",
    "model_fingerprint",
    "model_format",
    "resolve_model_path",
]

_SAVED_MODEL_FILE = "saved_model.pb"
_CARD_DIR = "assets.extra"
_CHUNK = 1 << 20


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, as hex.

    Example:
        >>> file_sha256(__file__) == file_sha256(__file__)
        True
    """
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_model_path(spec: str | os.PathLike) -> Path:
    """The model a ``--model`` value names: a ``.keras`` file or a SavedModel version directory.

    A SavedModel base directory (one holding numbered versions, as ``malign export``
    writes) resolves to its newest complete version.

    Args:
        spec: the ``--model`` value.

    Returns:
        The absolute path of the ``.keras`` file or of the version directory.

    Raises:
        FileNotFoundError: nothing at that path.
        ValueError: neither a ``.keras`` file nor a SavedModel, saying what was found.

    Example:
        >>> resolve_model_path("/nonexistent/model.keras")
        Traceback (most recent call last):
        ...
        FileNotFoundError: model not found: /nonexistent/model.keras
    """
    text = os.fspath(spec)
    if text.startswith("preset:"):
        raise ValueError(f"--model {text}: an untrained preset embeds at random; give a "
                         ".keras file saved by malign or a SavedModel exported by `malign export`")
    path = Path(text).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"model not found: {text}")
    path = path.resolve()
    if path.is_file():
        if path.suffix != ".keras":
            raise ValueError(f"--model {text} is a file but not a .keras model; give a .keras "
                             "file saved by malign or a SavedModel directory (`malign export`)")
        return path
    if (path / _SAVED_MODEL_FILE).is_file():
        return path
    versions = sorted((int(p.name), p) for p in path.iterdir()
                      if p.name.isdigit() and (p / _SAVED_MODEL_FILE).is_file())
    if versions:
        return versions[-1][1]
    raise ValueError(f"--model {text} is a directory without {_SAVED_MODEL_FILE} or numbered "
                     "versions holding one: give a SavedModel version directory written by "
                     "`malign export` (e.g. export/malign/1) or a .keras file")


def model_format(path: str | os.PathLike) -> str:
    """``"keras"`` for a ``.keras`` file, ``"saved_model"`` for a SavedModel directory.

    Args:
        path: a path returned by :func:`resolve_model_path`.

    Example:
        >>> model_format("runs/demo/model.keras")
        'keras'
    """
    return "saved_model" if Path(path).is_dir() else "keras"


def model_fingerprint(path: str | os.PathLike) -> str:
    """The fingerprint of a resolved model path (see the module docstring), as hex.

    Args:
        path: a ``.keras`` file or a SavedModel version directory.

    Example:
        >>> model_fingerprint("export/malign/1")  # doctest: +SKIP
        '9c1e...'
    """
    path = Path(path)
    if not path.is_dir():
        return file_sha256(path)
    digest = hashlib.sha256(b"malign-saved-model\n")
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        relative = file.relative_to(path).as_posix()
        if relative.split("/", 1)[0] == _CARD_DIR:
            continue
        digest.update(f"{relative}\t{file_sha256(file)}\n".encode())
    return digest.hexdigest()


def _describe(model: Mapping[str, Any]) -> str:
    return (f"{model.get('path')} ({model.get('format')}, {model.get('embedding_dim')} dims, "
            f"fingerprint {str(model.get('fingerprint'))[:12]})")


def check_same_model(recorded: Mapping[str, Any], actual: Mapping[str, Any], what: str,
                     texts: bool = False) -> None:
    """Refuses to compare embeddings of two different models.

    Args:
        recorded: the ``model`` record of the embeddings being searched.
        actual: the ``model`` record of what embeds (or embedded) the query.
        what: the embeddings' name in the message (e.g. their file).
        texts: the query involves captions: a ``.keras`` model's tokenizers must match too
            (when both are recorded).

    Raises:
        ValueError: different embedding widths, fingerprints or tokenizers, naming both
            models and what to do.

    Example:
        >>> a = {"path": "a.keras", "format": "keras", "fingerprint": "1", "embedding_dim": 32}
        >>> check_same_model(a, dict(a), "gallery.npz")
        >>> check_same_model(a, dict(a, embedding_dim=64, fingerprint="2"), "gallery.npz")
        Traceback (most recent call last):
        ...
        ValueError: the query is 64-dimensional but gallery.npz holds 32-dimensional embeddings ...
    """
    advice = (f"search with the model that made {what} (--model {recorded.get('path')}), or "
              f"embed them again with {actual.get('path')}")
    if int(recorded.get("embedding_dim", -1)) != int(actual.get("embedding_dim", -2)):
        raise ValueError(
            f"the query is {actual.get('embedding_dim')}-dimensional but {what} holds "
            f"{recorded.get('embedding_dim')}-dimensional embeddings made by another model: "
            f"{what} by {_describe(recorded)}, the query by {_describe(actual)}; {advice}")
    if recorded.get("fingerprint") != actual.get("fingerprint"):
        changed = " (the file at that path has changed since)" if \
            recorded.get("path") == actual.get("path") else ""
        raise ValueError(
            f"the query would be embedded by another model than {what}{changed}: {what} by "
            f"{_describe(recorded)}, the query by {_describe(actual)}; embeddings of different "
            f"models are not comparable; {advice}")
    mine, theirs = recorded.get("tokenizer"), actual.get("tokenizer")
    if texts and mine and theirs and mine.get("sha256") != theirs.get("sha256"):
        raise ValueError(
            f"{what} was embedded with the tokenizer {mine.get('path')} but the query would be "
            f"tokenized with {theirs.get('path')}, another vocabulary; pass --tokenizer "
            f"{mine.get('path')}")
