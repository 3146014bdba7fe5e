"""Fixtures for the data tests: small images, record sets, the test tokenizer."""

from __future__ import annotations

import pytest
from image_bytes import png_bytes


@pytest.fixture(scope="module")
def tokenizer():
    """A tokenizer per test module (hypothesis refuses function-scoped fixtures).

    ``keras.utils.set_random_seed``, called by other test files in the same process, clears
    TensorFlow's eager kernel cache and with it the SentencePiece resource of a tokenizer
    made before it.
    """
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
