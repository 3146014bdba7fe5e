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

:func:`prepare_records` writes the record sets a training run reads (the training split
with all captions, the evaluation splits with task-1 captions) into one directory, once:
a ``<split>.done`` marker records the settings, and a later call with the same settings
only returns the shard patterns.

Example:
    >>> rows = multi30k_rows("../shared/data/multi30k-mini", "val")  # doctest: +SKIP
    >>> stats = write_multi30k("../shared/data/multi30k-mini", "../shared/data/multi30k-mini/images",
    ...                        "val", "out/m30k-val", shards=2)  # doctest: +SKIP
    >>> prepare_records("../shared/data/multi30k-mini", "records/m30k",
    ...                 image_size=64)  # doctest: +SKIP
    {'train': 'records/m30k/train-*-of-*.tfrecord', 'val': 'records/m30k/val-*-of-*.tfrecord'}
"""

from __future__ import annotations

import glob
import gzip
import json
import os
from collections.abc import Sequence
from pathlib import Path

from malign import atomic_files
from malign.data.writer import CaptionRow, WriteStats, write_rows

TASK1_LANGUAGES = ("en", "de", "fr", "cs")
TASK2_LANGUAGES = ("en", "de")
TASK2_CAPTIONS_PER_IMAGE = 5
CAPTION_SETS = ("task1", "task2", "all")
#: The split ``prepare_records`` writes with its ``captions`` (the others get
#: ``eval_captions``).
TRAIN_SPLIT = "train"
#: Bumped when ``prepare_records`` changes what it writes, so old sets are written again.
RECORDS_FORMAT = 1


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


def default_shards(images: int) -> int:
    """Shard files for a split of ``images`` images: one per 1000, at least 1, at most 16.

    Example:
        >>> default_shards(242), default_shards(4000), default_shards(29000)
        (1, 4, 16)
    """
    return max(1, min(16, round(images / 1000)))


def _split_name(split: object) -> str:
    if not isinstance(split, str) or not split.strip() or split != split.strip():
        raise ValueError(f"a Multi30K split is a name such as 'train' or 'val', got {split!r}")
    if os.sep in split or (os.altsep and os.altsep in split) or split.startswith("."):
        raise ValueError(f"a Multi30K split is a file-name part such as 'test_2016_flickr', "
                         f"not a path: {split!r}")
    return split


def _images_dir(root: Path, images: str | os.PathLike | None) -> Path:
    path = Path(images) if images is not None else root / "images"
    if not path.is_dir():
        if images is None:
            raise FileNotFoundError(
                f"no images directory: {path} does not exist; pass the directory of the "
                "Flickr30K images (images=... / --images)")
        raise FileNotFoundError(f"Multi30K images directory not found: {path}")
    return path


def _caption_files(root: str | os.PathLike, split: str, captions: str,
                   languages: Sequence[str] | None = None) -> list[tuple[Path, str]]:
    """``(file, language)`` of every caption file of a split's caption set, in reading order
    (the files :func:`multi30k_rows` reads; missing task-1 languages are left out)."""
    data = _data_dir(root)
    files = []
    if captions in ("task1", "all"):
        for lang in languages or available_languages(root, split):
            path = _caption_file(data / "task1" / "raw" / f"{split}.{lang}")
            if path is not None:
                files.append((path, lang))
    if captions in ("task2", "all"):
        for lang in [x for x in (languages or TASK2_LANGUAGES) if x in TASK2_LANGUAGES]:
            for k in range(1, TASK2_CAPTIONS_PER_IMAGE + 1):
                path = _caption_file(data / "task2" / "raw" / f"{split}.{k}.{lang}")
                if path is not None:
                    files.append((path, lang))
    return files


def _source_sizes(root: str | os.PathLike, split: str, captions: str,
                  languages: Sequence[str] | None = None) -> dict[str, int]:
    """Byte sizes of the split lists and caption files a split's records are read from."""
    data = _data_dir(root)
    paths = []
    if captions in ("task1", "all"):
        paths.append(data / "task1" / "image_splits" / f"{split}.txt")
    if captions in ("task2", "all"):
        paths.append(data / "task2" / "image_splits" / f"{split}_images.txt")
    paths += [path for path, _ in _caption_files(root, split, captions, languages)]
    return {os.path.relpath(path, data): os.path.getsize(path) for path in paths
            if path.is_file()}


