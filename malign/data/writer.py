"""Writing image–caption TFRecord shards, skipping (and counting) bad input.

The writer takes *rows*: one caption of one image, with its language. Rows of the same image
become one record with all its captions. Nothing bad reaches the shards and nothing is
dropped silently: a row is skipped when its image file is missing or is not a complete,
decodable image, when its caption is empty, or when it is not valid UTF-8; the
:class:`WriteStats` summary says how many rows were skipped and why. Captions far longer than
the tokenizer's sequence length are kept (the tokenizer truncates them) but counted.

Images are stored as their original bytes when they are JPEG or PNG files that TensorFlow
decodes (every PNG bit depth and colour type; RGB or grey JPEG); other formats (GIF, WebP,
BMP, TIFF, CMYK JPEG...) are re-encoded as JPEG, and with ``max_image_side`` large images are
downscaled (shorter side) to keep shards small. Stored bytes keep their EXIF orientation,
which every reader applies (:func:`malign.data.preprocess.decode_image`); a re-encoded image
is turned upright first and stored without EXIF, so the pixels the pipeline and the
SavedModel see are the same either way. Re-encoding converts as TensorFlow's decoder does:
16-bit samples keep their high byte and alpha is dropped.

Images larger than ``max_image_pixels`` (width x height, read from the header before
decoding; default :data:`malign.data.image_header.DEFAULT_MAX_IMAGE_PIXELS`, the limit the
pipeline and the SavedModel apply too) are never stored as they are: a JPEG is decoded at a
reduced scale (libjpeg's 1/2, 1/4 or 1/8, so it never takes the memory of the full image)
and stored downsized (to ``max_image_side``, else to fit the limit); other formats are
skipped and counted as "image too large" (raise ``max_image_pixels`` to let the writer decode
them in full and downsize them with ``max_image_side``).

Example:
    >>> rows = [CaptionRow("cat.jpg", "a cat", "en"), CaptionRow("cat.jpg", "eine Katze", "de")]
    >>> stats = write_rows(rows, "out/pets", images_dir="photos", shards=1)  # doctest: +SKIP
    >>> print(stats.summary())  # doctest: +SKIP
    wrote 1 records (2 captions: de 1, en 1) to 1 shards at out/pets-*-of-*.tfrecord
    skipped 0 rows
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import io
import json
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import tensorflow as tf

from malign import atomic_files
from malign.data.image_header import (
    DEFAULT_MAX_IMAGE_PIXELS,
    exif_orientation,
    image_format,
    image_size,
)
from malign.data.preprocess import image_bytes_ok_py
from malign.data.progress import Progress
from malign.data.schema import ImageTextExample, shard_name, shard_pattern

#: Why a row was skipped; the order is the order of the summary line.
SKIP_REASONS = ("missing image", "corrupt image", "empty caption", "invalid utf-8", "malformed row",
                "image too large")


@dataclasses.dataclass
class CaptionRow:
    """One caption of one image, as read from a JSONL/CSV file or a dataset's files.

    Args:
        image: the image file, relative to the images directory or absolute.
        caption: the caption; ``bytes`` are decoded as UTF-8 by the writer, ``str`` must
            encode to UTF-8 (lone surrogates from undecodable input do not).
        lang: its language code.
        image_id: the record's id; defaults to the image path without extension.
    """

    image: str
    caption: str | bytes | None
    lang: str
    image_id: str | None = None


@dataclasses.dataclass
class WriteStats:
    """What a write did: records, captions per language, skipped rows by reason.

    Example:
        >>> stats = WriteStats()
        >>> stats.skip("empty caption", 2)
        >>> stats.skipped_line()
        'skipped 2 rows: 0 missing image, 0 corrupt image, 2 empty caption, 0 invalid utf-8'
    """

    records: int = 0
    captions: int = 0
    captions_per_lang: dict[str, int] = dataclasses.field(default_factory=dict)
    skipped: dict[str, int] = dataclasses.field(
        default_factory=lambda: dict.fromkeys(SKIP_REASONS, 0)
    )
    images_skipped: int = 0
    reencoded_images: int = 0
    downsized_images: int = 0
    max_image_pixels: int | None = None
    long_captions: int = 0
    shards: int = 0
    pattern: str = ""
    examples: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    def add_record(self, langs: list[str]) -> None:
        """Counts one written record with captions in ``langs`` (one entry per caption)."""
        self.records += 1
        self.captions += len(langs)
        for lang in langs:
            self.captions_per_lang[lang] = self.captions_per_lang.get(lang, 0) + 1

    def skip(self, reason: str, n: int = 1, example: str | None = None) -> None:
        """Counts ``n`` rows skipped for ``reason`` (one of :data:`SKIP_REASONS`)."""
        self.skipped[reason] += n
        if example is not None and len(self.examples.setdefault(reason, [])) < 5:
            self.examples[reason].append(example)

    @property
    def skipped_rows(self) -> int:
        """All skipped rows."""
        return sum(self.skipped.values())

    def skipped_line(self) -> str:
        """``skipped N rows: k missing image, m corrupt image, e empty caption, ...``
        (the first four reasons always, the others when they occur)."""
        parts = [f"{self.skipped[r]} {r}" for r in SKIP_REASONS[:4]]
        parts += [f"{self.skipped[r]} {r}" for r in SKIP_REASONS[4:] if self.skipped[r]]
        return f"skipped {self.skipped_rows} rows: " + ", ".join(parts)

    def summary(self) -> str:
        """A few human-readable lines for the end of a command."""
        langs = ", ".join(f"{k} {v}" for k, v in sorted(self.captions_per_lang.items()))
        lines = [
            f"wrote {self.records} records ({self.captions} captions: {langs or 'none'}) "
            f"to {self.shards} shards at {self.pattern}",
            self.skipped_line(),
        ]
        if self.images_skipped:
            lines.append(f"images skipped (no record written): {self.images_skipped}")
        for reason, names in self.examples.items():
            lines.append(f"  e.g. {reason}: {', '.join(names)}")
        if self.reencoded_images:
            lines.append(f"images re-encoded as JPEG (format or size): {self.reencoded_images}")
        if self.downsized_images:
            lines.append(f"images over {self.max_image_pixels:,} pixels, stored downsized: "
                         f"{self.downsized_images}")
        lines.append(f"long captions (will be truncated): {self.long_captions}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """The stats as a JSON-friendly dict (written to ``{prefix}.summary.json``)."""
        return dataclasses.asdict(self)


class BadImage(Exception):
    """An image file that cannot be stored; ``reason`` is a :data:`SKIP_REASONS` entry."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class LoadedImage(NamedTuple):
    """An image ready to be stored: its bytes, ``"jpeg"`` or ``"png"``, whether it was
    re-encoded, and whether it was downsized because it had more than the pixel limit."""

    data: bytes
    format: str
    reencoded: bool
    over_limit: bool


