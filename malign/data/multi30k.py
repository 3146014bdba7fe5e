"""Reading Multi30K in its own file layout (github.com/multi30k/dataset).

``{root}/data/task1/image_splits/{split}.txt`` lists the Flickr30K image names of a split;
``{root}/data/task1/raw/{split}.{lang}.gz`` holds one caption per image per language (English
originals, German/French/Czech translations), line i belonging to image i. Task 2 adds five
independent English and German captions per image: ``data/task2/raw/{split}.{k}.{lang}.gz``,
``k = 1..5``, against ``data/task2/image_splits/{split}_images.txt``.

Records get one caption per task-1 language (``captions="task1"``, the Multi30K retrieval
benchmark), the ten task-2 captions (``"task2"``), or all of them (``"all"``). The image id is
the Flickr30K file stem. A caption file whose line count differs from its split list is an
error that names both files.

Example:
    >>> rows = multi30k_rows("../shared/data/multi30k-mini", "val")  # doctest: +SKIP
    >>> stats = write_multi30k("../shared/data/multi30k-mini", "../shared/data/multi30k-mini/images",
    ...                        "val", "out/m30k-val", shards=2)  # doctest: +SKIP
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Sequence
from pathlib import Path

from malign.data.writer import CaptionRow, WriteStats, write_rows

TASK1_LANGUAGES = ("en", "de", "fr", "cs")
TASK2_LANGUAGES = ("en", "de")
TASK2_CAPTIONS_PER_IMAGE = 5
CAPTION_SETS = ("task1", "task2", "all")


def _data_dir(root: str | os.PathLike) -> Path:
    root = Path(root)
    for candidate in (root / "data", root):
        if (candidate / "task1").is_dir() or (candidate / "task2").is_dir():
            return candidate
    raise FileNotFoundError(
        f"no Multi30K layout under {root}: expected {root}/data/task1/image_splits and "
        f"{root}/data/task1/raw (as in github.com/multi30k/dataset)"
    )


def _caption_file(base: Path) -> Path | None:
    """``base.gz`` or ``base`` (uncompressed), whichever exists."""
    for path in (base.with_name(base.name + ".gz"), base):
        if path.is_file():
            return path
    return None


def _read_lines(path: Path) -> list[bytes]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [line.rstrip(b"\r") for line in lines]


def _read_split(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"Multi30K split list not found: {path}")
    return [line.decode("utf-8").strip() for line in _read_lines(path)]


def _checked_captions(path: Path, split_file: Path, images: Sequence[str]) -> list[bytes]:
    lines = _read_lines(path)
    if len(lines) != len(images):
        raise ValueError(
            f"Multi30K row count mismatch: {path} has {len(lines)} lines but the split list "
            f"{split_file} has {len(images)} images"
        )
    return lines


def available_languages(root: str | os.PathLike, split: str) -> list[str]:
    """The task-1 languages that have a caption file for ``split``.

    Args:
        root: the Multi30K checkout (holding ``data/``) or its ``data`` directory.
        split: ``train``, ``val``, ``test_2016_flickr``...

    Example:
        >>> available_languages("../shared/data/multi30k-mini", "val")  # doctest: +SKIP
        ['en', 'de', 'fr', 'cs']
    """
    raw = _data_dir(root) / "task1" / "raw"
    return [lang for lang in TASK1_LANGUAGES if _caption_file(raw / f"{split}.{lang}")]


def multi30k_rows(
    root: str | os.PathLike,
    split: str,
    languages: Sequence[str] | None = None,
    captions: str = "task1",
) -> list[CaptionRow]:
    """Caption rows of a Multi30K split, in split-list order.

    Args:
        root: the Multi30K checkout (holding ``data/``) or its ``data`` directory.
        split: the split name as in the file names (``train``, ``val``,
            ``test_2016_flickr``...).
        languages: languages to keep; default all available for the chosen caption set.
            Asking for a language without a caption file is an error naming the file.
        captions: ``"task1"`` (one caption per language), ``"task2"`` (five English and
            five German captions) or ``"all"``.

    Returns:
        One :class:`CaptionRow` per caption; ``image`` is the file name in the split list
        and ``image_id`` its stem. Captions are bytes; the writer validates them.

    Raises:
        FileNotFoundError: a missing split list or requested caption file.
        ValueError: a caption file whose line count differs from its split list.

    Example:
        >>> rows = multi30k_rows("../shared/data/multi30k-mini", "val", ["en"])  # doctest: +SKIP
        >>> len(rows)  # doctest: +SKIP
        242
    """
    if captions not in CAPTION_SETS:
        raise ValueError(f"captions must be one of {CAPTION_SETS}, got {captions!r}")
    data = _data_dir(root)
    per_image: dict[str, list[CaptionRow]] = {}
    order: list[str] = []
    wanted = list(languages) if languages else None

    def add(images: Sequence[str], lines: Sequence[bytes], lang: str) -> None:
        for image, line in zip(images, lines):
            if image not in per_image:
                per_image[image] = []
                order.append(image)
            per_image[image].append(CaptionRow(image, line, lang, os.path.splitext(image)[0]))

    found: set[str] = set()
    if captions in ("task1", "all"):
        split_file = data / "task1" / "image_splits" / f"{split}.txt"
        images = _read_split(split_file)
        for lang in wanted or available_languages(root, split):
            base = data / "task1" / "raw" / f"{split}.{lang}"
            path = _caption_file(base)
            if path is None:
                if captions == "task1":
                    raise FileNotFoundError(
                        f"no Multi30K task1 captions for {lang!r}: {base}.gz does not exist"
                    )
                continue
            add(images, _checked_captions(path, split_file, images), lang)
            found.add(lang)
    if captions in ("task2", "all"):
        if captions == "task2" and wanted and set(wanted) - set(TASK2_LANGUAGES):
            bad = sorted(set(wanted) - set(TASK2_LANGUAGES))
            raise ValueError(f"Multi30K task2 has only en and de captions, not {bad}")
        split_file = data / "task2" / "image_splits" / f"{split}_images.txt"
        images = _read_split(split_file)
        for lang in [x for x in (wanted or TASK2_LANGUAGES) if x in TASK2_LANGUAGES]:
            for k in range(1, TASK2_CAPTIONS_PER_IMAGE + 1):
                base = data / "task2" / "raw" / f"{split}.{k}.{lang}"
                path = _caption_file(base)
                if path is None:
                    raise FileNotFoundError(f"Multi30K task2 captions not found: {base}.gz")
                add(images, _checked_captions(path, split_file, images), lang)
            found.add(lang)
    missing = sorted(set(wanted or []) - found)
    if missing or not found:
        raise FileNotFoundError(
            f"no Multi30K caption files for split {split!r}, languages {missing or 'any'}, "
            f"under {data} (captions={captions!r})"
        )
    return [row for image in order for row in per_image[image]]


def write_multi30k(
    root: str | os.PathLike,
    images_dir: str | os.PathLike,
    split: str,
    out_prefix: str | os.PathLike,
    shards: int = 1,
    languages: Sequence[str] | None = None,
    captions: str = "task1",
    verbose: bool = True,
    **write_options: object,
) -> WriteStats:
    """Writes a Multi30K split as TFRecord shards, one record per image.

    Args:
        root: the Multi30K checkout (holding ``data/``) or its ``data`` directory.
        images_dir: the directory of the Flickr30K images (``<name>.jpg``).
        split: the split name (``train``, ``val``, ``test_2016_flickr``...).
        out_prefix: where the shards go.
        shards: the number of shard files.
        languages: languages to keep (default: all available).
        captions: ``"task1"``, ``"task2"`` or ``"all"`` (see :func:`multi30k_rows`).
        verbose: print progress and the summary.
        **write_options: passed to :func:`malign.data.writer.write_rows`
            (``max_image_side``, ``sequence_length``, ``sentencepiece_model``, ``workers``).

    Returns:
        The write's :class:`WriteStats`.

    Example:
        >>> write_multi30k("multi30k", "flickr30k-images", "train", "records/m30k-train",
        ...                shards=16)  # doctest: +SKIP
    """
    rows = multi30k_rows(root, split, languages, captions)
    return write_rows(
        rows, out_prefix, images_dir=images_dir, shards=shards, verbose=verbose, **write_options
    )
