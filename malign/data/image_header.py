"""What an image file's header says, read without decoding it: format, size, EXIF orientation.

Every reader here exists twice, with the same rules: in Python (the record writer uses it)
and as pure TensorFlow ops (``tf.data`` and the SavedModel's in-graph decoding use it:
``tf.strings.substr``/``tf.io.decode_raw``, bounded ``tf.while_loop`` walks, no
``py_function``, so they survive ``tf.saved_model``). A test compares the two on valid and
damaged files, and the orientation on valid files with PIL's ``ImageOps.exif_transpose``.

**Size** (``height, width`` as the decoder will allocate them): JPEG from the first SOFn
marker (in TensorFlow: ``tf.image.extract_jpeg_shape``, libjpeg's own header reader), PNG
from IHDR, GIF from the logical screen, BMP from the info header (width and ``|height|``
at bytes 18 and 22, as TensorFlow's BMP decoder reads them), WebP from the VP8X canvas or
the VP8/VP8L frame header. A GIF's frames are not walked: its logical screen is the size.

**EXIF orientation** (tag 0x0112 in IFD0 of the EXIF TIFF structure, 1..8; anything
missing or malformed is 1, never an error), found where PIL finds it:

- JPEG: the first APP1 segment that starts with ``Exif\\0\\0``. The segment walk follows
  PIL's (junk bytes and fill bytes skipped, markers without a length stepped over) up to
  the start of scan, at most :data:`MAX_JPEG_STEPS` steps; in the graph it only runs up to
  the last place an Exif segment could start (a file without ``Exif\\0\\0`` is not walked).
- PNG: the ``eXIf`` chunk, before or after the image data (PIL reads both): the first
  ``eXIf`` chunk tag followed by a TIFF header (optionally behind ``Exif\\0\\0``).
- WebP: the first ``EXIF`` chunk of an extended (VP8X) file, at most
  :data:`MAX_WEBP_CHUNKS` chunks in.

Inside the TIFF structure: byte order ``II*\\0`` or ``MM\\0*``; IFD0's entries that lie
wholly inside the EXIF block are scanned; the first entry with tag 0x0112, a TIFF type
PIL knows and a value inside the block decides; its first value counts when the type is an
integer one (SHORT, the usual, or LONG, SBYTE, SSHORT, SLONG, IFD, LONG8) and it is 1..8.
This is PIL's reading, also of odd entries; PIL alone also accepts a RATIONAL or FLOAT
equal to 2..8. Not read (PIL reads them; they are rare): orientation in XMP
(``tiff:Orientation``) when EXIF has none, ImageMagick's "Raw profile type exif" PNG text
chunk, EXIF continued in a second APP1 segment, and EXIF of other formats (TIFF, HEIF).

Example:
    >>> import tensorflow as tf
    >>> png = tf.io.encode_png(tf.zeros([3, 5, 3], tf.uint8)).numpy()
    >>> image_size(png), exif_orientation(png)
    ((3, 5), 1)
    >>> image_size_tf(tf.constant(png)).numpy().tolist()
    [3, 5]
"""

from __future__ import annotations

import struct

import tensorflow as tf

from malign.data.limits import DEFAULT_MAX_IMAGE_PIXELS

#: Steps of the JPEG marker walk (a marker segment, or one junk/fill byte, per step).
MAX_JPEG_STEPS = 1024
#: Chunks of a WebP file looked at for the EXIF chunk.
MAX_WEBP_CHUNKS = 1024
#: The EXIF orientation tag.
ORIENTATION_TAG = 0x0112

_JPEG_SOI = b"\xff\xd8\xff"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_EXIF_PREFIX = b"Exif\x00\x00"
_TIFF_LE, _TIFF_BE = b"II*\x00", b"MM\x00*"
# The PNG eXIf chunk tag followed by a TIFF header, with or without an Exif prefix.
_PNG_EXIF_PATTERNS = tuple(b"eXIf" + p + t for p in (b"", _EXIF_PREFIX)
                           for t in (_TIFF_LE, _TIFF_BE))
