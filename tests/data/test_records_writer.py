"""The record writer: rows -> shards, bad rows skipped and counted, never silently."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import tensorflow as tf
from image_bytes import corrupt_body_jpeg, jpeg_bytes, png_bytes

from malign.data import schema
from malign.data.writer import (
    CaptionRow,
    RecordWriter,
    clean_caption,
    load_image,
    read_rows,
    write_rows,
)


def read_records(prefix: str) -> list[dict]:
    files = sorted(tf.io.gfile.glob(schema.shard_pattern(prefix)))
    out = []
    for raw in tf.data.TFRecordDataset(files):
        ex = schema.parse_record(raw)
        out.append({
            "id": ex[schema.IMAGE_ID].numpy().decode(),
            "format": ex[schema.IMAGE_FORMAT].numpy().decode(),
            "image": ex[schema.IMAGE_ENCODED].numpy(),
            "captions": [c.decode("utf-8") for c in ex[schema.CAPTION_TEXT].numpy()],
            "langs": [x.decode() for x in ex[schema.CAPTION_LANG].numpy()],
        })
    return out


@pytest.fixture()
def images(tmp_path):
    from PIL import Image

    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    (root / "a.jpg").write_bytes(jpeg_bytes(seed=1))
    (root / "sub" / "b.png").write_bytes(png_bytes(seed=2))
    (root / "random.jpg").write_bytes(bytes(range(256)) * 4)
    good = jpeg_bytes(seed=3)
    (root / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "body.jpg").write_bytes(corrupt_body_jpeg(4))
    gif = io.BytesIO()
    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(gif, format="GIF")
    (root / "c.gif").write_bytes(gif.getvalue())
    return root


def test_write_rows_skips_and_counts(tmp_path, images, capsys):
    long_caption = " ".join(["word"] * 200)
    rows = [
        CaptionRow("a.jpg", "a dog", "en"),
        CaptionRow("a.jpg", b"ein Hund", "de"),
        CaptionRow("a.jpg", "   ", "fr"),  # empty caption
        CaptionRow("a.jpg", b"caf\xe9", "fr"),  # invalid UTF-8
        CaptionRow("a.jpg", long_caption, "en"),  # kept, counted as long
        CaptionRow("sub/b.png", "two cats", "en", image_id="cats"),
        CaptionRow("missing.jpg", "x", "en"),
        CaptionRow("missing.jpg", "y", "de"),
        CaptionRow("random.jpg", "x", "en"),
        CaptionRow("truncated.jpg", "x", "en"),
        CaptionRow("body.jpg", "x", "en"),
        CaptionRow("c.gif", "a grey square", "en"),  # re-encoded as JPEG
        CaptionRow("sub/b.png", "zwei Katzen\nim Gras", "de"),
        CaptionRow("only_bad.jpg", "", "en"),  # missing image wins over empty caption
    ]
    stats = write_rows(rows, tmp_path / "out" / "recs", images_dir=images, shards=2,
                       sequence_length=64, workers=2)
    assert stats.records == 3
    assert stats.captions == 6
    assert stats.captions_per_lang == {"en": 4, "de": 2}
    assert stats.skipped == {"missing image": 3, "corrupt image": 3, "empty caption": 1,
                             "invalid utf-8": 1, "malformed row": 0, "image too large": 0}
    assert stats.skipped_rows == 8
    assert stats.long_captions == 1
    assert stats.reencoded_images == 1
    printed = capsys.readouterr()
    assert ("skipped 8 rows: 3 missing image, 3 corrupt image, 1 empty caption, "
            "1 invalid utf-8") in printed.out
    assert "long captions (will be truncated): 1" in printed.out
    assert "writing records: 8/8 images" in printed.err  # progress

    records = {r["id"]: r for r in read_records(str(tmp_path / "out" / "recs"))}
    assert set(records) == {"a", "cats", "c"}
    assert records["a"]["captions"] == ["a dog", "ein Hund", long_caption]
    assert records["a"]["langs"] == ["en", "de", "en"]
    assert records["a"]["image"] == (images / "a.jpg").read_bytes()  # stored as is
    assert records["cats"]["captions"] == ["two cats", "zwei Katzen im Gras"]
    assert records["cats"]["format"] == "png"
    assert records["c"]["format"] == "jpeg" and records["c"]["image"][:3] == b"\xff\xd8\xff"
    summary = json.loads((tmp_path / "out" / "recs.summary.json").read_text())
    assert summary["records"] == 3 and summary["skipped"]["corrupt image"] == 3
    assert len(tf.io.gfile.glob(str(tmp_path / "out" / "recs-*-of-00002.tfrecord"))) == 2


def test_read_rows_jsonl_and_csv(tmp_path, images):
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_bytes(
        b'{"image": "a.jpg", "caption": "a dog", "lang": "en"}\n'
        b'{"image": "a.jpg", "caption": ["un chien", "un chiot"], "lang": "fr"}\n'
        b'{"image": "sub/b.png", "text": "caf\xe9", "language": "fr"}\n'  # invalid UTF-8
        b'this is not json\n'
        b'{"caption": "no image", "lang": "en"}\n'
        b'\n'
        b'{"image": "sub/b.png", "caption": "two cats"}\n'  # default language
    )
    csv_path = tmp_path / "rows.csv"
    csv_path.write_text('image,caption,lang\nsub/b.png,"zwei Katzen, schlafend",de\n'
                        'c.gif,,en\n', encoding="utf-8")
    from malign.data.writer import WriteStats

    stats = WriteStats()
    rows = list(read_rows(jsonl, default_lang="en", stats=stats))
    rows += list(read_rows(csv_path, stats=stats))
    assert stats.skipped["malformed row"] == 2
    assert [(r.image, r.lang) for r in rows] == [
        ("a.jpg", "en"), ("a.jpg", "fr"), ("a.jpg", "fr"), ("sub/b.png", "fr"),
        ("sub/b.png", "en"), ("sub/b.png", "de"), ("c.gif", "en")]
    write_rows(rows, tmp_path / "recs", images_dir=images, stats=stats, verbose=False)
    assert stats.records == 2
    assert stats.skipped["invalid utf-8"] == 1 and stats.skipped["empty caption"] == 1
    assert stats.skipped["malformed row"] == 2
    assert "2 malformed row" in stats.skipped_line()


def test_clean_caption():
    assert clean_caption(" a\tb\r\nc ") == ("a b c", None)
    assert clean_caption("") == (None, "empty caption")
    assert clean_caption(None) == (None, "empty caption")
    assert clean_caption(b"\xc3(") == (None, "invalid utf-8")
    assert clean_caption("bad \udcff surrogate") == (None, "invalid utf-8")
    assert clean_caption("Привет 你好") == ("Привет 你好", None)


def test_load_image_downscales(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(png_bytes(120, 200))
    data, fmt, reencoded, over_limit = load_image(str(path), max_image_side=60)
    assert fmt == "jpeg" and reencoded and not over_limit
    assert tf.io.decode_image(data).shape.as_list() == [60, 100, 3]
    data, fmt, reencoded, over_limit = load_image(str(path), max_image_side=200)
    assert (fmt, reencoded, over_limit) == ("png", False, False) and data == path.read_bytes()


def test_record_writer_round_robin(tmp_path):
    from malign.data.schema import ImageTextExample

    with RecordWriter(tmp_path / "rr", 3) as writer:
        for i in range(7):
            writer.write(ImageTextExample(str(i), b"x", "png", ["c"], ["en"]))
    counts = [sum(1 for _ in tf.data.TFRecordDataset(p)) for p in writer.paths]
    assert counts == [3, 2, 2]
    with pytest.raises(ValueError, match="num_shards"):
        RecordWriter(tmp_path / "none", 0)
    with pytest.raises(ValueError, match="2 captions but 1 languages"):
        ImageTextExample("x", b"", "png", ["a", "b"], ["en"])
