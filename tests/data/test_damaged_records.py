"""Damaged shards: a record whose checksum fails costs only itself and is counted, lost
framing is counted in bytes, and a record set without a usable record is an error, not a hang.

Shards are written with malign's writer, then one byte is flipped where a disk or a copy
would flip it: inside a record's data, in its data checksum, in a length header or in the
length checksum.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from image_bytes import png_bytes

from malign.cli import main
from malign.data import DropCounter, check_shard, make_dataset, read_eval_split
from malign.data.framing import masked_crc32c, scan_shard
from malign.data.pipeline import NoUsableRecordsError
from malign.data.schema import ImageTextExample
from malign.data.writer import RecordWriter

REPO = Path(__file__).resolve().parents[2]
N = 10


def _write(prefix: str, n: int = N, image: bytes | None = None) -> str:
    with RecordWriter(prefix, 1) as writer:
        for i in range(n):
            data = image if image is not None else png_bytes(24, 30, seed=i)
            writer.write(ImageTextExample(f"img{i}", data, "png", [f"item {i}"], ["en"]))
    return f"{prefix}-00000-of-00001.tfrecord"


def _records(path: str) -> list[tuple[int, int]]:
    """(offset, data length) of each record, read with struct (independent of malign)."""
    data = Path(path).read_bytes()
    out, offset = [], 0
    while offset < len(data):
        (length,) = struct.unpack("<Q", data[offset:offset + 8])
        out.append((offset, length))
        offset += 16 + length
    assert offset == len(data)
    return out


def _flip(path: str, at: int) -> None:
    data = bytearray(Path(path).read_bytes())
    data[at] ^= 0x40
    Path(path).write_bytes(bytes(data))


def _copy(shard: str, directory: Path) -> tuple[str, str]:
    """A copy of the shard in ``directory``; returns (prefix, path)."""
    path = directory / Path(shard).name
    shutil.copy(shard, path)
    return str(path).rsplit("-00000-of-00001.tfrecord", 1)[0], str(path)


def _caption_numbers(tokenizer, ds) -> list[int]:
    texts = [t.decode() for batch in ds.as_numpy_iterator()
             for t in tokenizer.detokenize(batch["token_ids"]).numpy()]
    return [int(t.split()[1]) for t in texts]


@pytest.fixture(scope="module")
def shard(tmp_path_factory) -> str:
    """One shard of 10 records ("item 0" ... "item 9")."""
    return _write(str(tmp_path_factory.mktemp("clean") / "items"))


def test_masked_crc32c_matches_the_shards_tensorflow_writes(shard):
    assert masked_crc32c(b"123456789") == (((0xE3069283 >> 15) | (0xE3069283 << 17))
                                           + 0xA282EAD8) & 0xFFFFFFFF
    data = Path(shard).read_bytes()
    for offset, length in _records(shard):
        (stored,) = struct.unpack("<I", data[offset + 8:offset + 12])
        assert masked_crc32c(data[offset:offset + 8]) == stored
        (stored,) = struct.unpack("<I", data[offset + 12 + length:offset + 16 + length])
        assert masked_crc32c(data[offset + 12:offset + 12 + length]) == stored


# (record, where the byte is flipped): inside the data, its first byte, its checksum.
DATA_FLIPS = [(2, "data"), (0, "first data byte"), (9, "data checksum"), (2, "data checksum")]


def _data_flip_at(offset: int, length: int, where: str) -> int:
    return {"data": offset + 12 + length // 2, "first data byte": offset + 12,
            "data checksum": offset + 12 + length + 1}[where]


@pytest.mark.parametrize("record,where", DATA_FLIPS)
def test_a_corrupt_record_costs_only_itself(shard, tokenizer, tmp_path, capfd, record, where):
    prefix, path = _copy(shard, tmp_path)
    offset, length = _records(path)[record]
    _flip(path, _data_flip_at(offset, length, where))
    assert check_shard(path) == (N, None)  # the framing is intact
    expected = [i for i in range(N) if i != record]

    counter = DropCounter()
    train = make_dataset(prefix, tokenizer, 24, 1, seed=0, repeat=False, counter=counter)
    assert sorted(_caption_numbers(tokenizer, train)) == expected
    counts = counter.as_dict()
    assert counts["records read"] == N and counts["corrupt record (CRC)"] == 1
    assert counter.dropped == 1 and counts["shard bytes lost"] == 0
    err = capfd.readouterr().err
    assert (f"dropped record {record} of shard {path} (byte {offset}) (corrupt record (CRC))"
            in err)

    evaluation = make_dataset(prefix, tokenizer, 24, 4, training=False)
    assert _caption_numbers(tokenizer, evaluation) == expected  # in record order

    split = read_eval_split(prefix, 24, 4, verbose=False)
    assert split.image_ids == [f"img{i}" for i in expected]
    assert split.num_images == N - 1 and split.dropped == 1
    assert split.drop_reasons["corrupt record (CRC)"] == 1
    assert split.damage == [
        f"record {record} of shard {path} (byte {offset}): corrupt record (CRC)"]
    assert sum(b.shape[0] for b in split.images.as_numpy_iterator()) == N - 1


def test_inspect_strict_names_the_corrupt_record(shard, tmp_path, capsys):
    assert main(["data", "inspect", shard, "--strict"]) == 0  # intact
    assert "10 images" in capsys.readouterr().out
    prefix, path = _copy(shard, tmp_path)
    offset, length = _records(path)[2]
    _flip(path, offset + 12 + length // 2)
    assert main(["data", "inspect", prefix]) == 0  # reports, fails only with --strict
    assert main(["data", "inspect", prefix, "--strict"]) == 1
    out = capsys.readouterr().out
    assert f"damaged: record 2 of shard {path} (byte {offset}): corrupt record (CRC)" in out
    assert "9 images" in out and "1 corrupt record (CRC)" in out


def test_corrupt_records_across_a_chunk_boundary(tmp_path):
    """Several bad records, in and around the reader's 64-record chunks, each cost one."""
    from malign.data.record_reader import CHUNK_RECORDS

    n = CHUNK_RECORDS + 6
    bad = [0, CHUNK_RECORDS - 1, CHUNK_RECORDS, CHUNK_RECORDS + 1, n - 1]
    path = _write(str(tmp_path / "many"), n, image=png_bytes(8, 8, seed=0))
    records = _records(path)
    for i in bad:
        offset, length = records[i]
        _flip(path, offset + 12 + length - 1)
    split = read_eval_split(path, 8, 32, verbose=False)
    assert split.image_ids == [f"img{i}" for i in range(n) if i not in bad]
    assert split.drop_reasons["corrupt record (CRC)"] == len(bad) == len(split.damage)
    assert [line.split(" of ")[0] for line in split.damage] == [f"record {i}" for i in bad]


