"""Reading size and EXIF orientation from the header: Python reader == in-graph reader == PIL."""

from __future__ import annotations

import io
import itertools
import time
import warnings

import numpy as np
import pytest
import tensorflow as tf
from image_bytes import exif_block, jpeg_bytes, png_encode, zeros_png

from malign.data import image_header
from malign.data.image_header import (
    exif_orientation,
    exif_orientation_tf,
    image_size,
    image_size_tf,
)

PIXELS = (np.arange(5 * 7 * 3).reshape(5, 7, 3) * 7 % 256).astype(np.uint8)
_orientation = tf.function(exif_orientation_tf, input_signature=[tf.TensorSpec([], tf.string)])
_size = tf.function(image_size_tf, input_signature=[tf.TensorSpec([], tf.string)])


def _pil_orientation(data: bytes) -> int | str:
    """The orientation PIL's exif_transpose applies (what a person sees), or "error"."""
    from PIL import Image, ImageOps

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            image = Image.open(io.BytesIO(data))
            value = image.getexif().get(0x0112, 1)
            turned = ImageOps.exif_transpose(image)
        except Exception:  # PIL cannot open or read it
            return "error"
    if value in range(2, 9):
        return int(value)
    assert turned.size == image.size  # nothing applied
    return 1


def _save(fmt: str, exif: bytes, pixels: np.ndarray = PIXELS) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    extra = {"lossless": True} if fmt == "WEBP" else {}
    Image.fromarray(pixels).save(out, format=fmt, exif=exif, **extra)
    return out.getvalue()


def _all_three(data: bytes) -> tuple[int, int, int | str]:
    return exif_orientation(data), int(_orientation(tf.constant(data))), _pil_orientation(data)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_every_orientation_in_every_format_equals_pil(fmt):
    for orientation, little in itertools.product(range(0, 10), (True, False)):
        data = _save(fmt, exif_block(orientation, little))
        expected = orientation if 1 <= orientation <= 8 else 1
        assert _all_three(data) == (expected, expected, expected), (orientation, little)
    assert _all_three(_save(fmt, b"")) == (1, 1, 1)  # no EXIF at all


def test_tiff_entry_types_and_counts_follow_pil():
    """PIL takes the first value of an integer entry (SHORT, LONG, SBYTE, SSHORT, SLONG), of
    any count, even out of line; BYTE/UNDEFINED/ASCII come back as bytes and do nothing;
    entries of unknown types or without a value are skipped."""
    checked = 0
    for kind, count, little in itertools.product((1, 2, 3, 4, 6, 7, 8, 9, 13, 14, 16, 0),
                                                 (0, 1, 2, 3), (True, False)):
        data = _save("JPEG", exif_block(6, little, kind, count))
        ours, graph, pil = _all_three(data)
        assert ours == graph, (kind, count, little)
        assert ours == pil, (kind, count, little)
        checked += ours == 6
    assert checked > 10


def _jpeg_with_segments(*segments: bytes) -> bytes:
    """A JPEG with extra marker segments right after SOI."""
    base = jpeg_bytes(9, 13, seed=1)
    return base[:2] + b"".join(segments) + base[2:]


