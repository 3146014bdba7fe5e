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
