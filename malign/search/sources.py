"""What ``malign embed`` embeds: images of a folder or of record shards, captions of a text file.

- :func:`list_image_folder`: every image file under a folder (recursively, by suffix), with
  ids relative to the folder; other files are counted and named, not silently passed over.
- :func:`read_record_images`: the ``image/id`` and encoded image of every record, in file
  order, in chunks; damaged shards are reported with how many records were readable.
- :func:`read_captions`: one caption per line (UTF-8); empty lines are counted and named.
- :func:`screen_image`: the checks an image file must pass before it is decoded (known
  format, complete file, pixel limit), the same for a ``.keras`` model and a SavedModel.

Example:
    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (root / "captions.txt").write_text("a dog\\n\\nein Hund\\n", encoding="utf-8")
    >>> read_captions(root / "captions.txt")
    ([(1, 'a dog'), (3, 'ein Hund')], [2])
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "IMAGE_SUFFIXES",
    "FolderListing",
    "list_image_folder",
    "read_captions",
    "read_image_file",
    "read_record_images",
    "record_images_by_id",
    "screen_image",
]

#: File suffixes taken as images (case-insensitive): the formats the decoder reads.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
_SHOWN = 5  # names shown in one message


@dataclasses.dataclass
class FolderListing:
    """The image files under a folder.

    Args:
        root: the folder (absolute).
        images: ids of the image files: paths relative to ``root``, ``/``-separated, sorted.
        others: relative paths of the files left out because their suffix is not an image's.
    """

    root: Path
    images: list[str]
    others: list[str]


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def list_image_folder(root: str | os.PathLike) -> FolderListing:
    """Lists the image files under ``root`` (sub-folders included), by suffix.

    Args:
        root: a folder.

    Returns:
        A :class:`FolderListing`.

    Raises:
        FileNotFoundError: no such folder.
        ValueError: ``root`` is a file, or holds no image file (naming the other files).

    Example:
        >>> list_image_folder("/nonexistent")
        Traceback (most recent call last):
        ...
        FileNotFoundError: image folder not found: /nonexistent
    """
    path = Path(root).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"image folder not found: {root}")
    if not path.is_dir():
        raise ValueError(f"--images {root} is a file; give the folder that holds the images")
    path = path.resolve()
    images, others = [], []
    for directory, subdirs, files in os.walk(path):
        subdirs.sort()
        for name in files:
            relative = (Path(directory) / name).relative_to(path).as_posix()
            (images if Path(name).suffix.lower() in IMAGE_SUFFIXES else others).append(relative)
    images.sort()
    others.sort()
    if not images:
        held = f"; it holds {len(others)} other files: {_names(others)}" if others else \
            "; it is empty"
        raise ValueError(f"no images in {root} (looked for {', '.join(IMAGE_SUFFIXES)} files, "
                         f"sub-folders included){held}")
    return FolderListing(path, images, others)


def read_image_file(root: Path, image_id: str) -> bytes:
    """The bytes of the image ``image_id`` (a path relative to ``root``)."""
    return (root / image_id).read_bytes()


def read_record_images(pattern: str, chunk: int = 256,
                       notes: list[str] | None = None) -> Iterator[list[tuple[str, bytes]]]:
    """Yields ``(image id, encoded image)`` of every record, in file order, ``chunk`` at a time.

    A record without an ``image/id`` gets the id ``record-<n>`` (its 0-based position).

    Args:
        pattern: record shards: a prefix written by ``malign data`` or a glob.
        chunk: records per list.
        notes: receives one line per damaged place: a record whose checksum fails (it is
            skipped, the records after it are read), a shard whose framing is lost (the
            records before the damage are read).

    Raises:
        FileNotFoundError: no shard matches.

    Example:
        >>> next(read_record_images("records/m30k-val"))[0][0]  # doctest: +SKIP
        '1000092795'
    """
    import tensorflow as tf

    from malign.data import list_files, record_reader, schema

    files = list_files(pattern)
    stream = record_reader.record_stream(files)
    features = {k: schema.FEATURES[k] for k in (schema.IMAGE_ID, schema.IMAGE_ENCODED)}

    def parse(element: dict[str, tf.Tensor]) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
        return tf.io.parse_example(element["record"], features), element

    def note(line: str) -> None:
        print(f"malign embed: {line}", file=sys.stderr)
        if notes is not None:
            notes.append(line)

    index = 0
    for f, file in enumerate(files):
        if stream.problems[f]:
            note(f"shard {file} is damaged ({stream.problems[f]}): the records before the "
                 "damage were read")
        ds = stream.file_dataset(f).batch(chunk).map(parse)
        for batch, element in ds.as_numpy_iterator():
            out = []
            for image_id, data, damage, record, offset, lost in zip(
                    batch[schema.IMAGE_ID], batch[schema.IMAGE_ENCODED], element["damage"],
                    element["index"], element["offset"], element["lost"]):
                if damage == record_reader.CORRUPT:
                    note(f"record {record} of shard {file} (byte {offset}) is corrupt (its "
                         "checksum fails): skipped")
                    continue
                if damage == record_reader.LOST:
                    if "://" in file:  # local shards were named above
                        note(f"shard {file}: {lost} bytes from byte {offset} unreadable")
                    continue
                text = image_id.decode("utf-8", "replace")
                out.append((text or f"record-{index}", bytes(data)))
                index += 1
            yield out


def record_images_by_id(pattern: str, ids: set[str]) -> dict[str, bytes]:
    """The encoded images of the records with these ids (the first record of each id).

    Args:
        pattern: record shards, as for :func:`read_record_images`.
        ids: the ids wanted.

    Returns:
        ``{id: bytes}`` for the ids found.

    Example:
        >>> record_images_by_id("records/m30k-val", {"1000092795"})  # doctest: +SKIP
        {'1000092795': b'\\xff\\xd8...'}
    """
    found: dict[str, bytes] = {}
    for chunk in read_record_images(pattern):
        for image_id, data in chunk:
            if image_id in ids and image_id not in found:
                found[image_id] = data
        if len(found) == len(ids):
            break
    return found


def read_captions(path: str | os.PathLike) -> tuple[list[tuple[int, str]], list[int]]:
    """Reads one caption per line of a UTF-8 text file.

    Leading and trailing white space is removed (a byte-order mark too); lines left empty
    are skipped and returned by number.

    Args:
        path: the text file.

    Returns:
        ``([(line number, caption), ...], [numbers of the empty lines])``, lines 1-based.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a line that is not UTF-8 (naming it), or no caption at all.

    Example:
        >>> read_captions("/nonexistent.txt")
        Traceback (most recent call last):
        ...
        FileNotFoundError: captions file not found: /nonexistent.txt
    """
    file = Path(path).expanduser()
    if not file.is_file():
        if file.is_dir():
            raise ValueError(f"--captions {path} is a folder; give a text file with one caption "
                             "per line")
        raise FileNotFoundError(f"captions file not found: {path}")
    captions, empty = [], []
    raw = file.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    lines = raw.split(b"\n")
    if lines[-1] == b"":
        lines.pop()  # the file ends with a newline
    for number, line in enumerate(lines, start=1):
        try:
            text = line.decode("utf-8").strip()
        except UnicodeDecodeError as error:
            raise ValueError(f"{path} line {number} is not UTF-8 ({error.reason} at byte "
                             f"{error.start}): save the captions as UTF-8") from None
        if text:
            captions.append((number, text))
        else:
            empty.append(number)
    if not captions:
        raise ValueError(f"no captions in {path}: it has no non-empty line")
    return captions, empty


def screen_image(data: bytes, max_image_pixels: int | None) -> str | None:
    """Why an encoded image cannot be embedded, found without decoding it; None if it may.

    The same checks as the exported SavedModel's ``embed_image`` makes before decoding (a
    known signature, a JPEG with its end-of-image marker, a PNG with its ``IEND`` chunk),
    and the pixel limit read from the header, so a ``.keras`` model and its export skip the
    same files. Images that pass can still fail in the decoder (corrupt data).

    Args:
        data: the file's bytes.
        max_image_pixels: the largest width x height accepted; None for no limit.

    Example:
        >>> screen_image(b"hello", None)
        'not a JPEG, PNG, GIF, BMP or WebP file'
    """
    from malign.data.image_header import image_format, image_size

    if not data:
        return "empty file"
    kind = image_format(data[:16])
    if kind is None:
        return "not a JPEG, PNG, GIF, BMP or WebP file"
    if kind == "jpeg" and b"\xff\xd9" not in data:
        return "truncated JPEG (no end-of-image marker)"
    if kind == "png" and b"IEND" not in data:
        return "truncated PNG (no IEND chunk)"
    size = image_size(data)
    if max_image_pixels is not None and size is not None and size[0] * size[1] > max_image_pixels:
        return (f"{size[1]}x{size[0]} = {size[0] * size[1]} pixels, over the limit of "
                f"{max_image_pixels} pixels (--max-image-pixels)")
    return None
