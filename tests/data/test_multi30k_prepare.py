"""prepare_records: a Multi30K root's training and evaluation records, written once."""

from __future__ import annotations

import gzip
import json
import os

import pytest
from image_bytes import jpeg_bytes
from test_records_writer import read_records

from malign.data import multi30k
from malign.data.multi30k import default_shards, prepare_records
from malign.data.preprocess import resize_size

LANGS = ("en", "de", "fr", "cs")


def _gz(path, lines) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("".join(f"{line}\n" for line in lines))


def make_layout(root, splits: dict[str, int], task2: bool = True, images: bool = True):
    """A Multi30K layout under ``root``: per split, n images ``{split}{i}.jpg`` (40x56 px),
    task-1 captions ``"{lang} {split} {i}"`` and task-2 captions ``"{lang}{k} {split} {i}"``."""
    data = root / "data"
    for split, n in splits.items():
        names = [f"{split}{i}.jpg" for i in range(n)]
        (data / "task1" / "image_splits").mkdir(parents=True, exist_ok=True)
        (data / "task1" / "image_splits" / f"{split}.txt").write_text("\n".join(names) + "\n")
        for lang in LANGS:
            _gz(data / "task1" / "raw" / f"{split}.{lang}.gz",
                [f"{lang} {split} {i}" for i in range(n)])
        if task2:
            (data / "task2" / "image_splits").mkdir(parents=True, exist_ok=True)
            (data / "task2" / "image_splits" / f"{split}_images.txt").write_text(
                "\n".join(names) + "\n")
            for k in range(1, 6):
                for lang in ("en", "de"):
                    _gz(data / "task2" / "raw" / f"{split}.{k}.{lang}.gz",
                        [f"{lang}{k} {split} {i}" for i in range(n)])
        if images:
            (root / "images").mkdir(exist_ok=True)
            for i, name in enumerate(names):
                (root / "images" / name).write_bytes(jpeg_bytes(40, 56, seed=i))
    return root


@pytest.fixture()
def layout(tmp_path):
    return make_layout(tmp_path / "m30k", {"train": 5, "val": 3})


def _shards(pattern) -> list[str]:
    import glob

    return sorted(glob.glob(pattern))


def test_train_gets_all_captions_eval_splits_task1(layout, tmp_path):
    out = tmp_path / "records"
    patterns = prepare_records(layout, out, image_size=16, verbose=False)
    assert patterns == {"train": f"{out}/train-*-of-*.tfrecord",
                        "val": f"{out}/val-*-of-*.tfrecord"}
    train = read_records(str(out / "train"))
    assert [r["id"] for r in train] == [f"train{i}" for i in range(5)]
    assert train[2]["langs"] == list(LANGS) + ["en"] * 5 + ["de"] * 5
    assert train[2]["captions"] == ([f"{lang} train 2" for lang in LANGS]
                                    + [f"en{k} train 2" for k in range(1, 6)]
                                    + [f"de{k} train 2" for k in range(1, 6)])
    val = read_records(str(out / "val"))
    assert [(r["id"], r["langs"]) for r in val] == [(f"val{i}", list(LANGS)) for i in range(3)]
    # Stored with the shorter side at the side the 16-px crops resize to (19), aspect kept.
    import tensorflow as tf

    shape = tf.io.decode_jpeg(val[0]["image"]).shape.as_list()
    assert shape == [resize_size(16), round(56 * resize_size(16) / 40), 3]
    for split in ("train", "val"):
        marker = json.loads((out / f"{split}.done").read_text())
        assert marker["captions"] == ("all" if split == "train" else "task1")
        assert marker["max_image_side"] == resize_size(16) and marker["shards"] == 1


def test_same_settings_are_not_written_again(layout, tmp_path, monkeypatch):
    out = tmp_path / "records"
    first = prepare_records(layout, out, image_size=16, verbose=False)

    def refuse(*args, **kwargs):
        raise AssertionError("records written again with unchanged settings")

    monkeypatch.setattr(multi30k, "write_rows", refuse)
    assert prepare_records(layout, out, image_size=16, verbose=False) == first