# What PIL's ImageOps.exif_transpose does for each EXIF orientation.
_TRANSPOSE = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE",
              6: "ROTATE_270", 7: "TRANSVERSE", 8: "ROTATE_90"}
_SIXTEEN_BIT_GREY = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def rgb8(image: Any) -> Any:
    """A PIL image as 8-bit RGB, converted as ``tf.io.decode_image(channels=3)`` converts.

    PIL's own ``convert("RGB")`` agrees with TensorFlow for every PNG mode but 16-bit grey
    (``I;16``), which it clips at 255 (a value of 30000 becomes white); here 16-bit grey
    keeps its high byte (``v >> 8``, 30000 -> 117), as TensorFlow and PIL's 16-bit RGB do.
    Alpha is dropped (not composited), palettes expanded (their transparency ignored).

    Args:
        image: a loaded PIL image.

    Returns:
        A PIL image in mode "RGB".

    Example:
        >>> import numpy as np
        >>> from PIL import Image
        >>> grey = Image.fromarray(np.array([[30000, 10000]], np.uint16))
        >>> np.asarray(rgb8(grey))[0, :, 0].tolist()
        [117, 39]
    """
    import numpy as np
    from PIL import Image

    if image.mode in _SIXTEEN_BIT_GREY:
        values = np.clip(np.asarray(image).astype(np.int64), 0, 65535) >> 8
        return Image.fromarray(values.astype(np.uint8), "L").convert("RGB")
    if image.mode in ("P", "PA"):
        image = image.convert("RGBA")  # via RGBA: no warning about palette transparency
    return image if image.mode == "RGB" else image.convert("RGB")