def _read_marker(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _write_marker(path: Path, settings: dict) -> None:
    atomic_files.write_text(path, json.dumps(settings, sort_keys=True) + "\n")


def prepare_records(
    root: str | os.PathLike,
    directory: str | os.PathLike,
    splits: Sequence[str] = (TRAIN_SPLIT, "val"),
    captions: str = "all",
    eval_captions: str = "task1",
    images: str | os.PathLike | None = None,
    image_size: int | None = None,
    languages: Sequence[str] | None = None,
    shards: int | None = None,
    verbose: bool = True,
    **write_options: object,
) -> dict[str, str]:
    """Writes the records of Multi30K splits into ``directory`` once; returns their patterns.

    The ``train`` split gets ``captions`` (default ``"all"``: the four task-1 captions and
    the ten task-2 ones per image), every other split ``eval_captions`` (default
    ``"task1"``: one caption per language, the Multi30K retrieval benchmark). Split
    ``s`` goes to ``{directory}/{s}-0000i-of-0000N.tfrecord`` and a marker
    ``{directory}/{s}.done`` records what it was written from and with (the root and
    images directories, caption set, languages, image side, shards, the byte sizes of
    the split list and caption files). A split whose marker records the same settings is
    not written again; otherwise its old shards are removed and it is written anew, and
    the marker is written last, so an interrupted write is redone.

    Args:
        root: the Multi30K checkout (holding ``data/task1``) or its ``data`` directory.
        directory: where the records go (created if needed).
        splits: split names as in the file names (``train``, ``val``,
            ``test_2016_flickr``...).
        captions: the caption set of the ``train`` split: ``"task1"``, ``"task2"`` or
            ``"all"`` (see :func:`multi30k_rows`).
        eval_captions: the caption set of the other splits.
        images: the directory of the Flickr30K images; default ``{root}/images``.
        image_size: the model's image size: images are stored with their shorter side
            reduced to ``malign.data.preprocess.resize_size(image_size)`` (77 for 64), the
            side the training and evaluation crops resize to, so nothing is stored or
            decoded that a crop would not use. None stores them as they are.
        languages: languages to keep (default all available).
        shards: shard files per split; default :func:`default_shards` of its image count.
        verbose: print what is written or reused, and the writer's progress and summary.
        **write_options: passed to :func:`malign.data.writer.write_rows` (``workers``,
            ``max_image_pixels``, ``sequence_length``, ``sentencepiece_model``).

    Returns:
        ``{split: shard pattern}`` in the order of ``splits``.

    Raises:
        ValueError: a bad split name, caption set, image size or shard count, or a split
            whose records would hold no image (every image missing or unreadable).
        FileNotFoundError: no Multi30K layout under ``root``, a missing split list or
            caption file, or a missing images directory. Every split's caption files are
            read before anything is written.

    Example:
        >>> patterns = prepare_records("../shared/data/multi30k-mini", "records/m30k",
        ...                            image_size=64)  # doctest: +SKIP
        >>> patterns["val"]  # doctest: +SKIP
        'records/m30k/val-*-of-*.tfrecord'
    """
    from malign.data.schema import shard_pattern

    names = [_split_name(s) for s in ([splits] if isinstance(splits, str) else list(splits))]
    if not names:
        raise ValueError("prepare_records needs at least one split")
    if len(set(names)) != len(names):
        raise ValueError(f"splits must differ, got {names}")
    for name, value in (("captions", captions), ("eval_captions", eval_captions)):
        if value not in CAPTION_SETS:
            raise ValueError(f"{name} must be one of {CAPTION_SETS}, got {value!r}")
    max_side = None
    if image_size is not None:
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 16:
            raise ValueError(f"image_size must be an integer >= 16 (pixels), got {image_size!r}")
        from malign.data.preprocess import resize_size

        max_side = resize_size(image_size)
    if shards is not None and (isinstance(shards, bool) or not isinstance(shards, int)
                               or shards < 1):
        raise ValueError(f"shards must be a positive integer, got {shards!r}")
    root = Path(root).resolve()
    images_dir = _images_dir(root, images).resolve()
    langs = list(dict.fromkeys(languages)) if languages else None

    # Read every split's captions first: a missing file stops the call before any write.
    plan = []
    for split in names:
        caption_set = captions if split == TRAIN_SPLIT else eval_captions
        rows = multi30k_rows(root, split, langs, caption_set)
        count = len({row.image for row in rows})
        settings = {
            "format": RECORDS_FORMAT, "root": str(root), "images": str(images_dir),
            "split": split, "captions": caption_set, "languages": langs,
            "max_image_side": max_side, "shards": shards or default_shards(count),
            "sources": _source_sizes(root, split, caption_set, langs),
            "write_options": {k: write_options[k] for k in sorted(write_options)},
        }
        plan.append((split, rows, count, settings))

    directory = Path(directory)
    patterns = {}
    for split, rows, count, settings in plan:
        prefix = directory / split
        pattern = shard_pattern(str(prefix))
        done = directory / f"{split}.done"
        patterns[split] = pattern
        if _read_marker(done) == settings and glob.glob(pattern):
            if verbose:
                print(f"malign: Multi30K {split}: records up to date in {directory} "
                      f"({count} images, captions={settings['captions']})", flush=True)
            continue
        directory.mkdir(parents=True, exist_ok=True)
        done.unlink(missing_ok=True)
        for stale in glob.glob(pattern) + [f"{prefix}.summary.json"]:
            if os.path.exists(stale):
                os.remove(stale)
        if verbose:
            print(f"malign: Multi30K {split}: writing {count} images "
                  f"(captions={settings['captions']}) to {prefix}-*", flush=True)
        stats = write_rows(rows, prefix, images_dir=images_dir, shards=settings["shards"],
                           max_image_side=max_side, verbose=verbose, **write_options)
        if stats.records == 0:
            raise ValueError(
                f"Multi30K {split}: no record written: none of its {count} images could be "
                f"read from {images_dir} ({stats.skipped_line()})")
        _write_marker(done, settings)
    return patterns


def prepare_tokenizer(
    root: str | os.PathLike,
    directory: str | os.PathLike,
    vocab_size: int,
    split: str = TRAIN_SPLIT,
    captions: str = "all",
    languages: Sequence[str] | None = None,
    seed: int = 0,
    verbose: bool = True,
) -> Path:
    """Trains a SentencePiece vocabulary on a Multi30K split's captions once.

    The vocabulary (``malign.text.train_vocabulary``: unigram, byte fallback, languages
    balanced with alpha 0.3) is trained on the caption files of ``split`` (task 1's four
    languages and, with ``captions="all"``, task 2's five English and five German
    captions per image) and written to ``{directory}/tokenizer.model`` (with
    ``tokenizer.vocab`` and ``tokenizer.stats.json``). A marker ``tokenizer.done``
    records the settings and the caption files' sizes; a call with the same ones returns
    the model without training again.

    Args:
        root: the Multi30K checkout (holding ``data/task1``) or its ``data`` directory.
        directory: where ``tokenizer.model`` goes (created if needed).
        vocab_size: pieces in the vocabulary (the 5 special tokens and 256 bytes included).
        split: the split whose captions are the corpus.
        captions: ``"task1"``, ``"task2"`` or ``"all"``.
        languages: languages to keep (default all available).
        seed: the sampling seed.
        verbose: print progress.

    Returns:
        The path of ``tokenizer.model``.

    Raises:
        ValueError: a bad caption set, split name or vocabulary size (SentencePiece's own
            error when the corpus is too small for it).
        FileNotFoundError: no caption files for the split.

    Example:
        >>> prepare_tokenizer("../shared/data/multi30k-mini", "records/m30k",
        ...                   4000)  # doctest: +SKIP
        PosixPath('records/m30k/tokenizer.model')
    """
    from malign.text.vocabulary import InputFile, train_vocabulary

    split = _split_name(split)
    if captions not in CAPTION_SETS:
        raise ValueError(f"captions must be one of {CAPTION_SETS}, got {captions!r}")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise ValueError(f"vocab_size must be an integer, got {vocab_size!r}")
    root = Path(root).resolve()
    langs = list(dict.fromkeys(languages)) if languages else None
    files = _caption_files(root, split, captions, langs)
    if not files:
        raise FileNotFoundError(
            f"no Multi30K caption files for split {split!r} (captions={captions!r}) under "
            f"{_data_dir(root)}")
    directory = Path(directory)
    model = directory / "tokenizer.model"
    done = directory / "tokenizer.done"
    settings = {"format": RECORDS_FORMAT, "root": str(root), "split": split,
                "captions": captions, "languages": langs, "vocab_size": vocab_size,
                "seed": seed, "sources": _source_sizes(root, split, captions, langs)}
    if _read_marker(done) == settings and model.is_file():
        if verbose:
            print(f"malign: Multi30K tokenizer up to date: {model} ({vocab_size} pieces)",
                  flush=True)
        return model
    directory.mkdir(parents=True, exist_ok=True)
    done.unlink(missing_ok=True)
    if verbose:
        print(f"malign: training a {vocab_size}-piece tokenizer on the {split} captions "
              f"({len(files)} files) into {model}", flush=True)
    train_vocabulary([InputFile(str(path), lang) for path, lang in files], vocab_size,
                     directory / "tokenizer", seed=seed, verbose=verbose)
    _write_marker(done, settings)
    return model
