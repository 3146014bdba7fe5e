"""The ``malign data`` commands, driven through the real CLI entry point."""

from __future__ import annotations

import gzip
import json

import pytest
import tensorflow as tf
from image_bytes import jpeg_bytes, png_bytes

import malign.text
from malign.cli import main
from malign.data.commands import _pixels
from malign.data.schema import shard_pattern


def _count(prefix) -> int:
    return sum(1 for _ in tf.data.TFRecordDataset(tf.io.gfile.glob(shard_pattern(str(prefix)))))


def test_synthetic_and_inspect(tmp_path, capsys):
    prefix = tmp_path / "syn"
    assert main(["data", "synthetic", "--out", str(prefix), "--n", "10", "--image-size", "32",
                 "--shards", "2", "--seed", "3"]) == 0
    assert _count(prefix) == 10
    out = capsys.readouterr()
    assert "wrote 10 records (40 captions: cs 10, de 10, en 10, fr 10)" in out.out
    assert main(["data", "inspect", str(prefix), "--languages", "de", "--examples", "2"]) == 0
    printed = capsys.readouterr().out
    assert "10 images, 10 captions (de 10); dropped 0 records" in printed
    assert "Hintergrund" in printed


def test_build(tmp_path, capsys):
    images = tmp_path / "imgs"
    images.mkdir()
    (images / "a.jpg").write_bytes(jpeg_bytes(seed=1))
    (images / "bad.jpg").write_bytes(b"nope")
    rows = tmp_path / "rows.jsonl"
    rows.write_text("\n".join(json.dumps(r) for r in [
        {"image": "a.jpg", "caption": "a dog", "lang": "en"},
        {"image": "a.jpg", "caption": "ein Hund"},
        {"image": "bad.jpg", "caption": "x", "lang": "en"},
        {"image": "gone.jpg", "caption": "x", "lang": "en"},
        {"image": "a.jpg", "caption": "", "lang": "fr"},
    ]) + "\n")
    assert main(["data", "build", "--input", str(rows), "--images", str(images), "--lang", "de",
                 "--out", str(tmp_path / "out"), "--shards", "1"]) == 0
    out = capsys.readouterr().out
    assert ("skipped 3 rows: 1 missing image, 1 corrupt image, 1 empty caption, "
            "0 invalid utf-8") in out
    assert _count(tmp_path / "out") == 1
    assert main(["data", "inspect", str(tmp_path / "out"), "--strict"]) == 0


def test_multi30k(multi30k_mini, tmp_path, capsys):
    prefix = tmp_path / "m30k"
    assert main(["data", "multi30k", "--root", str(multi30k_mini), "--images",
                 str(multi30k_mini / "images"), "--split", "val", "--languages", "en,de",
                 "--out", str(prefix), "--shards", "2", "--vocab",
                 str(malign.text.test_vocab_path())]) == 0
    out = capsys.readouterr().out
    assert "wrote 242 records (484 captions: de 242, en 242)" in out
    assert _count(prefix) == 242


def test_multi30k_mismatch_is_an_error(tmp_path, capsys):
    data = tmp_path / "data" / "task1"
    (data / "image_splits").mkdir(parents=True)
    (data / "raw").mkdir()
    (data / "image_splits" / "val.txt").write_text("1.jpg\n2.jpg\n")
    with gzip.open(data / "raw" / "val.en.gz", "wt") as handle:
        handle.write("only one line\n")
    code = main(["data", "multi30k", "--root", str(tmp_path), "--images", str(tmp_path),
                 "--split", "val", "--out", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert "val.en.gz has 1 lines but the split list" in err and "val.txt has 2 images" in err


def test_build_with_a_pixel_limit(tmp_path, capsys):
    images = tmp_path / "imgs"
    images.mkdir()
    (images / "photo.jpg").write_bytes(jpeg_bytes(40, 56, seed=2))  # 2240 pixels
    (images / "plan.png").write_bytes(png_bytes(40, 56))
    rows = tmp_path / "rows.jsonl"
    rows.write_text("\n".join(json.dumps({"image": name, "caption": "x", "lang": "en"})
                              for name in ("photo.jpg", "plan.png")) + "\n")
    assert main(["data", "build", "--input", str(rows), "--images", str(images),
                 "--out", str(tmp_path / "out"), "--max-image-pixels", "1000"]) == 0
    out = capsys.readouterr().out
    assert "skipped 1 rows: 0 missing image, 0 corrupt image, 0 empty caption, " \
           "0 invalid utf-8, 1 image too large" in out
    assert "images over 1,000 pixels, stored downsized: 1" in out
    assert _count(tmp_path / "out") == 1
    assert [_pixels(v) for v in ("64M", "67108864", "64e6", "1_000", "2,000")] == [
        67108864, 67108864, 64_000_000, 1000, 2000]
    for bad in ("0", "-5", "lots", "1.5"):
        with pytest.raises(SystemExit):
            main(["data", "build", "--input", str(rows), "--images", str(images),
                  "--out", str(tmp_path / "x"), "--max-image-pixels", bad])
    assert "--max-image-pixels" in capsys.readouterr().err