def test_changed_settings_or_sources_rewrite_that_split_only(layout, tmp_path):
    out = tmp_path / "records"
    prepare_records(layout, out, image_size=16, shards=2, verbose=False)
    assert len(_shards(f"{out}/train-*-of-*.tfrecord")) == 2
    val_file = _shards(f"{out}/val-*-of-*.tfrecord")[0]
    val_mtime = os.stat(val_file).st_mtime_ns

    # Another caption set for train: train is rewritten, val (same settings) is kept.
    prepare_records(layout, out, captions="task1", image_size=16, shards=2, verbose=False)
    assert all(r["langs"] == list(LANGS) for r in read_records(str(out / "train")))
    assert os.stat(val_file).st_mtime_ns == val_mtime

    # Fewer shards: the stale shard files of the old set are removed.
    prepare_records(layout, out, captions="task1", image_size=16, shards=1, verbose=False)
    assert len(_shards(f"{out}/train-*-of-*.tfrecord")) == 1
    assert len(read_records(str(out / "train"))) == 5

    # Another image size.
    prepare_records(layout, out, captions="task1", image_size=32, shards=1, verbose=False)
    import tensorflow as tf

    image = read_records(str(out / "val"))[0]["image"]
    assert tf.io.decode_jpeg(image).shape[0] == resize_size(32) == 38
    # A changed caption file (the user fixed a translation) is read again.
    _gz(layout / "data" / "task1" / "raw" / "val.fr.gz", ["un", "deux", "trois, corrigé"])
    prepare_records(layout, out, captions="task1", image_size=32, shards=1, verbose=False)
    assert read_records(str(out / "val"))[2]["captions"][2] == "trois, corrigé"


def test_an_interrupted_write_is_redone(layout, tmp_path):
    out = tmp_path / "records"
    prepare_records(layout, out, splits=["val"], verbose=False)
    (out / "val.done").unlink()  # as if killed between the shards and the marker
    shard = _shards(f"{out}/val-*-of-*.tfrecord")[0]
    with open(shard, "r+b") as handle:
        handle.truncate(10)
    prepare_records(layout, out, splits=["val"], verbose=False)
    assert len(read_records(str(out / "val"))) == 3 and (out / "val.done").exists()


def test_bad_arguments_are_refused_before_anything_is_written(layout, tmp_path):
    out = tmp_path / "records"
    with pytest.raises(FileNotFoundError, match="test_2016_flickr.txt"):
        prepare_records(layout, out, splits=("train", "test_2016_flickr"), verbose=False)
    assert not out.exists()
    with pytest.raises(ValueError, match="captions must be one of"):
        prepare_records(layout, out, captions="task3", verbose=False)
    with pytest.raises(ValueError, match="eval_captions must be one of"):
        prepare_records(layout, out, eval_captions="everything", verbose=False)
    with pytest.raises(ValueError, match="image_size must be an integer >= 16"):
        prepare_records(layout, out, image_size=8, verbose=False)
    with pytest.raises(ValueError, match="shards must be a positive integer"):
        prepare_records(layout, out, shards=0, verbose=False)
    with pytest.raises(ValueError, match="not a path"):
        prepare_records(layout, out, splits=["../train"], verbose=False)
    with pytest.raises(ValueError, match="splits must differ"):
        prepare_records(layout, out, splits=["val", "val"], verbose=False)
    with pytest.raises(FileNotFoundError, match="images directory not found"):
        prepare_records(layout, out, images=tmp_path / "nowhere", verbose=False)
    assert not out.exists()


def test_missing_images_directory_and_images(tmp_path):
    root = make_layout(tmp_path / "m30k", {"val": 2}, images=False)
    with pytest.raises(FileNotFoundError, match="pass the directory of the Flickr30K images"):
        prepare_records(root, tmp_path / "out", splits=["val"], verbose=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"val: no record written: none of its 2 images.*"
                                         r"8 missing image"):
        prepare_records(root, tmp_path / "out", splits=["val"], images=tmp_path / "empty",
                        verbose=False)
    assert not (tmp_path / "out" / "val.done").exists()


