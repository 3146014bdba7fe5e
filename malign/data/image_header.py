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
  the start of scan, at most :data:`MAX_JPEG_STEPS` steps.
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

#: The decoded-pixel limit (width x height, read from the header) that the record writer,
#: the input pipeline and the SavedModel apply unless told otherwise: 2**26 = 67,108,864
#: pixels (an 8192 x 8192 image; 61-megapixel camera photos fit). Decoding that many
#: pixels takes 192 MiB as 8-bit RGB, and the crop's float copy up to four times more.
DEFAULT_MAX_IMAGE_PIXELS = 1 << 26
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
def _bytes_at(data: tf.Tensor, pos: tf.Tensor, size: int) -> tf.Tensor:
    """int32 ``[size]``: the bytes at ``pos`` (any int), zeros past either end."""
    length = tf.cast(tf.strings.length(data), tf.int64)
    pos = tf.cast(pos, tf.int64)
    inside = tf.clip_by_value(pos, 0, length)
    chunk = tf.strings.substr(data, tf.cast(inside, tf.int32), size)
    chunk = tf.strings.substr(tf.strings.join([chunk, b"\x00" * size]), 0, size)
    raw = tf.reshape(tf.cast(tf.io.decode_raw(chunk, tf.uint8), tf.int32), [size])
    return tf.where(tf.equal(inside, pos), raw, tf.zeros_like(raw))


def _int(raw: tf.Tensor, little: tf.Tensor) -> tf.Tensor:
    """int64 of the bytes along the last axis of ``raw`` (int32), little or big endian."""
    raw = tf.cast(raw, tf.int64)
    size = raw.shape[-1]
    weights_le = tf.constant([256**i for i in range(size)], tf.int64)
    weights_be = tf.reverse(weights_le, [0])
    return tf.reduce_sum(raw * tf.where(little, weights_le, weights_be), axis=-1)


def _matches(raw: tf.Tensor, pattern: bytes) -> tf.Tensor:
    return tf.reduce_all(tf.equal(raw[: len(pattern)], tf.constant(list(pattern), tf.int32)))


def _find(data: tf.Tensor, pattern: bytes) -> tf.Tensor:
    """int64: where ``pattern`` first occurs in ``data``, -1 if it does not."""
    pieces = tf.strings.split(data, sep=pattern, maxsplit=1)
    return tf.where(tf.size(pieces) > 1, tf.cast(tf.strings.length(pieces[0]), tf.int64),
                    tf.constant(-1, tf.int64))


def _no_span() -> tuple[tf.Tensor, tf.Tensor]:
    return tf.constant(-1, tf.int64), tf.constant(-1, tf.int64)


