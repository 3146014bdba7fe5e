"""Fuzzing the record reader and the image decoding of the input pipeline with random bytes.

A shard cut at any byte, with bytes flipped anywhere, or made of random bytes, is read to
its end without a crash or a hang: what survives is exactly the original records (never a
changed one), the rest counted as corrupt records or lost bytes. An image of random or
damaged bytes costs its record, counted as "undecodable image". Examples per test are few
(fast enough for ``make test``); the seeds hypothesis finds are replayed from its database.
"""

from __future__ import annotations

import signal
import struct
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from image_bytes import jpeg_bytes, png_bytes

from malign.data import DropCounter, check_shard, make_dataset
from malign.data.framing import RECORD_OVERHEAD, scan_shard
from malign.data.pipeline import NoUsableRecordsError
from malign.data.record_reader import CORRUPT, INTACT, LOST, record_stream
from malign.data.schema import ImageTextExample
from malign.data.writer import RecordWriter

N = 6
FUZZ = settings(max_examples=5, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


@contextmanager
def time_limit(seconds: int):
    """Fails the test instead of hanging (the reader must always reach the end)."""
    def expire(signum, frame):
        raise AssertionError(f"reading did not finish within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def shard_bytes(tmp_path_factory) -> bytes:
    """A shard of N small records, as bytes."""
    prefix = str(tmp_path_factory.mktemp("fuzz") / "items")
    with RecordWriter(prefix, 1) as writer:
        for i in range(N):
            writer.write(ImageTextExample(f"img{i}", png_bytes(8, 8, seed=i), "png",
                                          [f"item {i}"], ["en"]))
    return Path(f"{prefix}-00000-of-00001.tfrecord").read_bytes()


def _frames(data: bytes) -> list[tuple[int, bytes]]:
    """(offset, record) of each record of an intact shard, read with struct."""
    out, offset = [], 0
    while offset < len(data):
        (length,) = struct.unpack("<Q", data[offset:offset + 8])
        out.append((offset, data[offset + 12:offset + 12 + length]))
        offset += RECORD_OVERHEAD + length
    return out


def _read(shards: list[bytes]) -> list[list[dict]]:
    """Every element the reader yields for shards holding these bytes, per shard.

    The shards are read through one stream (one dataset to build: examples stay cheap).
    """
    with tempfile.TemporaryDirectory() as directory:
        paths = []
        for i, data in enumerate(shards):
            paths.append(str(Path(directory) / f"x-{i:05d}-of-{len(shards):05d}.tfrecord"))
            Path(paths[-1]).write_bytes(data)
            check_shard(paths[-1])  # never raises on damage: it reports
        stream = record_stream(paths)
        dataset = tf.data.Dataset.range(len(paths)).flat_map(stream.file_dataset)
        out: list[list[dict]] = [[] for _ in paths]
        with time_limit(60):
            for element in dataset.as_numpy_iterator():
                out[int(element["file"])].append(element)
        return out


SHARDS = 4  # damaged shards per example


@FUZZ
@given(cuts=st.lists(st.integers(min_value=0, max_value=10**6), min_size=SHARDS,
                     max_size=SHARDS))
@example(cuts=[0, 12, 13, 10**6])
def test_a_shard_cut_anywhere_keeps_exactly_its_whole_records(shard_bytes, cuts):
    cuts = [cut % (len(shard_bytes) + 1) for cut in cuts]
    frames = _frames(shard_bytes)
    for cut, elements in zip(cuts, _read([shard_bytes[:cut] for cut in cuts])):
        whole = [(o, r) for o, r in frames if o + RECORD_OVERHEAD + len(r) <= cut]
        framed_end = whole[-1][0] + RECORD_OVERHEAD + len(whole[-1][1]) if whole else 0
        intact = [e for e in elements if e["damage"] == INTACT]
        assert [(int(e["offset"]), e["record"]) for e in intact] == whole
        lost = [int(e["lost"]) for e in elements if e["damage"] == LOST]
        assert lost == ([cut - framed_end] if cut > framed_end else [])
        assert not [e for e in elements if e["damage"] == CORRUPT]


@FUZZ
@given(flips=st.lists(st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)),
                               min_size=1, max_size=3), min_size=SHARDS, max_size=SHARDS))
def test_flipped_bytes_cost_records_never_change_one(shard_bytes, flips):
    damaged_shards = []
    for shard_flips in flips:
        data = bytearray(shard_bytes)
        for at, mask in shard_flips:
            data[at % len(data)] ^= mask
        damaged_shards.append(bytes(data))
    originals = dict(_frames(shard_bytes))
    for data, shard_flips, elements in zip(damaged_shards, flips, _read(damaged_shards)):
        assert {int(e["damage"]) for e in elements} <= {INTACT, CORRUPT, LOST}
        intact = [e for e in elements if e["damage"] == INTACT]
        for element in intact:  # a record read is an original record, at its own offset
            assert originals.get(int(element["offset"])) == element["record"]
        hit = {at % len(data) for at, _ in shard_flips}
        untouched = {o for o, r in originals.items()
                     if not any(o <= at < o + RECORD_OVERHEAD + len(r) for at in hit)}
        # Every untouched record whose header the framing still finds is read.
        found = {int(o) for o in scan_shard_bytes(data)}
        assert untouched & found <= {int(e["offset"]) for e in intact}
        assert len(intact) + sum(e["damage"] == CORRUPT for e in elements) <= N