def test_task2_captions_are_required_for_all(tmp_path):
    root = make_layout(tmp_path / "m30k", {"train": 2}, task2=False)
    with pytest.raises(FileNotFoundError, match="train_images.txt"):
        prepare_records(root, tmp_path / "out", splits=["train"], verbose=False)
    patterns = prepare_records(root, tmp_path / "out", splits=["train"], captions="task1",
                               verbose=False)
    assert len(read_records(patterns["train"].split("-*")[0])) == 2


def test_default_shards():
    assert [default_shards(n) for n in (1, 242, 1499, 1500, 4000, 29000, 10**6)] == \
        [1, 1, 1, 2, 4, 16, 16]


def test_multi30k_mini_val(multi30k_mini, tmp_path):
    patterns = prepare_records(multi30k_mini, tmp_path / "r", splits=["val"], image_size=64,
                               verbose=False)
    records = read_records(patterns["val"].split("-*")[0])
    assert len(records) == 242
    assert all(r["langs"] == list(LANGS) for r in records)
    summary = json.loads((tmp_path / "r" / "val.summary.json").read_text())
    assert summary["captions_per_lang"] == {lang: 242 for lang in LANGS}


def test_tokenizer_on_the_captions_once(multi30k_mini, tmp_path, monkeypatch):
    import sentencepiece as spm

    from malign.data.multi30k import prepare_tokenizer

    model = prepare_tokenizer(multi30k_mini, tmp_path / "r", 600, split="val", verbose=False)
    assert model == tmp_path / "r" / "tokenizer.model"
    processor = spm.SentencePieceProcessor(model_file=str(model))
    assert processor.get_piece_size() == 600
    assert [processor.id_to_piece(i) for i in range(5)] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]",
                                                           "[MASK]"]
    stats = json.loads((tmp_path / "r" / "tokenizer.stats.json").read_text())
    text = json.dumps(stats)
    assert all(f"val.{lang}.gz" in text for lang in LANGS)  # task 1, all four languages
    assert "val.5.de.gz" in text  # and task 2
    marker = json.loads((tmp_path / "r" / "tokenizer.done").read_text())
    assert marker["vocab_size"] == 600 and marker["captions"] == "all"

    import malign.text.vocabulary as vocabulary

    def refuse(*args, **kwargs):
        raise AssertionError("trained again with unchanged settings")

    monkeypatch.setattr(vocabulary, "train_vocabulary", refuse)
    assert prepare_tokenizer(multi30k_mini, tmp_path / "r", 600, split="val",
                             verbose=False) == model
    with pytest.raises(AssertionError, match="trained again"):  # another size trains again
        prepare_tokenizer(multi30k_mini, tmp_path / "r", 500, split="val", verbose=False)
    with pytest.raises(ValueError, match="captions must be one of"):
        prepare_tokenizer(multi30k_mini, tmp_path / "r", 600, captions="x", verbose=False)
    with pytest.raises(FileNotFoundError, match="no Multi30K caption files for split 'test'"):
        prepare_tokenizer(multi30k_mini, tmp_path / "r", 600, split="test", verbose=False)


def test_command(layout, tmp_path, capsys):
    from malign.cli import main

    out = tmp_path / "records"
    assert main(["data", "prepare-multi30k", "--root", str(layout), "--out", str(out),
                 "--image-size", "16", "--quiet"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed == [f"train: {out}/train-*-of-*.tfrecord", f"val: {out}/val-*-of-*.tfrecord"]
    assert len(read_records(str(out / "train"))[0]["captions"]) == 14
    assert main(["data", "prepare-multi30k", "--root", str(layout), "--out", str(out),
                 "--splits", "val,test_2016_flickr", "--quiet"]) == 2
    assert "test_2016_flickr.txt" in capsys.readouterr().err


def test_languages_keep_their_order(layout, tmp_path):
    patterns = prepare_records(layout, tmp_path / "r", languages=["de", "en", "de"],
                               verbose=False)
    train = read_records(patterns["train"].split("-*")[0])
    assert train[0]["langs"] == ["de", "en"] + ["de"] * 5 + ["en"] * 5
    val = read_records(patterns["val"].split("-*")[0])
    assert val[0]["langs"] == ["de", "en"]