# Bytes per value of the TIFF field types PIL's IFD reader knows (others are skipped).
_TIFF_UNIT = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4,
              16: 8}
# The integer types whose first value PIL takes as the orientation: SHORT, LONG, SBYTE,
# SSHORT, SLONG, IFD, LONG8 (BYTE and UNDEFINED come back as bytes, which PIL ignores).
_INTEGER_TYPES = (3, 4, 6, 8, 9, 13, 16)
# JPEG markers that PIL (and libjpeg) step over without a length field: JPG, RST0-7,
# SOI, EOI, JPG0-13.
_NO_LENGTH = frozenset([0xC8, 0x01, *range(0xD0, 0xDA), *range(0xF0, 0xFE)])
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def image_format(data: bytes) -> str | None:
    """The format by its signature: "jpeg", "png", "gif", "bmp", "webp" or None.

    Args:
        data: the start of the file (12 bytes suffice).

    Example:
        >>> image_format(b"GIF89a..."), image_format(b"<html>")
        ('gif', None)
    """
    if data.startswith(_JPEG_SOI):
        return "jpeg"
    if data.startswith(_PNG_SIGNATURE):
        return "png"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data.startswith(b"BM"):
        return "bmp"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


# -- Python readers ------------------------------------------------------------------------
def _u(data: bytes, pos: int, size: int, little: bool) -> int:
    """An unsigned integer at ``pos``, 0 where the file ends."""
    raw = data[pos:pos + size].ljust(size, b"\x00") if pos >= 0 else b"\x00" * size
    return int.from_bytes(raw, "little" if little else "big")


def _jpeg_walk(data: bytes) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
    """``(exif_span, sof_size)``: the TIFF block of the first Exif APP1 segment and the
    ``(height, width)`` of the first SOFn marker, each None if not found."""
    n, pos, span, size = len(data), 2, None, None
    for _ in range(MAX_JPEG_STEPS):
        if pos >= n:
            break
        if data[pos] != 0xFF:
            pos += 1  # junk between segments
            continue
        marker = _u(data, pos + 1, 1, False)
        if marker == 0xFF:
            pos += 1  # fill byte
        elif marker == 0x00:
            pos += 2
        elif marker in _NO_LENGTH:
            pos += 2
        elif marker == 0xDA or marker < 0xC0:
            break  # start of scan, or not a marker (PIL refuses the file)
        else:
            length = _u(data, pos + 2, 2, False)
            if marker == 0xE1 and span is None and data[pos + 4:pos + 10] == _EXIF_PREFIX:
                start = pos + 10 + (6 if data[pos + 10:pos + 16] == _EXIF_PREFIX else 0)
                span = (start, min(pos + 2 + length, n))
            if marker in _SOF and size is None:
                size = (_u(data, pos + 5, 2, False), _u(data, pos + 7, 2, False))
            pos += 2 + max(length, 2)
    return span, size


def _png_exif_span(data: bytes) -> tuple[int, int] | None:
    found = [p for p in (data.find(pattern) for pattern in _PNG_EXIF_PATTERNS) if p >= 0]
    if not found:
        return None
    pos = min(found)  # the position of b"eXIf"
    length = _u(data, pos - 4, 4, False)
    start = pos + 4 + (6 if data[pos + 4:pos + 10] == _EXIF_PREFIX else 0)
    return start, min(pos + 4 + length, len(data))


def _webp_exif_span(data: bytes) -> tuple[int, int] | None:
    if data[12:16] != b"VP8X":
        return None
    pos, n = 12, len(data)
    for _ in range(MAX_WEBP_CHUNKS):
        if pos + 8 > n:
            break
        size = _u(data, pos + 4, 4, True)
        if data[pos:pos + 4] == b"EXIF":
            start = pos + 8 + (6 if data[pos + 8:pos + 14] == _EXIF_PREFIX else 0)
            return start, min(pos + 8 + size, n)
        pos += 8 + size + (size & 1)
    return None