def scan_shard_bytes(data: bytes) -> np.ndarray:
    """The record offsets ``scan_shard`` finds in a shard holding ``data``."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "x.tfrecord"
        path.write_bytes(data)
        return scan_shard(str(path)).offsets


@FUZZ
@given(shards=st.lists(st.binary(max_size=4096), min_size=SHARDS, max_size=SHARDS))
@example(shards=[b"", b"\xff" * 16, struct.pack("<Q", 2**63) + b"\x00" * 8, b"\x00" * 40])
def test_random_bytes_as_a_shard_are_read_to_the_end(shards):
    for data, elements in zip(shards, _read(shards)):
        assert {int(e["damage"]) for e in elements} <= {INTACT, CORRUPT, LOST}
        lost = sum(int(e["lost"]) for e in elements)
        framed = sum(RECORD_OVERHEAD + len(e["record"]) for e in elements
                     if e["damage"] == INTACT)
        assert framed + lost <= len(data)


def _image_records(images: list[bytes]) -> str:
    directory = tempfile.mkdtemp()
    prefix = str(Path(directory) / "imgs")
    with RecordWriter(prefix, 1) as writer:
        for i, data in enumerate(images):
            writer.write(ImageTextExample(f"img{i}", data, "jpeg" if i % 2 else "png",
                                          [f"item {i}"], ["en"]))
    return prefix


def _evaluate(prefix: str, tokenizer) -> tuple[int, DropCounter]:
    counter = DropCounter()
    ds = make_dataset(prefix, tokenizer, 16, 4, training=False, counter=counter)
    with time_limit(60):
        kept = 0
        for batch in ds.as_numpy_iterator():
            images = batch["image"]
            assert images.shape[1:] == (16, 16, 3)
            assert np.isfinite(images).all() and images.min() >= 0 and images.max() <= 1
            kept += images.shape[0]
    return kept, counter


PIPELINE_FUZZ = settings(FUZZ, max_examples=3)


@PIPELINE_FUZZ
@given(junk=st.lists(st.binary(max_size=300), min_size=1, max_size=8))
@example(junk=[b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0" + b"\x00" * 40])
def test_random_image_bytes_are_dropped_and_counted(tokenizer, junk):
    good = [png_bytes(12, 12, seed=1), jpeg_bytes(12, 12, seed=2)]
    kept, counter = _evaluate(_image_records(good + junk), tokenizer)
    counts = counter.as_dict()
    assert kept == len(good)
    assert counts["records read"] == len(good) + len(junk)
    assert counts["undecodable image"] == len(junk) and counter.dropped == len(junk)


def _damage(original: bytes, cut: int, flips: list[tuple[int, int]]) -> bytes:
    data = bytearray(original[: 1 + cut % len(original)])
    for at, mask in flips:
        data[at % len(data)] ^= mask
    return bytes(data)


DAMAGE = st.tuples(st.integers(1, 10**6),
                   st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), max_size=3))


@PIPELINE_FUZZ
@given(damage=st.lists(DAMAGE, min_size=8, max_size=8))
def test_damaged_images_never_crash_the_pipeline(tokenizer, damage):
    """A truncated or bit-flipped JPEG/PNG may still decode (a flip in pixel data) or not;
    either way it is one record kept or one record counted, never a crash."""
    originals = [jpeg_bytes(16, 16, seed=4), png_bytes(16, 16, seed=5)]
    damaged = [_damage(originals[i % 2], cut, flips) for i, (cut, flips) in enumerate(damage)]
    kept, counter = _evaluate(_image_records([png_bytes(12, 12, seed=3), *damaged]), tokenizer)
    counts = counter.as_dict()
    assert counts["records read"] == 1 + len(damaged)
    assert 1 <= kept and kept + counts["undecodable image"] == 1 + len(damaged)


@pytest.fixture(scope="module")
def decode():
    """The pipeline's screen and decode of one image, traced once: (usable, pixels)."""
    from malign.data.preprocess import decode_and_crop, image_bytes_ok

    @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
    def screen_and_decode(encoded):
        return image_bytes_ok(encoded), decode_and_crop(encoded, 16, training=False)

    return screen_and_decode


@settings(FUZZ, max_examples=150)
@given(data=st.one_of(st.binary(max_size=600), DAMAGE.map(
    lambda d: _damage(jpeg_bytes(16, 16, seed=6), *d)), DAMAGE.map(
    lambda d: _damage(png_bytes(16, 16, seed=7), *d))))
def test_decoding_random_and_damaged_bytes_fails_cleanly_or_gives_pixels(decode, data):
    """Each image the pipeline sees is screened, then decoded: any bytes end in a clean
    TensorFlow error (the record is dropped and counted) or in valid pixels, never a crash."""
    try:
        usable, pixels = decode(tf.constant(data))
    except tf.errors.InvalidArgumentError:
        return
    pixels = pixels.numpy()
    assert pixels.shape == (16, 16, 3) and np.isfinite(pixels).all()
    assert pixels.min() >= 0 and pixels.max() <= 1


def test_only_undecodable_images_end_in_an_error_not_a_hang(tokenizer):
    prefix = _image_records([b"not an image", b"\x89PNG\r\n\x1a\n garbage"])
    with pytest.raises(tf.errors.InvalidArgumentError) as caught:
        _evaluate(prefix, tokenizer)
    error = NoUsableRecordsError.from_op_error(caught.value)
    assert error is not None and "2 undecodable image" in str(error)
