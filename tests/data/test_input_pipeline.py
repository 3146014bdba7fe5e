"""make_dataset / read_eval_split: static shapes, caption choice, sharding, bad records."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from image_bytes import corrupt_body_jpeg, jpeg_bytes, png_bytes

from malign import distributed
from malign.data import DropCounter, make_dataset, read_eval_split
from malign.data.schema import ImageTextExample
from malign.data.writer import RecordWriter


def _captions(tokenizer, batch) -> list[str]:
    return [t.decode("utf-8") for t in tokenizer.detokenize(batch["token_ids"]).numpy()]


def test_training_shapes_are_static(synthetic_records, tokenizer):
    ds = make_dataset(synthetic_records, tokenizer, image_size=32, global_batch_size=8, seed=0)
    spec = ds.element_spec
    assert set(spec) == {"image", "token_ids", "padding_mask"}
    assert spec["image"].shape.as_list() == [8, 32, 32, 3] and spec["image"].dtype == tf.float32
    assert spec["token_ids"].shape.as_list() == [8, 16]
    assert spec["token_ids"].dtype == tf.int32 and spec["padding_mask"].dtype == tf.int32
    # 48 records, batch 8: 10 batches means it repeats.
    batches = list(ds.take(10).as_numpy_iterator())
    assert len(batches) == 10
    for batch in batches:
        assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
        assert (batch["token_ids"][:, 0] == 2).all()
        assert set(np.unique(batch["padding_mask"])) <= {0, 1}
        assert (batch["padding_mask"].sum(1) >= 3).all()  # [CLS] + a piece + [SEP]


def test_seed_makes_it_reproducible(synthetic_records, tokenizer):
    def first(seed):
        ds = make_dataset(synthetic_records, tokenizer, 32, 8, seed=seed)
        return next(iter(ds))

    a, b, c = first(3), first(3), first(4)
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["token_ids"], b["token_ids"])
    assert not np.array_equal(a["image"], c["image"])


def test_one_caption_per_image_per_epoch(numbered_records, tokenizer):
    ds = make_dataset(numbered_records[4], tokenizer, 24, 4, training=True, repeat=False,
                      seed=1, shuffle_buffer=8)
    seen = [c for batch in ds.as_numpy_iterator() for c in _captions(tokenizer, batch)]
    assert len(seen) == 24  # every record once, 24 % 4 == 0 so nothing dropped
    numbers = sorted(int(c.split()[1]) for c in seen)
    assert numbers == list(range(24))
    assert {c.split()[0] for c in seen} == {"item", "Element"}  # languages drawn at random
    # With a language filter only that language is drawn.
    de = make_dataset(numbered_records[4], tokenizer, 24, 4, repeat=False, languages=["de"])
    assert all(c.startswith("Element") for b in de.as_numpy_iterator()
               for c in _captions(tokenizer, b))


def test_drop_remainder_only_in_training(numbered_records, tokenizer):
    train = make_dataset(numbered_records[1], tokenizer, 24, 5, repeat=False, seed=0)
    assert sum(1 for _ in train) == 4  # 24 // 5, remainder dropped
    evaluation = make_dataset(numbered_records[1], tokenizer, 24, 5, training=False)
    sizes = [b["image"].shape[0] for b in evaluation]
    assert sum(sizes) == 48 and sizes[-1] == 3  # every (image, caption) pair, last partial
    assert evaluation.element_spec["image"].shape.as_list() == [None, 24, 24, 3]


def test_evaluation_pairs_in_record_order(numbered_records, tokenizer):
    ds = make_dataset(numbered_records[1], tokenizer, 24, 6, training=False)
    captions = [c for b in ds.as_numpy_iterator() for c in _captions(tokenizer, b)]
    expected = [c for i in range(24) for c in (f"item {i}", f"Element {i}")]
    assert captions == expected
    # The same image is paired with each of its captions.
    batch = next(iter(ds))
    np.testing.assert_array_equal(batch["image"][0], batch["image"][1])


@pytest.mark.parametrize("shards", [4, 1])
def test_input_context_splits_the_data(numbered_records, tokenizer, shards):
    """Files (4 shards) or records (1 shard) are split between two input pipelines."""
    seen = []
    for pipeline in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline,
                                             num_replicas_in_sync=2)
        ds = make_dataset(numbered_records[shards], tokenizer, 24, 8, training=True,
                          input_context=context, repeat=False, languages=["en"], seed=0)
        assert ds.element_spec["image"].shape.as_list() == [4, 24, 24, 3]  # per replica
        seen.append([c for b in ds.as_numpy_iterator() for c in _captions(tokenizer, b)])
    assert len(seen[0]) == len(seen[1]) == 12
    assert not set(seen[0]) & set(seen[1])
    assert len(set(seen[0]) | set(seen[1])) == 24


def test_distribute_datasets_from_function(numbered_records, tokenizer):
    strategy = distributed.get_strategy("cpu:2")
    dist = strategy.distribute_datasets_from_function(
        lambda ctx: make_dataset(numbered_records[4], tokenizer, 24, 8, input_context=ctx,
                                 seed=0))
    batch = next(iter(dist))
    per_replica = strategy.experimental_local_results(batch["image"])
    assert [x.shape.as_list() for x in per_replica] == [[4, 24, 24, 3]] * 2


@pytest.fixture(scope="module")
def bad_records(tmp_path_factory):
    """12 records: 6 good (one with an extra empty and an invalid caption), and bad ones."""
    prefix = str(tmp_path_factory.mktemp("bad") / "bad")
    good = jpeg_bytes(30, 40, seed=0)
    items = [
        ("good0", good, ["a red circle", "ein roter Kreis"], ["en", "de"]),
        ("truncated", good[: len(good) // 2], ["a dog"], ["en"]),
        ("good1", png_bytes(30, 40, seed=1), ["two dogs", "", "\xff bad"], ["en", "de", "fr"]),
        ("random", bytes(range(256)), ["a cat"], ["en"]),
        ("empty_caption", good, ["", "   "], ["en", "de"]),
        ("good2", good, ["a blue square"], ["en"]),
        ("corrupt_body", corrupt_body_jpeg(1), ["a fish"], ["en"]),
        ("invalid_utf8", good, ["\xff\xfe"], ["en"]),
        ("good3", good, ["a star"], ["en"]),
        ("no_image", b"", ["a tree"], ["en"]),
        ("good4", good, ["a house", "une maison"], ["en", "fr"]),
        ("good5", good, ["word " * 300], ["en"]),  # far longer than the sequence length
    ]
    with RecordWriter(prefix, 2) as writer:
        for image_id, image, captions, langs in items:
            example = ImageTextExample(image_id, image, "jpeg", [], [])
            serialized = example.to_example()
            feature = serialized.features.feature
            # Write raw bytes, so invalid UTF-8 reaches the records unchanged.
            feature["caption/text"].bytes_list.value[:] = [
                c.encode("latin-1") if "\xff" in c else c.encode("utf-8") for c in captions]
            feature["caption/lang"].bytes_list.value[:] = [x.encode() for x in langs]
            writer._writers[writer.count % 2].write(serialized.SerializeToString())
            writer.count += 1
    return prefix


def test_bad_records_are_dropped_and_counted(bad_records, tokenizer, capfd):
    counter = DropCounter()
    ds = make_dataset(bad_records, tokenizer, 24, 4, training=False, counter=counter)
    captions = [c for b in ds.as_numpy_iterator() for c in _captions(tokenizer, b)]
    # good0: 2, good1: 1 (one empty, one invalid), good2-5: 1 + 1 + 2 + 1.
    assert len(captions) == 8
    assert counter.as_dict() == {
        "records read": 12,
        "undecodable image": 4,  # truncated, random bytes, corrupt body, no image
        "no usable caption": 2,  # empty captions, invalid UTF-8
        "no caption in languages": 0,
        "image too large": 0,
        "corrupt record (CRC)": 0,
        "captions ignored": 2,  # the empty and invalid captions of good1
        "shard bytes lost": 0,
    }
    err = capfd.readouterr().err
    assert "malign.data: dropped record 'truncated' (undecodable image)" in err
    assert "malign.data: dropped record 'empty_caption' (no usable caption)" in err
    assert "1 record(s) failed to decode" in err
    assert "dropped 6: 4 undecodable image, 2 no usable caption, 0 no caption" in err


def test_bad_records_do_not_stop_training(bad_records, tokenizer):
    counter = DropCounter()
    ds = make_dataset(bad_records, tokenizer, 24, 4, seed=0, counter=counter)
    batches = list(ds.take(6).as_numpy_iterator())  # several passes over the 6 good records
    assert len(batches) == 6 and all(b["image"].shape == (4, 24, 24, 3) for b in batches)
    counts = counter.as_dict()
    assert counts["records read"] >= 24  # in flight: prefetching reads ahead
    assert counts["undecodable image"] >= 2 * 4 and counts["no usable caption"] >= 2 * 2


def test_language_filter_counts(bad_records, tokenizer):
    counter = DropCounter()
    ds = make_dataset(bad_records, tokenizer, 24, 4, training=False, languages=["fr"],
                      counter=counter)
    captions = [c for b in ds.as_numpy_iterator() for c in _captions(tokenizer, b)]
    assert captions == ["une maison"]
    # corrupt_body has no French caption: dropped for that, never decoded.
    assert counter.as_dict() == {"records read": 12, "undecodable image": 3,
                                 "no usable caption": 2, "no caption in languages": 6,
                                 "image too large": 0, "corrupt record (CRC)": 0,
                                 "captions ignored": 0, "shard bytes lost": 0}


def test_read_eval_split(bad_records, capsys):
    split = read_eval_split(bad_records, image_size=24, batch_size=4)
    # Record order: shard 0 holds items 0, 2, 4..., shard 1 items 1, 3, 5...
    assert split.image_ids == ["good0", "good1", "good3", "good4", "good2", "good5"]
    assert split.captions[:3] == ["a red circle", "ein roter Kreis", "two dogs"]
    assert split.caption_langs[:3] == ["en", "de", "en"]
    np.testing.assert_array_equal(split.text_to_image, [0, 0, 1, 2, 3, 3, 4, 5])
    assert split.dropped == 6
    assert split.drop_reasons["undecodable image"] == 4
    assert split.drop_reasons["no usable caption"] == 2
    batches = list(split.images.as_numpy_iterator())
    assert [b.shape for b in batches] == [(4, 24, 24, 3), (2, 24, 24, 3)]
    assert "6 images, 8 captions" in capsys.readouterr().err
    german = read_eval_split(bad_records, 24, 4, languages=["de"], verbose=False)
    assert german.image_ids == ["good0"] and german.captions == ["ein roter Kreis"]


def test_read_eval_split_on_multi30k(multi30k_mini, tmp_path):
    from malign.data.multi30k import write_multi30k

    prefix = str(tmp_path / "val")
    write_multi30k(multi30k_mini, multi30k_mini / "images", "val", prefix, shards=2,
                   verbose=False)
    split = read_eval_split(prefix, image_size=32, batch_size=100, languages=["en", "cs"],
                            verbose=False)
    assert split.num_images == 242 and len(split.captions) == 484 and split.dropped == 0
    assert split.caption_langs[:2] == ["en", "cs"]
    assert sum(b.shape[0] for b in split.images.as_numpy_iterator()) == 242


def test_no_files(tokenizer, tmp_path):
    with pytest.raises(FileNotFoundError, match="no TFRecord files match"):
        make_dataset(str(tmp_path / "nothing-*"), tokenizer, 24, 4)


def test_damaged_shard_is_read_up_to_the_damage(numbered_records, tokenizer, tmp_path, capfd):
    import glob
    import shutil

    from malign.data import check_shard

    files = sorted(glob.glob(numbered_records[4] + "-*"))
    for path in files:
        shutil.copy(path, tmp_path)
    damaged = tmp_path / files[1].rsplit("/", 1)[1]
    data = damaged.read_bytes()
    assert check_shard(str(damaged)) == (6, None)
    damaged.write_bytes(data[: len(data) - 100])  # cut inside the last record
    records, problem = check_shard(str(damaged))
    assert records == 5 and "truncated record" in problem
    pattern = str(tmp_path / "items4-*")
    ds = make_dataset(pattern, tokenizer, 24, 4, training=False, languages=["en"])
    captions = [c for b in ds.as_numpy_iterator() for c in _captions(tokenizer, b)]
    assert len(captions) == 23
    assert f"shard {damaged} is damaged" in capfd.readouterr().err
    train = make_dataset(pattern, tokenizer, 24, 4, seed=0)
    assert len(list(train.take(12))) == 12  # keeps going, epoch after epoch
    split = read_eval_split(pattern, 24, 8, verbose=False)
    assert split.num_images == 23


def test_square_eval_resize_reaches_both_eval_readers(numbered_records, tokenizer):
    """make_dataset(training=False) and read_eval_split crop as eval_crop(..., "square")."""
    from malign.data.preprocess import decode_image, eval_crop

    # numbered_records' images are 24x30 PNGs (not square).
    pixels = [decode_image(tf.constant(png_bytes(24, 30, seed=i))) for i in range(24)]
    expected = [eval_crop(p, 16, eval_resize="square").numpy() for p in pixels]
    shorter = [eval_crop(p, 16).numpy() for p in pixels]
    split = read_eval_split(numbered_records[1], 16, 8, verbose=False, eval_resize="square")
    assert split.eval_resize == "square"
    images = np.concatenate(list(split.images.as_numpy_iterator()))
    np.testing.assert_allclose(images, expected, rtol=0, atol=1e-6)
    assert np.abs(images - np.stack(shorter)).max() > 0.1
    ds = make_dataset(numbered_records[1], tokenizer, 16, 6, training=False, languages=["en"],
                      eval_resize="square")
    images = np.concatenate([b["image"] for b in ds.as_numpy_iterator()])
    np.testing.assert_allclose(images, expected, rtol=0, atol=1e-6)
    assert read_eval_split(numbered_records[1], 16, 8, verbose=False).eval_resize == "shorter_side"