def _orientation(image: Any, data: bytes, kind: str | None) -> int:
    """The EXIF orientation: malign's reader for the formats the graph reads too (so all
    three paths agree), PIL's for the others (TIFF, ...), which only the writer sees."""
    if kind in ("jpeg", "png", "webp"):
        return exif_orientation(data)
    value = image.getexif().get(0x0112, 1)
    return int(value) if value in _TRANSPOSE else 1


def _target_size(height: int, width: int, max_image_side: int | None,
                 max_image_pixels: int | None, jpeg: bool = False) -> tuple[int, int] | None:
    """``(height, width)`` to downsize to, or None to keep the size.

    The shorter side becomes ``max_image_side`` if it is longer; an image still over
    ``max_image_pixels`` is scaled to fit, a JPEG by the smallest of libjpeg's DCT scales
    (1/2, 1/4, 1/8) that fits, so that it is decoded straight to that size.
    """
    scale = 1.0
    if max_image_side is not None and min(height, width) > max_image_side:
        scale = max_image_side / min(height, width)
    target = (max(1, round(height * scale)), max(1, round(width * scale)))
    if max_image_pixels is not None and target[0] * target[1] > max_image_pixels:
        for factor in (2, 4, 8) if jpeg else ():
            scaled = (math.ceil(height / factor), math.ceil(width / factor))
            if scaled[0] * scaled[1] <= max_image_pixels:
                return scaled
        scale = math.sqrt(max_image_pixels / (height * width))
        target = (max(1, math.floor(height * scale)), max(1, math.floor(width * scale)))
    return None if target == (height, width) else target


def _allow_pil_pixels(max_image_pixels: int | None) -> None:
    """Raises PIL's decompression-bomb guard to the writer's own limit if it is lower (PIL
    refuses images over twice its guard; the writer checks its limit itself first)."""
    from PIL import Image

    guard = Image.MAX_IMAGE_PIXELS
    if max_image_pixels is not None and guard is not None and guard < max_image_pixels:
        Image.MAX_IMAGE_PIXELS = max_image_pixels


def _too_large(path: str, height: int, width: int, limit: int) -> BadImage:
    return BadImage("image too large",
                    f"{path} ({width}x{height} = {width * height:,} pixels, over the limit of "
                    f"{limit:,}; raise --max-image-pixels to decode it and use "
                    "--max-image-side to store it smaller)")