def _jpeg_exif_span_tf(data: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    n = tf.cast(tf.strings.length(data), tf.int64)
    no_length = tf.constant(sorted(_NO_LENGTH), tf.int32)

    def cond(step, pos, start, end, done):
        return ~done & (step < MAX_JPEG_STEPS) & (pos < n)

    def body(step, pos, start, end, done):
        b = _bytes_at(data, pos, 16)
        marker = b[1]
        length = tf.cast(b[2] * 256 + b[3], tf.int64)
        junk = tf.not_equal(b[0], 0xFF)
        plain = tf.equal(marker, 0xFF)
        two = tf.equal(marker, 0x00) | tf.reduce_any(tf.equal(marker, no_length))
        stop = ~junk & ~plain & ~two & (tf.equal(marker, 0xDA) | (marker < 0xC0))
        segment = ~junk & ~plain & ~two & ~stop
        exif = segment & tf.equal(marker, 0xE1) & (start < 0) & _matches(b[4:], _EXIF_PREFIX)
        twice = tf.cast(_matches(b[10:], _EXIF_PREFIX), tf.int64) * 6
        start = tf.where(exif, pos + 10 + twice, start)
        end = tf.where(exif, tf.minimum(pos + 2 + length, n), end)
        step_size = tf.where(junk | plain, tf.constant(1, tf.int64),
                             tf.where(two, tf.constant(2, tf.int64), 2 + tf.maximum(length, 2)))
        # Once the Exif segment is found nothing later changes the answer: stop there.
        return step + 1, pos + step_size, start, end, done | stop | exif

    start, end = _no_span()
    init = (tf.constant(0), tf.constant(2, tf.int64), start, end, tf.constant(False))
    _, _, start, end, _ = tf.while_loop(cond, body, init, maximum_iterations=MAX_JPEG_STEPS)
    return start, end


def _png_exif_span_tf(data: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    n = tf.cast(tf.strings.length(data), tf.int64)
    found = tf.stack([_find(data, pattern) for pattern in _PNG_EXIF_PATTERNS])
    found = tf.where(found < 0, n, found)
    pos = tf.reduce_min(found)
    b = _bytes_at(data, pos - 4, 14)
    length = _int(b[:4], tf.constant(False))
    start = pos + 4 + tf.cast(_matches(b[8:], _EXIF_PREFIX), tf.int64) * 6
    end = tf.minimum(pos + 4 + length, n)
    missing = tf.equal(pos, n)
    return tf.where(missing, tf.constant(-1, tf.int64), start), end


def _webp_exif_span_tf(data: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    n = tf.cast(tf.strings.length(data), tf.int64)
    extended = _matches(_bytes_at(data, 12, 4), b"VP8X")

    def cond(step, pos, start, end, done):
        return ~done & (step < MAX_WEBP_CHUNKS) & (pos + 8 <= n)

    def body(step, pos, start, end, done):
        b = _bytes_at(data, pos, 14)
        size = _int(b[4:8], tf.constant(True))
        exif = _matches(b, b"EXIF")
        twice = tf.cast(_matches(b[8:], _EXIF_PREFIX), tf.int64) * 6
        start = tf.where(exif, pos + 8 + twice, start)
        end = tf.where(exif, tf.minimum(pos + 8 + size, n), end)
        return step + 1, pos + 8 + size + size % 2, start, end, done | exif

    start, end = _no_span()
    init = (tf.constant(0), tf.constant(12, tf.int64), start, end, ~extended)
    _, _, start, end, _ = tf.while_loop(cond, body, init, maximum_iterations=MAX_WEBP_CHUNKS)
    return start, end


def _tiff_orientation_tf(data: tf.Tensor, start: tf.Tensor, end: tf.Tensor) -> tf.Tensor:
    head = _bytes_at(data, start, 8)
    little = _matches(head, _TIFF_LE)
    ok = (start >= 0) & (end - start >= 8) & (little | _matches(head, _TIFF_BE))
    ifd = start + _int(head[4:8], little)
    ok &= ifd + 2 <= end
    count = tf.minimum(_int(_bytes_at(data, ifd, 2), little), (end - ifd - 2) // 12)
    count = tf.where(ok, tf.maximum(count, 0), tf.zeros_like(count))
    # Every entry inside the block at once (at most 65535 entries of 12 bytes).
    table = tf.strings.substr(data, tf.cast(tf.where(ok, ifd + 2, 0), tf.int32),
                              tf.cast(12 * count, tf.int32))
    entries = tf.reshape(tf.cast(tf.io.decode_raw(table, tf.uint8), tf.int32), [-1, 12])
    tags = _int(entries[:, 0:2], little)
    kinds = _int(entries[:, 2:4], little)
    units_table = tf.constant([_TIFF_UNIT.get(k, 0) for k in range(18)], tf.int64)
    units = tf.gather(units_table, tf.clip_by_value(kinds, 0, 17))
    units = tf.where(kinds > 17, tf.zeros_like(units), units)
    sizes = _int(entries[:, 4:8], little) * units
    inline = sizes <= 4
    positions = ifd + 2 + 12 * tf.range(tf.shape(entries, out_type=tf.int64)[0]) + 8
    where = tf.where(inline, positions, start + _int(entries[:, 8:12], little))
    stored = tf.equal(tags, ORIENTATION_TAG) & (sizes > 0) & (where + sizes <= end)
    # The first stored orientation entry decides (index n, past the end, when none).
    n = tf.size(tags, out_type=tf.int64)
    first = tf.reduce_min(tf.concat([tf.where(stored, tf.range(n), n), [n]], axis=0))
    kind = tf.concat([kinds, [0]], axis=0)[first]
    at = tf.concat([where, [0]], axis=0)[first]
    raw = _bytes_at(data, at, 8)
    unit = tf.gather(units_table, tf.clip_by_value(kind, 0, 17))
    value = tf.where(tf.equal(unit, 1), tf.cast(raw[0], tf.int64),
                     tf.where(tf.equal(unit, 2), _int(raw[:2], little),
                              tf.where(tf.equal(unit, 4), _int(raw[:4], little),
                                       _int(raw, little))))
    integer = tf.reduce_any(tf.equal(kind, tf.constant(_INTEGER_TYPES, tf.int64)))
    good = integer & (value >= 1) & (value <= 8)
    return tf.cast(tf.where(good, value, 1), tf.int32)


def _format_flags(data: tf.Tensor) -> dict[str, tf.Tensor]:
    head = _bytes_at(data, 0, 12)
    return {
        "jpeg": _matches(head, _JPEG_SOI),
        "png": _matches(head, _PNG_SIGNATURE),
        "gif": _matches(head, b"GIF87a") | _matches(head, b"GIF89a"),
        "bmp": _matches(head, b"BM"),
        "webp": _matches(head, b"RIFF") & _matches(head[8:], b"WEBP"),
    }


def exif_orientation_tf(encoded: tf.Tensor) -> tf.Tensor:
    """The EXIF orientation of an encoded image, in the graph (int32 scalar, 1..8).

    The same rules as :func:`exif_orientation`; never fails (malformed data gives 1).

    Args:
        encoded: a scalar string tensor holding the file.

    Example:
        >>> int(exif_orientation_tf(tf.constant(b"\\xff\\xd8\\xff\\xd9")))
        1
    """
    data = tf.convert_to_tensor(encoded, tf.string)
    flags = _format_flags(data)
    start, end = tf.case(
        [
            (flags["jpeg"], lambda: _jpeg_exif_span_tf(data)),
            (flags["png"], lambda: _png_exif_span_tf(data)),
            (flags["webp"], lambda: _webp_exif_span_tf(data)),
        ],
        default=_no_span,
    )
    return tf.cond(start >= 0, lambda: _tiff_orientation_tf(data, start, end),
                   lambda: tf.constant(1, tf.int32))


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
    flags = _format_flags(data)
    head = _bytes_at(data, 0, 30)
    little, big = tf.constant(True), tf.constant(False)
    zero = tf.zeros([2], tf.int64)
    long_enough = lambda k: tf.strings.length(data) >= k  # noqa: E731

    def png():
        ok = long_enough(24) & _matches(head[12:], b"IHDR")
        size = tf.stack([_int(head[20:24], big), _int(head[16:20], big)])
        return tf.where(ok, size, zero)

    def gif():
        size = tf.stack([_int(head[8:10], little), _int(head[6:8], little)])
        return tf.where(long_enough(10), size, zero)

    def bmp():
        def signed(raw):
            value = _int(raw, little)
            return tf.abs(tf.where(value >= 2**31, value - 2**32, value))

        size = tf.stack([signed(head[22:26]), signed(head[18:22])])
        return tf.where(long_enough(26), size, zero)

    def webp():
        vp8x = tf.stack([_int(head[27:30], little) + 1, _int(head[24:27], little) + 1])
        bits = _int(head[21:25], little)
        vp8l = tf.stack([bits // 2**14 % 2**14 + 1, bits % 2**14 + 1])
        vp8 = tf.stack([_int(head[28:30], little) % 2**14, _int(head[26:28], little) % 2**14])
        return tf.where(
            ~long_enough(30), zero,
            tf.where(_matches(head[12:], b"VP8X"), vp8x,
                     tf.where(_matches(head[12:], b"VP8L") & tf.equal(head[20], 0x2F), vp8l,
                              tf.where(_matches(head[12:], b"VP8 ")
                                       & _matches(head[23:], b"\x9d\x01\x2a"), vp8, zero))))

    return tf.case(
        [
            (flags["jpeg"],
             lambda: tf.cast(tf.image.extract_jpeg_shape(data)[:2], tf.int64)),
            (flags["png"], png),
            (flags["gif"], gif),
            (flags["bmp"], bmp),
            (flags["webp"], webp),
        ],
        default=lambda: zero,
    )


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