@pytest.mark.parametrize("field", ["length", "length checksum"])
def test_lost_framing_is_counted_in_bytes(shard, tokenizer, tmp_path, capfd, field):
    prefix, path = _copy(shard, tmp_path)
    offset, _ = _records(path)[4]
    _flip(path, offset + (1 if field == "length" else 9))
    lost = os.path.getsize(path) - offset
    records, problem = check_shard(path)
    assert records == 4
    assert problem == (f"length checksum fails at record 4 (byte {offset}): "
                       f"{lost} bytes unreadable")
    assert scan_shard(path).lost_bytes == lost

    counter = DropCounter()
    train = make_dataset(prefix, tokenizer, 24, 1, seed=0, repeat=False, counter=counter)
    assert sorted(_caption_numbers(tokenizer, train)) == [0, 1, 2, 3]
    counts = counter.as_dict()
    assert counts["records read"] == 4 and counter.dropped == 0
    assert counts["shard bytes lost"] == lost
    err = capfd.readouterr().err
    assert f"shard {path} is damaged (length checksum fails at record 4" in err
    assert f"shard {path} (byte {offset}): record framing lost, {lost} bytes unreadable" in err

    split = read_eval_split(prefix, 24, 4, verbose=False)
    assert split.num_images == 4 and split.drop_reasons["shard bytes lost"] == lost
    assert split.damage == [
        f"shard {path} (byte {offset}): record framing lost, {lost} bytes unreadable"]
    assert f"{lost} shard bytes lost" in split.summary()

    assert main(["data", "inspect", prefix, "--strict"]) == 1
    out = capfd.readouterr().out
    assert f"damaged shard {path}: length checksum fails at record 4" in out
    assert "4 images" in out


def test_a_truncated_shard_counts_its_lost_bytes(shard, tmp_path):
    prefix, path = _copy(shard, tmp_path)
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[:-100])
    offset, _ = _records(shard)[N - 1]
    split = read_eval_split(prefix, 24, 4, verbose=False)
    assert split.num_images == N - 1
    assert split.drop_reasons["shard bytes lost"] == len(data) - 100 - offset


def _unusable(tmp_path: Path) -> str:
    return _write(str(tmp_path / "unusable"), image=b"this is not an image")


def test_no_usable_record_fails_evaluation_and_inspect(tmp_path, capsys):
    path = _unusable(tmp_path)
    with pytest.raises(NoUsableRecordsError, match="no usable record") as caught:
        read_eval_split(path, 24, 4, verbose=False)
    assert "read 10 records; dropped 10: 10 undecodable image" in str(caught.value)
    assert caught.value.counts["undecodable image"] == N
    assert f"malign data inspect --strict {path}" in str(caught.value)
    # A language filter that leaves nothing is the same error, with its own count.
    with pytest.raises(NoUsableRecordsError, match="10 no caption in languages"):
        read_eval_split(_write(str(tmp_path / "english")), 24, 4, languages=["de"],
                        verbose=False)
    assert main(["data", "inspect", path, "--strict"]) == 1
    assert "no usable record" in capsys.readouterr().out