def _app(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload


@pytest.mark.parametrize("name, data, expected", [
    ("app0 then exif", _jpeg_with_segments(_app(0xE0, b"JFIF\x00" + bytes(9)),
                                           _app(0xE1, exif_block(6))), 6),
    ("xmp app1 first", _jpeg_with_segments(_app(0xE1, b"http://ns.adobe.com/xap/1.0/\x00<x/>"),
                                           _app(0xE1, exif_block(8))), 8),
    ("fill bytes and junk", _jpeg_with_segments(b"\xff\xff\xff", b"\x00\x12",
                                                _app(0xE1, exif_block(3, False))), 3),
    ("two exif segments: the first wins", _jpeg_with_segments(
        _app(0xE1, exif_block(5)), _app(0xE1, exif_block(7))), 5),
    ("doubled Exif prefix", _jpeg_with_segments(_app(0xE1, b"Exif\x00\x00" + exif_block(2))), 2),
    ("orientation after 60 other entries", _jpeg_with_segments(
        _app(0xE1, exif_block(7, other_entries=60))), 7),
    ("exif after the tables", _jpeg_with_segments(_app(0xFE, b"a comment"),
                                                   _app(0xE2, b"ICC_PROFILE\x00" + bytes(300)),
                                                   _app(0xE1, exif_block(4))), 4),
    ("png eXIf before IDAT", png_encode(PIXELS, 8, 2, before_idat=[(b"eXIf", exif_block(6)[6:])]),
     6),
    ("png eXIf after IDAT", png_encode(PIXELS, 8, 2, after_idat=[(b"eXIf", exif_block(8)[6:])]),
     8),
    ("png eXIf with an Exif prefix", png_encode(PIXELS, 8, 2, before_idat=[
        (b"tEXt", b"Comment\x00eXIf inside text"), (b"eXIf", exif_block(5, False))]), 5),
    ("png without eXIf", png_encode(PIXELS, 8, 2, before_idat=[(b"tEXt", b"k\x00eXIfMM")]), 1),
])
def test_where_the_exif_block_is_found(name, data, expected):
    assert _all_three(data) == (expected, expected, expected)


def test_damaged_headers_never_fail_and_both_readers_agree():
    """Random byte changes and truncations of files carrying orientation 6: the graph never
    raises and always equals the Python reader (which the writer uses)."""
    rng = np.random.default_rng(0)
    sources = [_save("JPEG", exif_block(6, other_entries=4)),
               _save("PNG", exif_block(6, False)), _save("WEBP", exif_block(6))]
    cases = []
    for source in sources:
        head = 120  # the markers/chunks and the EXIF block
        for _ in range(60):
            data = bytearray(source)
            for _ in range(rng.integers(1, 4)):
                data[rng.integers(0, head)] = rng.integers(0, 256)
            cases.append(bytes(data))
        cases += [source[:k] for k in range(0, head, 7)]
    cases += [b"", b"\xff\xd8\xff", b"\xff\xd8\xff\xe1\x00", b"\x89PNG\r\n\x1a\neXIfII*\x00"]
    values = []
    for data in cases:
        ours = exif_orientation(data)
        assert int(_orientation(tf.constant(data))) == ours, data[:40]
        values.append(ours)
    assert 6 in values and 1 in values  # some survive, some break


def test_sizes_equal_pil_and_tensorflow():
    from PIL import Image

    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (21, 34, 3), dtype=np.uint8)
    files = {}
    for fmt, options in [("JPEG", {}), ("JPEG", {"progressive": True}), ("PNG", {}),
                         ("GIF", {}), ("BMP", {}), ("WEBP", {"lossless": True}),
                         ("WEBP", {"quality": 80}), ("WEBP", {"exif": exif_block(6)})]:
        out = io.BytesIO()
        Image.fromarray(pixels).save(out, format=fmt, **options)
        files[f"{fmt} {options}"] = out.getvalue()
    files["png 16-bit"] = png_encode(rng.integers(0, 65536, (21, 34)), 16, 0)
    for name, data in files.items():
        expected = (21, 34)
        assert image_size(data) == expected, name
        assert _size(tf.constant(data)).numpy().tolist() == list(expected), name
        assert tf.io.decode_image(data, expand_animations=False).shape[:2] == expected, name
    assert image_size(b"not an image") is None
    assert _size(tf.constant(b"not an image")).numpy().tolist() == [0, 0]


def test_huge_png_size_is_read_from_the_header_fast():
    data = zeros_png(20000, 20000)
    assert len(data) < 1_000_000  # valid, and a few hundred KB
    start = time.perf_counter()
    assert image_size(data) == (20000, 20000)
    assert _size(tf.constant(data)).numpy().tolist() == [20000, 20000]
    assert int(image_header.image_pixels_tf(tf.constant(data))) == 400_000_000
    assert time.perf_counter() - start < 5
    # And in a valid file: the first rows decode (PIL stops after 10 rows here).
    from PIL import Image

    image = Image.open(io.BytesIO(zeros_png(300, 200)))
    assert image.size == (300, 200) and np.asarray(image).max() == 0


def test_default_limit_is_the_documented_one():
    from malign.data import commands

    assert image_header.DEFAULT_MAX_IMAGE_PIXELS == 8192 * 8192 == commands.DEFAULT_MAX_IMAGE_PIXELS
