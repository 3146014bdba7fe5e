"""Fixtures for the data tests: small images, record sets, the test tokenizer."""

from __future__ import annotations

import io

import numpy as np
import pytest


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


@pytest.fixture(scope="session")
def tokenizer():
    import malign.text

    return malign.text.SentencePieceTokenizer(malign.text.test_vocab_path(), sequence_length=16)


@pytest.fixture(scope="session")
def synthetic_records(tmp_path_factory):
    """48 synthetic 32-px scenes in 3 shards; returns the shard prefix."""
    from malign.data.synthetic import write_synthetic

    prefix = str(tmp_path_factory.mktemp("synthetic") / "train")
    write_synthetic(prefix, 48, image_size=32, seed=0, shards=3, verbose=False)
    return prefix


@pytest.fixture(scope="session")
def numbered_records(tmp_path_factory):
    """Records whose captions say which record they are ("item 7"), for order and sharding
    checks: 24 records in 4 shards and the same 24 in 1 shard. Returns both prefixes."""
    from malign.data.schema import ImageTextExample
    from malign.data.writer import RecordWriter

    root = tmp_path_factory.mktemp("numbered")
    prefixes = {}
    for shards in (4, 1):
        prefix = str(root / f"items{shards}")
        with RecordWriter(prefix, shards) as writer:
            for i in range(24):
                writer.write(ImageTextExample(
                    f"img{i}", png_bytes(24, 30, seed=i), "png",
                    [f"item {i}", f"Element {i}"], ["en", "de"]))
        prefixes[shards] = prefix
    return prefixes