def _tiff_orientation(data: bytes, start: int, end: int) -> int:
    """The orientation in the TIFF structure ``data[start:end]`` (1 when absent/malformed)."""
    head = data[start:start + 4]
    if end - start < 8 or head not in (_TIFF_LE, _TIFF_BE):
        return 1
    little = head == _TIFF_LE
    ifd = start + _u(data, start + 4, 4, little)
    if ifd + 2 > end:
        return 1
    count = min(_u(data, ifd, 2, little), (end - ifd - 2) // 12)
    for i in range(count):
        entry = ifd + 2 + 12 * i
        tag, kind = _u(data, entry, 2, little), _u(data, entry + 2, 2, little)
        size = _u(data, entry + 4, 4, little) * _TIFF_UNIT.get(kind, 0)
        if tag != ORIENTATION_TAG or size == 0:
            continue  # another tag, an unknown type or no value: PIL skips the entry
        where = entry + 8 if size <= 4 else start + _u(data, entry + 8, 4, little)
        if where + size > end:
            continue  # the value lies outside the block: PIL skips the entry too
        if kind not in _INTEGER_TYPES:
            return 1
        value = _u(data, where, _TIFF_UNIT[kind], little)
        return value if 1 <= value <= 8 else 1
    return 1


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation of a JPEG, PNG or WebP file (1..8; 1 when there is none).

    1 is as stored; 2 mirrored left-right; 3 rotated 180 degrees; 4 mirrored top-bottom;
    5 transposed; 6 to be rotated 90 degrees clockwise (a phone held upright); 7
    transversed; 8 to be rotated 90 degrees counter-clockwise. See the module docstring
    for where it is looked for.

    Args:
        data: the whole file.

    Example:
        >>> exif_orientation(b"not an image")
        1
    """
    kind = image_format(data)
    if kind == "jpeg":
        span = _jpeg_walk(data)[0]
    elif kind == "png":
        span = _png_exif_span(data)
    elif kind == "webp":
        span = _webp_exif_span(data)
    else:
        span = None
    return 1 if span is None else _tiff_orientation(data, *span)


def image_size(data: bytes) -> tuple[int, int] | None:
    """``(height, width)`` from the header, as stored (before any EXIF orientation).

    Args:
        data: the file (for JPEG the part up to the frame header suffices; for the other
            formats the first 30 bytes).

    Returns:
        The size, or None for an unknown format or a header too short to hold it.

    Example:
        >>> image_size(b"GIF89a" + bytes([0x20, 0x4E, 0x10, 0x27]) + bytes(3))
        (10000, 20000)
    """
    kind = image_format(data)
    if kind == "jpeg":
        return _jpeg_walk(data)[1]
    if kind == "png" and len(data) >= 24 and data[12:16] == b"IHDR":
        width, height = struct.unpack(">II", data[16:24])
        return height, width
    if kind == "gif" and len(data) >= 10:
        width, height = struct.unpack("<HH", data[6:10])
        return height, width
    if kind == "bmp" and len(data) >= 26:
        width, height = struct.unpack("<ii", data[18:26])
        return abs(height), abs(width)
    if kind == "webp" and len(data) >= 30:
        return _webp_size(data)
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X":
        return _u(data, 27, 3, True) + 1, _u(data, 24, 3, True) + 1
    if chunk == b"VP8L" and data[20] == 0x2F:
        bits = _u(data, 21, 4, True)
        return ((bits >> 14) & 0x3FFF) + 1, (bits & 0x3FFF) + 1
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        return _u(data, 28, 2, True) & 0x3FFF, _u(data, 26, 2, True) & 0x3FFF
    return None


def displayed_size(height: int, width: int, orientation: int) -> tuple[int, int]:
    """The size after applying an EXIF orientation: 5..8 swap the sides.

    Example:
        >>> displayed_size(300, 400, 6)
        (400, 300)
    """
    return (width, height) if orientation >= 5 else (height, width)


# -- TensorFlow readers --------------------------------------------------------------------
# Straight-line code with few ops: inside tf.data and a SavedModel every op, and every
# functional cond/case (whose cost grows with its branches), costs per image. The two walks
# are while loops that do not run at all for files without an EXIF candidate.
# The readers see the file through _Bytes: the data with _PAD zero bytes appended, so that
# every fixed-size read is one substr, with zeros past the end (and before the start).
_PAD = 32


class _Bytes:
    def __init__(self, data: tf.Tensor) -> None:
        self.raw = data
        self.data = tf.strings.join([data, b"\x00" * _PAD])
        self.n = tf.cast(tf.strings.length(data), tf.int64)

    def at(self, pos: tf.Tensor, size: int) -> tf.Tensor:
        """int32 ``[size]`` (``size <= _PAD``): the bytes at ``pos``, zeros outside the file."""
        pos = tf.cast(pos, tf.int64)
        pos = tf.where((pos < 0) | (pos > self.n), self.n, pos)
        raw = tf.io.decode_raw(tf.strings.substr(self.data, tf.cast(pos, tf.int32), size),
                               tf.uint8)
        return tf.reshape(tf.cast(raw, tf.int32), [size])

    def starts_with(self, pattern: bytes, offset: int = 0) -> tf.Tensor:
        return tf.equal(tf.strings.substr(self.data, offset, len(pattern)), pattern)

    def occurrences(self, pattern: bytes, search: tf.Tensor) -> tf.Tensor:
        """int64 ``[k]``: where ``pattern`` occurs, if ``search`` (one pass, no loop)."""
        pieces = tf.strings.split(tf.where(search, self.raw, b""), sep=pattern)
        ends = tf.cumsum(tf.cast(tf.strings.length(pieces), tf.int64) + len(pattern))
        return ends[:-1] - len(pattern)


def _int(raw: tf.Tensor, little: tf.Tensor | bool) -> tf.Tensor:
    """int64 of the bytes along the last axis of ``raw`` (int32), little or big endian."""
    size = raw.shape[-1]
    le = [256**i for i in range(size)]
    weights = tf.where(little, tf.constant(le, tf.int64), tf.constant(le[::-1], tf.int64))
    return tf.reduce_sum(tf.cast(raw, tf.int64) * weights, axis=-1)


def _matches(raw: tf.Tensor, pattern: bytes) -> tf.Tensor:
    return tf.reduce_all(tf.equal(raw[: len(pattern)], tf.constant(list(pattern), tf.int32)))


def _first(found: tf.Tensor, values: tf.Tensor, default: int | bool) -> tf.Tensor:
    """The value at the first True of ``found`` (``default`` when there is none)."""
    n = tf.size(found, tf.int64)
    index = tf.reduce_min(tf.concat([tf.where(found, tf.range(n), n), [n]], axis=0))
    return tf.concat([values, tf.constant([default], values.dtype)], axis=0)[index]


def _jpeg_exif_span_tf(file: _Bytes, is_jpeg: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    no_length = tf.constant(sorted(_NO_LENGTH), tf.int32)
    # An Exif segment starts 4 bytes before an b"Exif\0\0" that follows FF E1: the walk
    # ends after the last such place (a file without one is not walked at all).
    segments = file.occurrences(_EXIF_PREFIX, is_jpeg) - 4
    markers = tf.strings.substr(file.data, tf.cast(tf.maximum(segments, 0), tf.int32),
                                tf.fill(tf.shape(segments), 2))
    last = tf.reduce_max(tf.concat(
        [tf.where(tf.equal(markers, b"\xff\xe1") & (segments >= 2), segments, -1), [-1]], 0))

    def cond(pos, start, end):
        return (start < 0) & (pos <= last)

    def body(pos, start, end):
        b = file.at(pos, 16)
        marker = b[1]
        length = tf.cast(b[2] * 256 + b[3], tf.int64)
        junk = tf.not_equal(b[0], 0xFF)
        plain = tf.equal(marker, 0xFF)
        two = tf.equal(marker, 0x00) | tf.reduce_any(tf.equal(marker, no_length))
        segment = ~junk & ~plain & ~two
        stop = segment & (tf.equal(marker, 0xDA) | (marker < 0xC0))
        exif = segment & tf.equal(marker, 0xE1) & _matches(b[4:], _EXIF_PREFIX)
        twice = tf.cast(_matches(b[10:], _EXIF_PREFIX), tf.int64) * 6
        start = tf.where(exif, pos + 10 + twice, start)
        end = tf.where(exif, tf.minimum(pos + 2 + length, file.n), end)
        step = tf.where(junk | plain, tf.constant(1, tf.int64),
                        tf.where(two, tf.constant(2, tf.int64), 2 + tf.maximum(length, 2)))
        # The first Exif segment decides; the start of scan ends the walk (pos past last).
        return tf.where(stop, last + 1, pos + step), start, end

    init = (tf.constant(2, tf.int64), tf.constant(-1, tf.int64), tf.constant(-1, tf.int64))
    _, start, end = tf.while_loop(cond, body, init, maximum_iterations=MAX_JPEG_STEPS)
    return start, end


def _png_exif_span_tf(file: _Bytes, is_png: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    # Every b"eXIf" in the file, then the first one followed by a TIFF header (optionally
    # behind an Exif prefix): the same answer as the earliest of _PNG_EXIF_PATTERNS.
    positions = file.occurrences(b"eXIf", is_png)
    after = tf.strings.substr(file.data, tf.cast(positions + 4, tf.int32),
                              tf.fill(tf.shape(positions), 10))
    prefixed = tf.equal(tf.strings.substr(after, 0, 6), _EXIF_PREFIX)
    tiff = tf.strings.substr(after, tf.where(prefixed, 6, 0), tf.fill(tf.shape(positions), 4))
    valid = tf.equal(tiff, _TIFF_LE) | tf.equal(tiff, _TIFF_BE)
    pos = _first(valid, positions, -1)
    length = _int(file.at(pos - 4, 4), False)
    start = pos + 4 + tf.cast(_first(valid, prefixed, False), tf.int64) * 6
    found = pos >= 0
    return tf.where(found, start, -1), tf.where(found, tf.minimum(pos + 4 + length, file.n), -1)


def _webp_exif_span_tf(file: _Bytes, is_webp: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    extended = is_webp & file.starts_with(b"VP8X", 12)

    def cond(pos, start, end):
        return (start < 0) & (pos + 8 <= file.n)

    def body(pos, start, end):
        b = file.at(pos, 14)
        size = _int(b[4:8], True)
        exif = _matches(b, b"EXIF")
        twice = tf.cast(_matches(b[8:], _EXIF_PREFIX), tf.int64) * 6
        start = tf.where(exif, pos + 8 + twice, start)
        end = tf.where(exif, tf.minimum(pos + 8 + size, file.n), end)
        return pos + 8 + size + size % 2, start, end

    init = (tf.where(extended, tf.constant(12, tf.int64), file.n),
            tf.constant(-1, tf.int64), tf.constant(-1, tf.int64))
    _, start, end = tf.while_loop(cond, body, init, maximum_iterations=MAX_WEBP_CHUNKS)
    return start, end


def _tiff_orientation_tf(file: _Bytes, start: tf.Tensor, end: tf.Tensor) -> tf.Tensor:
    head = file.at(start, 8)
    little = _matches(head, _TIFF_LE)
    ok = (start >= 0) & (end - start >= 8) & (little | _matches(head, _TIFF_BE))
    ifd = start + _int(head[4:8], little)
    ok &= ifd + 2 <= end
    count = tf.minimum(_int(file.at(ifd, 2), little), (end - ifd - 2) // 12)
    count = tf.where(ok, tf.maximum(count, 0), 0)
    # Every entry inside the block at once (at most 65535 entries of 12 bytes), read as
    # 16-bit (tag, type) and 32-bit (count, value or offset) words in the file's order.
    table = tf.strings.substr(file.data, tf.cast(tf.where(ok, ifd + 2, 0), tf.int32),
                              tf.cast(12 * count, tf.int32))
    words16 = tf.where(little, tf.io.decode_raw(table, tf.uint16, little_endian=True),
                       tf.io.decode_raw(table, tf.uint16, little_endian=False))
    words16 = tf.reshape(tf.cast(words16, tf.int64), [-1, 6])
    words32 = tf.where(little, tf.io.decode_raw(table, tf.int32, little_endian=True),
                       tf.io.decode_raw(table, tf.int32, little_endian=False))
    words32 = tf.reshape(tf.cast(words32, tf.int64) % 2**32, [-1, 3])
    tags, kinds = words16[:, 0], words16[:, 1]
    units_table = tf.constant([_TIFF_UNIT.get(k, 0) for k in range(18)], tf.int64)
    units = tf.gather(units_table, tf.minimum(kinds, 17)) * tf.cast(kinds <= 17, tf.int64)
    sizes = words32[:, 1] * units
    inline = ifd + 2 + 12 * tf.range(tf.size(tags, tf.int64)) + 8
    where = tf.where(sizes <= 4, inline, start + words32[:, 2])
    stored = tf.equal(tags, ORIENTATION_TAG) & (sizes > 0) & (where + sizes <= end)
    # The first stored orientation entry decides: its first value, ``unit`` bytes at
    # ``where`` in the file's byte order, when its type is an integer one.
    kind = _first(stored, kinds, 0)
    unit = tf.gather(units_table, tf.minimum(kind, 17))
    index = tf.range(8, dtype=tf.int64)
    shift = tf.where(little, index, unit - 1 - index) * 8
    weights = tf.where(index < unit, tf.bitwise.left_shift(tf.ones_like(index), shift), 0)
    value = tf.reduce_sum(tf.cast(file.at(_first(stored, where, 0), 8), tf.int64) * weights)
    integer = tf.reduce_any(tf.equal(kind, tf.constant(_INTEGER_TYPES, tf.int64)))
    return tf.cast(tf.where(integer & (value >= 1) & (value <= 8), value, 1), tf.int32)


def _format_flags(file: _Bytes) -> dict[str, tf.Tensor]:
    return {
        "jpeg": file.starts_with(_JPEG_SOI),
        "png": file.starts_with(_PNG_SIGNATURE),
        "gif": file.starts_with(b"GIF87a") | file.starts_with(b"GIF89a"),
        "bmp": file.starts_with(b"BM"),
        "webp": file.starts_with(b"RIFF") & file.starts_with(b"WEBP", 8),
    }


@tf.autograph.experimental.do_not_convert
def exif_orientation_tf(encoded: tf.Tensor) -> tf.Tensor:
    """The EXIF orientation of an encoded image, in the graph (int32 scalar, 1..8).

    The same rules as :func:`exif_orientation`; never fails (malformed data gives 1).

    Args:
        encoded: a scalar string tensor holding the file.

    Example:
        >>> int(exif_orientation_tf(tf.constant(b"\\xff\\xd8\\xff\\xd9")))
        1
    """
    file = _Bytes(tf.convert_to_tensor(encoded, tf.string))
    flags = _format_flags(file)
    spans = [_jpeg_exif_span_tf(file, flags["jpeg"]), _png_exif_span_tf(file, flags["png"]),
             _webp_exif_span_tf(file, flags["webp"])]
    start = tf.reduce_max(tf.stack([span[0] for span in spans]))  # at most one is not -1
    end = tf.reduce_max(tf.stack([span[1] for span in spans]))
    return _tiff_orientation_tf(file, start, end)


@tf.autograph.experimental.do_not_convert
def image_size_tf(encoded: tf.Tensor) -> tf.Tensor:
    """``[height, width]`` (int64) of an encoded image from its header, in the graph.

    The same rules as :func:`image_size`, except that a JPEG's size comes from
    ``tf.image.extract_jpeg_shape`` (libjpeg's header reader, exactly what the decoder
    will allocate), which fails with ``InvalidArgumentError`` on a JPEG whose header
    libjpeg cannot read (decoding it would fail the same way). An unknown format or a
    header too short gives ``[0, 0]``.

    Args:
        encoded: a scalar string tensor holding the file.

    Example:
        >>> gif = b"GIF89a" + bytes([0x20, 0x4E, 0x10, 0x27]) + bytes(3)
        >>> image_size_tf(tf.constant(gif)).numpy().tolist()
        [10000, 20000]
    """
    data = tf.convert_to_tensor(encoded, tf.string)
    file = _Bytes(data)
    flags = _format_flags(file)
    head = file.at(0, 30)
    le = lambda a, b: _int(head[a:b], True)  # noqa: E731
    be = lambda a, b: _int(head[a:b], False)  # noqa: E731
    long_enough = lambda k: file.n >= k  # noqa: E731
    zero = tf.zeros([2], tf.int64)
    sizes = [
        zero,
        tf.where(long_enough(24) & file.starts_with(b"IHDR", 12),
                 tf.stack([be(20, 24), be(16, 20)]), zero),  # PNG: IHDR
        tf.where(long_enough(10), tf.stack([le(8, 10), le(6, 8)]), zero),  # GIF screen
        tf.where(long_enough(26), tf.abs(tf.stack([                          # BMP (signed)
            le(22, 26) - tf.cast(le(22, 26) >= 2**31, tf.int64) * 2**32,
            le(18, 22) - tf.cast(le(18, 22) >= 2**31, tf.int64) * 2**32])), zero),
    ]
    vp8x = tf.stack([le(27, 30) + 1, le(24, 27) + 1])
    bits = le(21, 25)
    vp8l = tf.stack([bits // 2**14 % 2**14 + 1, bits % 2**14 + 1])
    vp8 = tf.stack([le(28, 30) % 2**14, le(26, 28) % 2**14])
    sizes.append(tf.where(
        ~long_enough(30), zero,
        tf.where(file.starts_with(b"VP8X", 12), vp8x,
                 tf.where(file.starts_with(b"VP8L", 12) & tf.equal(head[20], 0x2F), vp8l,
                          tf.where(file.starts_with(b"VP8 ", 12)
                                   & file.starts_with(b"\x9d\x01\x2a", 23), vp8, zero)))))
    kind = tf.where(flags["png"], 1, tf.where(flags["gif"], 2, tf.where(
        flags["bmp"], 3, tf.where(flags["webp"], 4, 0))))
    other = tf.gather(tf.stack(sizes), kind)
    # A JPEG's size is libjpeg's own reading of its header (it fails where decoding would).
    return tf.cond(flags["jpeg"],
                   lambda: tf.cast(tf.image.extract_jpeg_shape(data)[:2], tf.int64),
                   lambda: other)


@tf.autograph.experimental.do_not_convert
def image_pixels_tf(encoded: tf.Tensor) -> tf.Tensor:
    """``height * width`` (int64 scalar) from the header (see :func:`image_size_tf`).

    Example:
        >>> int(image_pixels_tf(tf.io.encode_png(tf.zeros([4, 6, 3], tf.uint8))))
        24
    """
    size = image_size_tf(encoded)
    return size[0] * size[1]


__all__ = [
    "DEFAULT_MAX_IMAGE_PIXELS",
    "MAX_JPEG_STEPS",
    "MAX_WEBP_CHUNKS",
    "displayed_size",
    "exif_orientation",
    "exif_orientation_tf",
    "image_format",
    "image_pixels_tf",
    "image_size",
    "image_size_tf",
]
