"""Multi30K in its own layout: one record per image, all languages, captions = source lines."""

from __future__ import annotations

import gzip

import pytest
from test_records_writer import read_records

from malign.data.multi30k import available_languages, multi30k_rows, write_multi30k


def _lines(path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return handle.read().splitlines()


@pytest.fixture(scope="module")
def val_records(multi30k_mini, tmp_path_factory):
    prefix = str(tmp_path_factory.mktemp("m30k") / "val")
    stats = write_multi30k(multi30k_mini, multi30k_mini / "images", "val", prefix, shards=3,
                           verbose=False)
    return prefix, stats


def test_one_record_per_image_with_all_languages(multi30k_mini, val_records):
    prefix, stats = val_records
    split = (multi30k_mini / "data" / "task1" / "image_splits" / "val.txt").read_text()
    names = split.split()
    assert stats.records == len(names) == 242
    assert stats.skipped_rows == 0 and stats.captions == 4 * 242
    records = {r["id"]: r for r in read_records(prefix)}
    assert set(records) == {n.rsplit(".", 1)[0] for n in names}
    source = {lang: _lines(multi30k_mini / "data" / "task1" / "raw" / f"val.{lang}.gz")
              for lang in ("en", "de", "fr", "cs")}
    for i, name in enumerate(names):
        record = records[name.rsplit(".", 1)[0]]
        assert record["langs"] == ["en", "de", "fr", "cs"]
        assert record["captions"] == [source[lang][i].strip() for lang in record["langs"]]
        assert record["format"] == "jpeg"
    first = names[0]
    assert records[first.rsplit(".", 1)[0]]["image"] == (multi30k_mini / "images" / first
                                                          ).read_bytes()


def test_task2_and_language_choice(multi30k_mini):
    assert available_languages(multi30k_mini, "val") == ["en", "de", "fr", "cs"]
    rows = multi30k_rows(multi30k_mini, "val", captions="task2")
    assert len(rows) == 242 * 10
    first = [r for r in rows if r.image == rows[0].image]
    assert [r.lang for r in first] == ["en"] * 5 + ["de"] * 5
    assert first[0].caption.decode() == _lines(
        multi30k_mini / "data" / "task2" / "raw" / "val.1.en.gz")[0]
    both = multi30k_rows(multi30k_mini, "val", captions="all")
    assert len(both) == 242 * 14
    only = multi30k_rows(multi30k_mini, "val", languages=["de", "cs"])
    assert {r.lang for r in only} == {"de", "cs"} and len(only) == 484
    with pytest.raises(ValueError, match="only en and de"):
        multi30k_rows(multi30k_mini, "val", languages=["fr"], captions="task2")
    with pytest.raises(FileNotFoundError, match="val.ja.gz"):
        multi30k_rows(multi30k_mini, "val", languages=["ja"])


@pytest.fixture()
def fake_layout(tmp_path):
    """A 3-image Multi30K layout with plain text and gzip caption files."""
    data = tmp_path / "m30k" / "data" / "task1"
    (data / "image_splits").mkdir(parents=True)
    (data / "raw").mkdir()
    (data / "image_splits" / "test_2016_flickr.txt").write_text("1.jpg\n2.jpg\n3.jpg\n")
    for lang, lines in {"en": ["one", "two", "three"], "de": ["eins", "", "drei"]}.items():
        with gzip.open(data / "raw" / f"test_2016_flickr.{lang}.gz", "wt") as handle:
            handle.write("\n".join(lines) + "\n")
    return tmp_path / "m30k"


def test_row_count_mismatch_names_the_files(fake_layout):
    raw = fake_layout / "data" / "task1" / "raw"
    with gzip.open(raw / "test_2016_flickr.fr.gz", "wt") as handle:
        handle.write("un\ndeux\n")
    with pytest.raises(ValueError) as error:
        multi30k_rows(fake_layout, "test_2016_flickr")
    message = str(error.value)
    assert "test_2016_flickr.fr.gz has 2 lines" in message
    assert "image_splits/test_2016_flickr.txt has 3 images" in message


def test_bad_rows_in_multi30k_are_skipped(fake_layout, tmp_path):
    from image_bytes import jpeg_bytes

    images = tmp_path / "imgs"
    images.mkdir()
    (images / "1.jpg").write_bytes(jpeg_bytes(seed=1))
    (images / "2.jpg").write_bytes(jpeg_bytes(seed=2))  # 3.jpg is missing
    stats = write_multi30k(fake_layout / "data", images, "test_2016_flickr", tmp_path / "out",
                           verbose=False)
    assert stats.records == 2
    assert stats.skipped["missing image"] == 2 and stats.skipped["empty caption"] == 1
    records = read_records(str(tmp_path / "out"))
    assert [(r["id"], r["captions"]) for r in records] == [("1", ["one", "eins"]),
                                                           ("2", ["two"])]


def test_missing_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="no Multi30K layout"):
        multi30k_rows(tmp_path, "val")