TRAINING_SCRIPT = textwrap.dedent("""
    import sys
    import malign
    from malign.data import make_dataset
    from malign.data.pipeline import NoUsableRecordsError
    tok = malign.text.SentencePieceTokenizer(malign.text.test_vocab_path(), 16)
    ds = make_dataset(sys.argv[1], tok, 24, 2, seed=0)  # training: repeats forever
    try:
        next(iter(ds))
    except Exception as error:
        print("ERROR", NoUsableRecordsError.from_op_error(error))
        sys.exit(3)
    print("got a batch")
""")


def test_no_usable_record_ends_training_with_the_counts(tmp_path):
    """Training over records none of which decodes raises after one pass; run in a child
    process with a timeout, so that a regression (waiting forever) fails instead of hanging."""
    path = _unusable(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run([sys.executable, "-c", TRAINING_SCRIPT, path], env=env,
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 3, result.stdout + result.stderr[-2000:]
    assert result.stdout.startswith(f"ERROR malign.data: no usable record in a whole pass over "
                                    f"{path} (read 10 records; dropped 10: 10 undecodable image")
    assert result.stdout.rstrip().endswith(f"`malign data inspect --strict {path}`.")


def test_search_reads_past_a_corrupt_record(shard, tmp_path):
    from malign.search.sources import read_record_images

    prefix, path = _copy(shard, tmp_path)
    offset, length = _records(path)[2]
    _flip(path, offset + 12 + length // 2)
    notes: list[str] = []
    ids = [i for chunk in read_record_images(prefix, chunk=4, notes=notes) for i, _ in chunk]
    assert ids == [f"img{i}" for i in range(N) if i != 2]
    assert notes == [f"record 2 of shard {path} (byte {offset}) is corrupt (its checksum "
                     "fails): skipped"]


def test_an_unscanned_remote_shard_counts_what_it_cannot_read(shard, tmp_path):
    """A ``scheme://`` shard is not scanned (a read per header would be slow): it is read
    whole, and the bytes after a damaged record are counted as lost, not skipped silently."""
    _, path = _copy(shard, tmp_path)
    offset, length = _records(path)[2]
    _flip(path, offset + 12 + length // 2)
    url = "file://" + path
    split = read_eval_split(url, 24, 4, verbose=False)
    assert split.image_ids == ["img0", "img1"]
    lost = os.path.getsize(path) - offset
    assert split.drop_reasons["shard bytes lost"] == lost
    assert split.damage == [
        f"shard {url} (byte {offset}): record framing lost, {lost} bytes unreadable"]


def test_training_without_a_seed_passes_many_epochs(shard, tokenizer):
    """The end-of-pass check never fires on a set with usable records, also with the
    nondeterministic element order of an unseeded pipeline."""
    counter = DropCounter()
    ds = make_dataset(shard, tokenizer, 24, 4, counter=counter, shuffle_buffer=4)
    assert len(list(ds.take(15))) == 15  # 60 examples: six passes over 10 records
    assert counter.dropped == 0 and counter.as_dict()["records read"] >= 60


def test_caption_files_skip_a_corrupt_record_and_say_so(shard, tmp_path, capsys):
    from malign.data.captions import write_caption_files

    prefix, path = _copy(shard, tmp_path)
    offset, length = _records(path)[2]
    _flip(path, offset + 12 + length // 2)
    written = write_caption_files(prefix, tmp_path / "corpus")
    lines = Path(written["en"][0]).read_text().splitlines()
    assert lines == [f"item {i}" for i in range(N) if i != 2]
    assert (f"shard {path} at byte {offset}: record 2 is corrupt (its checksum fails); skipped"
            in capsys.readouterr().err)


def test_corrupt_records_in_several_shards_and_input_pipelines(numbered_records, tokenizer,
                                                              tmp_path):
    """24 records in 4 shards read by two input pipelines; one bad record in each of two
    shards: 22 captions in all, each pipeline counts its own."""
    import glob

    import tensorflow as tf

    files = sorted(glob.glob(numbered_records[4] + "-*"))
    copies = []
    for path in files:
        shutil.copy(path, tmp_path)
        copies.append(str(tmp_path / Path(path).name))
    for path, record in ((copies[0], 0), (copies[3], 5)):
        offset, length = _records(path)[record]
        _flip(path, offset + 12 + length // 2)
    pattern = str(tmp_path / "items4-*")
    seen, crc = [], 0
    for pipeline in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline,
                                             num_replicas_in_sync=2)
        counter = DropCounter()
        ds = make_dataset(pattern, tokenizer, 24, 2, input_context=context, repeat=False,
                          languages=["en"], seed=0, counter=counter)
        seen += _caption_numbers(tokenizer, ds)
        crc += counter.as_dict()["corrupt record (CRC)"]
    # Shard k holds records k, k + 4, ...: the bad ones are 0 (shard 0) and 23 (shard 3).
    assert sorted(seen) == [i for i in range(24) if i not in (0, 23)]
    assert crc == 2
