"""Small encoded images for the data tests (a uniquely named module: several test
folders have a conftest.py, so `from conftest import ...` is ambiguous under xdist)."""

from __future__ import annotations

import io

import numpy as np


def jpeg_bytes(height: int = 40, width: int = 56, seed: int = 0, quality: int = 90) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def png_bytes(height: int = 40, width: int = 56, seed: int = 0, mode: str = "RGB") -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    if mode != "RGB":
        image = image.convert(mode)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def corrupt_body_jpeg(seed: int = 0) -> bytes:
    """Valid JPEG start and end markers around garbage: passes the cheap screen, fails to
    decode (exercises the pipeline's decode-error path)."""
    good = jpeg_bytes(seed=seed)
    return good[:20] + bytes(np.random.default_rng(seed).integers(0, 255, 300, np.uint8)) \
        + b"\xff\xd9"


# -- hand-made PNG files, EXIF blocks, oriented images ------------------------------------
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_encode(samples, bit_depth: int, color_type: int, palette=None, trns: bytes | None = None,
               before_idat: tuple = (), after_idat: tuple = ()) -> bytes:
    """A PNG of any bit depth and colour type (PIL cannot write 16-bit RGB, 2/4-bit grey...).

    ``samples``: integer array ``[h, w]`` or ``[h, w, c]`` of sample values (palette indices
    for colour type 3). ``before_idat``/``after_idat``: extra ``(type, data)`` chunks.
    """
    import struct
    import zlib

    samples = np.asarray(samples)
    if samples.ndim == 2:
        samples = samples[..., None]
    height, width, _ = samples.shape
    rows = []
    for row in samples:
        flat = row.reshape(-1).astype(np.int64)
        if bit_depth == 16:
            raw = flat.astype(">u2").tobytes()
        elif bit_depth == 8:
            raw = flat.astype(np.uint8).tobytes()
        else:
            per = 8 // bit_depth
            flat = np.concatenate([flat, np.zeros((-len(flat)) % per, np.int64)]).reshape(-1, per)
            shifts = 8 - bit_depth * (np.arange(per) + 1)
            raw = (flat << shifts).sum(axis=1).astype(np.uint8).tobytes()
        rows.append(b"\x00" + raw)
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    out = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
    for kind, data in before_idat:
        out += _png_chunk(kind, data)
    if palette is not None:
        out += _png_chunk(b"PLTE", np.asarray(palette, np.uint8).tobytes())
    if trns is not None:
        out += _png_chunk(b"tRNS", trns)
    out += _png_chunk(b"IDAT", zlib.compress(b"".join(rows)))
    for kind, data in after_idat:
        out += _png_chunk(kind, data)
    return out + _png_chunk(b"IEND", b"")


def zeros_png(width: int, height: int, rows_per_block: int = 100) -> bytes:
    """A valid black 8-bit grey PNG of any size, made without holding its pixels: the
    deflate stream is one compressed block of zero rows, flushed, repeated (a 20000x20000
    image is about 100 KB and takes milliseconds)."""
    import struct
    import zlib

    assert height % rows_per_block == 0
    row_bytes = width + 1  # filter byte + one byte per pixel
    block_size = row_bytes * rows_per_block
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(b"\x00" * block_size) + compressor.flush(zlib.Z_FULL_FLUSH)
    end = compressor.flush(zlib.Z_FINISH)
    total = row_bytes * height
    adler = ((total % 65521) << 16) | 1  # adler32 of zero bytes
    stream = b"\x78\xda" + block * (height // rows_per_block) + end + adler.to_bytes(4, "big")
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", stream)
            + _png_chunk(b"IEND", b""))


def exif_block(orientation: int, little: bool = True, kind: int = 3, count: int = 1,
               other_entries: int = 2, prefix: bool = True) -> bytes:
    """An EXIF block (``Exif\\0\\0`` + TIFF) whose IFD0 holds ``other_entries`` other tags
    (Make, Software...) and then the orientation entry of TIFF type ``kind``."""
    import struct

    e = "<" if little else ">"
    entries = [struct.pack(e + "HHI", 0x010F + i, 3, 1) + struct.pack(e + "HH", 7, 0)
               for i in range(other_entries)]
    width = {1: 1, 6: 1, 7: 1, 3: 2, 8: 2}.get(kind, 4)
    value = orientation.to_bytes(width, "little" if little else "big").ljust(4, b"\x00")
    entries.append(struct.pack(e + "HHI", 0x0112, kind, count) + value)
    tiff = (b"II*\x00" if little else b"MM\x00*") + struct.pack(e + "I", 8)
    tiff += struct.pack(e + "H", len(entries)) + b"".join(entries) + struct.pack(e + "I", 0)
    return (b"Exif\x00\x00" if prefix else b"") + tiff


def oriented(pixels: np.ndarray, orientation: int, fmt: str = "JPEG", **save) -> bytes:
    """``pixels`` saved by PIL as ``fmt`` with an EXIF orientation tag."""
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=fmt, exif=exif_block(orientation), **save)
    return out.getvalue()


def upright(data: bytes) -> np.ndarray:
    """What a person sees: PIL's exif_transpose, converted to 8-bit RGB as TensorFlow
    converts (malign.data.writer.rgb8)."""
    from PIL import Image, ImageOps

    from malign.data.writer import rgb8

    image = Image.open(io.BytesIO(data))
    image.load()
    return np.asarray(rgb8(ImageOps.exif_transpose(image)))
