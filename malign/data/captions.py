"""The captions of malign records as plain text, one file per language (a tokenizer corpus).

Example:
    >>> write_caption_files("records/train", "corpus/train")  # doctest: +SKIP
    {'de': ('corpus/train.de.txt', 4000), 'en': ('corpus/train.en.txt', 4000)}
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

import tensorflow as tf

from malign import atomic_files
from malign.data import record_reader, schema
from malign.data.pipeline import list_files

__all__ = ["write_caption_files"]


def write_caption_files(file_pattern: str, prefix: str | os.PathLike,
                        languages: Sequence[str] | None = None) -> dict[str, tuple[str, int]]:
    """Writes every usable caption of the records to ``{prefix}.{lang}.txt``.

    A caption is usable when it is non-empty after stripping and valid UTF-8 (as the input
    pipeline decides); line breaks inside a caption become spaces so that each line is one
    caption. Each file is written to a temporary name and renamed when complete. A record
    whose checksum fails, or a shard tail whose framing is lost, is skipped with a line on
    stderr naming the shard and the byte offset; the records after a bad record are read.

    Args:
        file_pattern: shard glob or prefix.
        prefix: output prefix (its directory is created).
        languages: languages to write; None writes all.

    Returns:
        ``{lang: (path, number of captions)}``.

    Raises:
        FileNotFoundError: no shard matches.
        ValueError: a requested language has no usable caption (names the languages found).
    """
    files = list_files(file_pattern)
    wanted = set(languages) if languages else None
    lines: dict[str, list[str]] = {}
    stream = record_reader.record_stream(files)
    for element in tf.data.Dataset.range(len(files)).flat_map(stream.file_dataset):
        if int(element["damage"]) != record_reader.INTACT:
            path, offset = files[int(element["file"])], int(element["offset"])
            what = (f"record {int(element['index'])} is corrupt (its checksum fails)"
                    if int(element["damage"]) == record_reader.CORRUPT else
                    f"{int(element['lost'])} bytes are unreadable (record framing lost)")
            print(f"malign data captions: shard {path} at byte {offset}: {what}; skipped",
                  file=sys.stderr)
            continue
        example = schema.parse_record(element["record"])
        texts = example[schema.CAPTION_TEXT].numpy()
        langs = example[schema.CAPTION_LANG].numpy()
        for raw, lang in zip(texts, langs):
            lang = lang.decode("utf-8", "replace")
            if wanted is not None and lang not in wanted:
                continue
            try:
                text = " ".join(raw.decode("utf-8").split())
            except UnicodeDecodeError:
                continue
            if text:
                lines.setdefault(lang, []).append(text)
    if wanted is not None and wanted - set(lines):
        raise ValueError(f"{file_pattern}: no usable caption in "
                         f"{', '.join(sorted(wanted - set(lines)))}; the records hold "
                         f"{', '.join(sorted(lines)) or 'no usable caption'}")
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    written = {}
    for lang, captions in sorted(lines.items()):
        path = prefix.with_name(f"{prefix.name}.{lang}.txt")
        atomic_files.write_text(path, "".join(c + "\n" for c in captions))
        written[lang] = (str(path), len(captions))
    return written