def load_image(path: str, max_image_side: int | None = None,
               max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> LoadedImage:
    """Reads and validates an image file, re-encoding it if TensorFlow could not decode it.

    The size is read from the header first (:func:`malign.data.image_header.image_size`).
    Kept as they are: JPEG (RGB or grey) and PNG (any mode) files within both limits. The
    others are decoded (a JPEG over ``max_image_pixels`` at a reduced DCT scale), converted
    to 8-bit RGB as TensorFlow converts (:func:`rgb8`), turned upright (EXIF orientation),
    downsized if a limit asks for it, and stored as JPEG (quality 95).

    Args:
        path: the image file.
        max_image_side: if set, images whose shorter side exceeds it are downscaled to it
            and re-encoded.
        max_image_pixels: images with more pixels (width x height) are not stored as they
            are: JPEGs are downsized (to ``max_image_side``, else to fit), other formats
            rejected ("image too large"). None: no limit (PIL's own guard still applies).

    Returns:
        A :class:`LoadedImage` ``(data, format, reencoded, over_limit)``, format ``"jpeg"``
        or ``"png"``.

    Raises:
        BadImage: ``missing image``, ``corrupt image`` or ``image too large``.

    Example:
        >>> load_image("nope.jpg")  # doctest: +SKIP
        Traceback (most recent call last):
        BadImage: missing image: nope.jpg
    """
    from PIL import Image, JpegImagePlugin, UnidentifiedImageError

    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise BadImage("missing image", path) from None
    except (IsADirectoryError, PermissionError) as error:
        raise BadImage("missing image", f"{path} ({error})") from None
    kind = image_format(data)
    header = image_size(data)
    limit = max_image_pixels
    over = limit is not None and header is not None and header[0] * header[1] > limit
    if over and kind != "jpeg":
        raise _too_large(path, *header, limit)
    _allow_pil_pixels(limit)
    try:
        # An over-limit JPEG is opened without PIL's size guard: it is decoded scaled down.
        opened = JpegImagePlugin.JpegImageFile(io.BytesIO(data)) if over \
            else Image.open(io.BytesIO(data))
        with opened as image:
            pil_kind = (image.format or "").upper()
            width, height = image.size
            over = limit is not None and width * height > limit
            if over and pil_kind not in ("JPEG", "MPO"):
                raise _too_large(path, height, width, limit)  # a format read only by PIL
            jpeg = pil_kind in ("JPEG", "MPO")
            target = _target_size(height, width, max_image_side, limit, jpeg)
            native = (jpeg and image.mode in ("RGB", "L")) or pil_kind == "PNG"
            if native and target is None and image_bytes_ok_py(data):
                image.load()  # full decode: raises on truncated or corrupt files
                return LoadedImage(data, "jpeg" if kind == "jpeg" else "png", False, False)
            if target is not None and jpeg:
                image.draft(image.mode, (target[1], target[0]))  # libjpeg's DCT scaling
            image.load()
            rgb = rgb8(image)
            orientation = _orientation(image, data, kind)
            if orientation in _TRANSPOSE:
                rgb = rgb.transpose(getattr(Image.Transpose, _TRANSPOSE[orientation]))
            if target is not None:
                if orientation >= 5:
                    target = target[::-1]
                if rgb.size != (target[1], target[0]):
                    rgb = rgb.resize((target[1], target[0]), Image.Resampling.BICUBIC)
            out = io.BytesIO()
            rgb.save(out, format="JPEG", quality=95)
            return LoadedImage(out.getvalue(), "jpeg", True, over)
    except Image.DecompressionBombError as error:
        raise BadImage("image too large", f"{path} ({error})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise BadImage("corrupt image", f"{path} ({type(e).__name__}: {e})") from None


def clean_caption(caption: str | bytes | None) -> tuple[str | None, str | None]:
    """Validates one caption.

    Args:
        caption: text, bytes (decoded as UTF-8) or None.

    Returns:
        ``(text, None)`` with surrounding whitespace stripped and line breaks/tabs turned
        into spaces, or ``(None, reason)`` with reason ``"empty caption"`` or
        ``"invalid utf-8"``.

    Example:
        >>> clean_caption(b"  Ein Hund.\\n")
        ('Ein Hund.', None)
        >>> clean_caption(b"caf\\xe9")
        (None, 'invalid utf-8')
    """
    if caption is None:
        return None, "empty caption"
    if isinstance(caption, (bytes, bytearray)):
        try:
            caption = bytes(caption).decode("utf-8")
        except UnicodeDecodeError:
            return None, "invalid utf-8"
    try:
        caption.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates, e.g. from surrogateescape decoding
        return None, "invalid utf-8"
    text = " ".join(caption.replace("\t", " ").splitlines()).strip()
    if not text:
        return None, "empty caption"
    return text, None


class LongCaptionCounter:
    """Decides whether a caption is longer than the tokenizer keeps.

    With a SentencePiece model the count is exact; without one it is an estimate:
    ``max(words, characters / 4)`` pieces.

    Args:
        sequence_length: the tokenizer's sequence length, ``[CLS]`` and ``[SEP]`` included.
        sentencepiece_model: optional path of the vocabulary.

    Example:
        >>> LongCaptionCounter(8).is_long("one two three four five six seven")
        True
    """

    def __init__(self, sequence_length: int = 64, sentencepiece_model: str | None = None):
        self.limit = int(sequence_length) - 2
        self._sp = None
        if sentencepiece_model:
            import sentencepiece as spm

            self._sp = spm.SentencePieceProcessor(model_file=str(sentencepiece_model))

    def is_long(self, text: str) -> bool:
        """Whether ``text`` will be truncated."""
        if self._sp is not None:
            return len(self._sp.encode(text)) > self.limit
        return max(len(text.split()), len(text) / 4) > self.limit


class RecordWriter:
    """Writes :class:`ImageTextExample` records round-robin over ``num_shards`` files.

    Shards are written under hidden temporary names beside their final ones
    (``.tmp-<pid>-<name>``) and renamed into place by ``close()`` once every one of them
    is complete, so a crash or a full disk never leaves a truncated shard under a shard
    name, and shards of an earlier build stay as they were until the new set is whole.
    Leaving the ``with`` block by an exception removes the temporary files.

    Args:
        out_prefix: shards are ``{out_prefix}-{i:05d}-of-{n:05d}.tfrecord``.
        num_shards: the number of files; a multiple of the number of hosts reading them
            lets every input pipeline read whole files.

    Raises:
        malign.atomic_files.WriteFailedError: (from ``write``/``close``) the disk is full or
            read-only; names the shard. The temporary files are removed.

    Example:
        >>> with RecordWriter("/tmp/malign-doc/x", 2) as w:  # doctest: +SKIP
        ...     w.write(ImageTextExample("a", b"...", "png", ["hi"], ["en"]))
    """

    def __init__(self, out_prefix: str | os.PathLike, num_shards: int = 1) -> None:
        if num_shards < 1:
            raise ValueError(f"num_shards must be at least 1, got {num_shards}")
        self.prefix = os.fspath(out_prefix)
        self.num_shards = num_shards
        self.paths = [shard_name(self.prefix, i, num_shards) for i in range(num_shards)]
        self._temp_paths = [atomic_files.temp_name(p) for p in self.paths]
        self._writers: list[tf.io.TFRecordWriter] = []
        with atomic_files.naming_write_failures(self.paths[0]):
            parent = os.path.dirname(self.prefix)
            if parent:
                tf.io.gfile.makedirs(parent)
            if "://" not in self.prefix:
                for name in atomic_files.remove_dead_temps(parent or ".",
                                                           os.path.basename(self.prefix) + "-*"):
                    print(f"removed {name}, left by an interrupted build", flush=True)
            try:
                for temp in self._temp_paths:
                    self._writers.append(tf.io.TFRecordWriter(temp))
            except BaseException:
                self.abort()
                raise
        self.count = 0

    def write(self, example: ImageTextExample) -> None:
        """Appends one record to the next shard."""
        index = self.count % self.num_shards
        try:
            with atomic_files.naming_write_failures(self.paths[index]):
                self._writers[index].write(example.serialize())
        except BaseException:
            self.abort()
            raise
        self.count += 1

    def close(self) -> None:
        """Flushes and closes every shard, then renames them all into place."""
        if not self._writers:
            return
        try:
            for path, writer in zip(self.paths, self._writers):
                with atomic_files.naming_write_failures(path):
                    writer.close()
            self._writers = []
            for temp, path in zip(self._temp_paths, self.paths):
                with atomic_files.naming_write_failures(path):
                    _rename(temp, path)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Closes the shards without keeping them: the temporary files are removed."""
        for writer in self._writers:
            try:
                writer.close()
            except Exception:  # noqa: BLE001 - a full disk fails the close too; removing next
                pass
        self._writers = []
        for temp in self._temp_paths:
            if tf.io.gfile.exists(temp):
                tf.io.gfile.remove(temp)

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _rename(source: str, target: str) -> None:
    """Renames ``source`` over ``target``: ``os.replace`` locally (synced), else gfile's."""
    if "://" in source:
        tf.io.gfile.rename(source, target, overwrite=True)
        return
    fd = os.open(source, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(source, target)


@dataclasses.dataclass
class _ImageGroup:
    image: str
    image_id: str
    captions: list[tuple[str | bytes | None, str]]


def _group_rows(rows: Iterable[CaptionRow], stats: WriteStats) -> list[_ImageGroup]:
    groups: dict[str, _ImageGroup] = {}
    for row in rows:
        if row.image is None or row.lang is None:
            stats.skip("malformed row", example=str(row)[:80])
            continue
        if not isinstance(row.image, str) or not _encodable(row.image):
            stats.skip("invalid utf-8", example=repr(row.image)[:80])
            continue
        group = groups.get(row.image)
        if group is None:
            image_id = row.image_id or os.path.splitext(row.image)[0]
            group = groups[row.image] = _ImageGroup(row.image, image_id, [])
        group.captions.append((row.caption, row.lang))
    return list(groups.values())


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def write_rows(
    rows: Iterable[CaptionRow],
    out_prefix: str | os.PathLike,
    images_dir: str | os.PathLike | None = None,
    shards: int = 1,
    max_image_side: int | None = None,
    sequence_length: int = 64,
    sentencepiece_model: str | None = None,
    workers: int | None = None,
    verbose: bool = True,
    stats: WriteStats | None = None,
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
) -> WriteStats:
    """Groups caption rows by image and writes one record per image.

    Args:
        rows: caption rows; rows with the same ``image`` form one record, in first-seen
            order.
        out_prefix: where the shards go (``{out_prefix}-00000-of-00004.tfrecord``...).
        images_dir: the directory relative image paths are resolved against.
        shards: the number of shard files.
        max_image_side: downscale images whose shorter side is larger (None keeps them).
        sequence_length: for counting captions the tokenizer will truncate.
        sentencepiece_model: a vocabulary for an exact long-caption count.
        workers: threads that read and check images (default: CPU count, at most 8).
        verbose: print progress and the summary.
        stats: counts carried over from reading the rows (e.g. rows that failed to parse).
        max_image_pixels: the pixel limit (width x height, from the header): larger JPEGs
            are stored downsized, other larger images skipped as "image too large" (see
            :func:`load_image`); None for no limit.

    Returns:
        The :class:`WriteStats`; they are also written to ``{out_prefix}.summary.json``.

    Example:
        >>> rows = [CaptionRow("a.png", "a red circle", "en")]
        >>> write_rows(rows, "out/x", images_dir="imgs").records  # doctest: +SKIP
        1
    """
    stats = stats or WriteStats()
    stats.max_image_pixels = max_image_pixels
    if max_image_pixels is not None and max_image_pixels < 1:
        raise ValueError(f"max_image_pixels must be positive (or None), got {max_image_pixels}")
    long_counter = LongCaptionCounter(sequence_length, sentencepiece_model)
    groups = _group_rows(rows, stats)
    workers = workers or min(8, os.cpu_count() or 1)
    root = os.fspath(images_dir) if images_dir is not None else ""

    def load(group: _ImageGroup) -> LoadedImage | BadImage:
        try:
            return load_image(os.path.join(root, group.image), max_image_side, max_image_pixels)
        except BadImage as error:
            return error

    writer = RecordWriter(out_prefix, shards)
    progress = Progress("writing records", total=len(groups), unit="images", enabled=verbose)
    with writer, progress, concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for chunk in _chunks(groups, 64 * workers):
            for group, loaded in zip(chunk, pool.map(load, chunk)):
                progress.update()
                if isinstance(loaded, BadImage):
                    stats.skip(loaded.reason, len(group.captions), example=group.image)
                    stats.images_skipped += 1
                    continue
                texts, langs = [], []
                for caption, lang in group.captions:
                    text, reason = clean_caption(caption)
                    if reason is not None:
                        stats.skip(reason, example=f"{group.image} [{lang}]")
                        continue
                    texts.append(text)
                    langs.append(lang)
                    stats.long_captions += long_counter.is_long(text)
                if not texts:
                    stats.images_skipped += 1
                    continue
                stats.reencoded_images += loaded.reencoded
                stats.downsized_images += loaded.over_limit
                writer.write(ImageTextExample(group.image_id, loaded.data, loaded.format, texts,
                                              langs))
                stats.add_record(langs)
    return _finish(stats, out_prefix, shards, verbose)


def write_examples(
    examples: Iterable[ImageTextExample],
    out_prefix: str | os.PathLike,
    shards: int = 1,
    total: int | None = None,
    verbose: bool = True,
) -> WriteStats:
    """Writes ready-made records (already validated, e.g. generated ones).

    Args:
        examples: the records.
        out_prefix: where the shards go.
        shards: the number of shard files.
        total: the number of examples, for the progress line.
        verbose: print progress and the summary.

    Returns:
        The :class:`WriteStats` (also written to ``{out_prefix}.summary.json``).

    Example:
        >>> ex = ImageTextExample("a", b"...", "png", ["hi"], ["en"])
        >>> write_examples([ex], "/tmp/malign-doc/y", verbose=False).records  # doctest: +SKIP
        1
    """
    stats = WriteStats()
    with RecordWriter(out_prefix, shards) as writer, Progress(
        "writing records", total=total, unit="images", enabled=verbose
    ) as progress:
        for example in examples:
            writer.write(example)
            stats.add_record(list(example.langs))
            progress.update()
    return _finish(stats, out_prefix, shards, verbose)


def _finish(stats: WriteStats, out_prefix: str | os.PathLike, shards: int, verbose: bool) -> WriteStats:
    """Records where the shards went, writes ``{out_prefix}.summary.json``, prints the summary."""
    stats.shards = shards
    stats.pattern = shard_pattern(os.fspath(out_prefix))
    summary = os.fspath(out_prefix) + ".summary.json"
    text = json.dumps(stats.to_json(), indent=2, ensure_ascii=False) + "\n"
    if "://" in summary:
        temp = atomic_files.temp_name(summary)
        with tf.io.gfile.GFile(temp, "w") as handle:
            handle.write(text)
        tf.io.gfile.rename(temp, summary, overwrite=True)
    else:
        atomic_files.write_text(summary, text)
    if verbose:
        print(stats.summary(), flush=True)
    return stats


_IMAGE_KEYS = ("image", "image_path", "path", "file", "filename")
_CAPTION_KEYS = ("caption", "text", "sentence")
_LANG_KEYS = ("lang", "language")
_ID_KEYS = ("image_id", "id")


def _pick(record: dict[str, Any], keys: Sequence[str]) -> Any:
    for key in keys:
        if key in record and record[key] not in (None, ""):
            return record[key]
    return None


def read_rows(
    path: str | os.PathLike, default_lang: str | None = None, stats: WriteStats | None = None
) -> Iterator[CaptionRow]:
    """Reads caption rows from a JSONL or CSV file (by extension: ``.jsonl``/``.json``,
    ``.csv``, ``.tsv``).

    Each JSON line (or CSV row, with a header) has ``image`` (also ``image_path``/``path``/
    ``file``), ``caption`` (also ``text``), ``lang`` (or ``language``; else
    ``default_lang``) and optionally ``image_id``. A JSON ``caption`` may be a list of
    captions. Lines that are not valid UTF-8 or not parseable are counted in ``stats``.

    Args:
        path: the rows file.
        default_lang: language of rows without one.
        stats: where to count unreadable lines.

    Example:
        >>> rows = list(read_rows("captions.jsonl", default_lang="en"))  # doctest: +SKIP
    """
    stats = stats if stats is not None else WriteStats()
    path = os.fspath(path)
    lower = path.lower()
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as handle:
        if lower.endswith((".csv", ".tsv")):
            delimiter = "\t" if lower.endswith(".tsv") else ","
            records: Iterable[dict[str, Any] | None] = csv.DictReader(handle, delimiter=delimiter)
        else:
            records = (_json_line(line, stats) for line in handle if line.strip())
        for number, record in enumerate(records, start=1):
            if record is None:
                continue
            image = _pick(record, _IMAGE_KEYS)
            caption = _pick(record, _CAPTION_KEYS)
            lang = _pick(record, _LANG_KEYS) or default_lang
            if image is None or lang is None:
                what = "image" if image is None else "lang (or pass a default language)"
                stats.skip("malformed row", example=f"{os.path.basename(path)}:{number} no {what}")
                continue
            image_id = _pick(record, _ID_KEYS)
            captions = caption if isinstance(caption, list) else [caption]
            for text in captions:
                yield CaptionRow(
                    str(image), None if text is None else str(text), str(lang),
                    None if image_id is None else str(image_id),
                )


def _json_line(line: str, stats: WriteStats) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        stats.skip("malformed row", example=line[:60].strip())
        return None
    if not isinstance(record, dict):
        stats.skip("malformed row", example=line[:60].strip())
        return None
    return record


__all__ = [
    "BadImage",
    "CaptionRow",
    "LoadedImage",
    "LongCaptionCounter",
    "RecordWriter",
    "SKIP_REASONS",
    "WriteStats",
    "clean_caption",
    "load_image",
    "read_rows",
    "rgb8",
    "write_examples",
    "write_rows",
]

