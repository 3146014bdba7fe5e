"""Checks of a checkpoint directory's files before anything is built from them.

Every damaged or malformed input of ``malign convert`` is a ``ConversionError`` whose
message names the file and what is wrong with it, so the command ends with that line and
a non-zero exit code instead of a traceback from a JSON, safetensors or numpy internals:

- JSON files (``config.json``, ``*.index.json``, the tokenizer and processor configs):
  readable, UTF-8, valid JSON, an object (:func:`read_json_object`);
- ``vocab.txt``: readable UTF-8 text holding BERT's special tokens, with no more tokens
  than the model's vocabulary has ids (:func:`check_vocabulary`).

The weight files are checked where they are read (``malign.convert.checkpoint``).

Example:
    >>> check_vocabulary("tests/fixtures/align_tiny/vocab.txt", 1000)  # doctest: +SKIP
    200
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from malign.convert.checkpoint import ConversionError

__all__ = ["BERT_SPECIAL_TOKENS", "check_vocabulary", "read_json_object"]

#: The tokens a BERT WordPiece vocabulary must hold (malign's WordPieceTokenizer uses them).
BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")

_REDOWNLOAD = "download the checkpoint directory again"


def read_json_object(path: str | os.PathLike, what: str = "") -> dict[str, Any]:
    """Reads a JSON file that must hold an object.

    Args:
        path: the file.
        what: what the file is, for the message (e.g. "the model config").

    Returns:
        The object as a dict.

    Raises:
        ConversionError: naming the file, when it cannot be read, is not UTF-8, is not
            valid JSON (with the line and column) or holds something other than an object.

    Example:
        >>> read_json_object("tests/fixtures/align_tiny/config.json")["model_type"]  # doctest: +SKIP
        'align'
    """
    path = Path(path)
    label = f"{path}{f' ({what})' if what else ''}"
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as error:
        raise ConversionError(f"{label}: cannot be read ({error.strerror or error})") from None
    except UnicodeDecodeError as error:
        raise ConversionError(f"{label}: not UTF-8 text (byte {error.start}); the file is "
                              f"damaged: {_REDOWNLOAD}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        detail = "the file is empty" if not text.strip() else \
            f"{error.msg}; line {error.lineno}, column {error.colno}"
        raise ConversionError(f"{label}: not valid JSON ({detail}); {_REDOWNLOAD}") from None
    if not isinstance(data, dict):
        raise ConversionError(f"{label}: must hold a JSON object, got a {type(data).__name__}")
    return data


def check_vocabulary(path: str | os.PathLike, vocabulary_size: int | None = None) -> int:
    """Checks a WordPiece ``vocab.txt`` and returns its number of tokens.

    Args:
        path: the vocabulary file (one token a line, id = line number).
        vocabulary_size: the model's vocabulary size (``text_config.vocab_size``); a
            vocabulary with more tokens would produce ids the model has no embedding for.

    Raises:
        ConversionError: naming the file, when it cannot be read, is not UTF-8 text, is
            empty, lacks one of ``BERT_SPECIAL_TOKENS`` or has more tokens than
            ``vocabulary_size``.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConversionError(f"{path}: cannot be read ({error.strerror or error})") from None
    if b"\x00" in data:
        raise ConversionError(f"{path}: holds NUL bytes, so it is not a text vocabulary (one "
                              f"token a line); the file is damaged: {_REDOWNLOAD}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConversionError(f"{path}: not UTF-8 text (byte {error.start}); the file is "
                              f"damaged: {_REDOWNLOAD}") from None
    from malign.text.tokenizers import vocabulary_lines

    tokens = vocabulary_lines(text)
    if not tokens:
        raise ConversionError(f"{path}: is empty; a WordPiece vocabulary has one token a line "
                              f"({_REDOWNLOAD})")
    missing = [t for t in BERT_SPECIAL_TOKENS if t not in set(tokens)]
    if missing:
        raise ConversionError(f"{path}: lacks the special token(s) {', '.join(missing)} of a "
                              "BERT WordPiece vocabulary; it is not the checkpoint's vocab.txt "
                              f"or it is damaged ({_REDOWNLOAD})")
    if vocabulary_size is not None and len(tokens) > vocabulary_size:
        raise ConversionError(f"{path}: has {len(tokens)} tokens but config.json's "
                              f"text_config.vocab_size is {vocabulary_size}: it is not this "
                              "checkpoint's vocabulary (or config.json is not)")
    return len(tokens)
