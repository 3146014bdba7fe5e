"""Images as people see them, the same in the record writer, the input pipeline and the
SavedModel's decoding: EXIF orientation, every PNG bit depth and colour type, pixel limits."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
import tensorflow as tf
from image_bytes import exif_block, jpeg_bytes, oriented, png_encode, upright, zeros_png

from malign.data import DropCounter, image_header, make_dataset, read_eval_split, schema
from malign.data.preprocess import decode_and_crop, decode_image, eval_crop, train_crop
from malign.data.writer import CaptionRow, RecordWriter, load_image, rgb8, write_rows

RNG = np.random.default_rng(7)
# Asymmetric and non-square, so that every orientation gives different pixels.
PHOTO = RNG.integers(0, 256, (23, 37, 3), dtype=np.uint8)
SIZE = 16


def _png_modes() -> dict[str, bytes]:
    """Every PNG bit depth and colour type, with and without transparency."""
    rng = np.random.default_rng(3)
    shape = (9, 13)
    out = {}
    for depth in (1, 2, 4, 8, 16):
        out[f"grey {depth}-bit"] = png_encode(rng.integers(0, 2**depth, shape), depth, 0)
    out["grey 8-bit tRNS"] = png_encode(rng.integers(0, 256, shape), 8, 0, trns=b"\x00\x10")
    out["grey 16-bit 30000/10000"] = png_encode(
        np.where(np.indices(shape)[1] % 2 == 0, 30000, 10000), 16, 0)
    out["grey 16-bit tRNS"] = png_encode(rng.integers(0, 65536, shape), 16, 0, trns=b"\x75\x30")
    for depth in (8, 16):
        out[f"grey+alpha {depth}-bit"] = png_encode(rng.integers(0, 2**depth, shape + (2,)),
                                                    depth, 4)
        out[f"RGB {depth}-bit"] = png_encode(rng.integers(0, 2**depth, shape + (3,)), depth, 2)
        out[f"RGBA {depth}-bit"] = png_encode(rng.integers(0, 2**depth, shape + (4,)), depth, 6)
    out["RGB 16-bit tRNS"] = png_encode(rng.integers(0, 65536, shape + (3,)), 16, 2,
                                        trns=bytes(range(1, 7)))
    out["RGBA transparent"] = png_encode(  # alpha 0 everywhere: the colours still show
        np.concatenate([rng.integers(0, 256, shape + (3,)), np.zeros(shape + (1,))], -1), 8, 6)
    for depth in (1, 2, 4, 8):
        palette = rng.integers(0, 256, (2**depth, 3))
        indices = rng.integers(0, 2**depth, shape)
        out[f"palette {depth}-bit"] = png_encode(indices, depth, 3, palette=palette)
        out[f"palette {depth}-bit tRNS"] = png_encode(
            indices, depth, 3, palette=palette,
            trns=rng.integers(0, 256, 2**depth).astype(np.uint8).tobytes())
    out["grey 16-bit orientation 6"] = png_encode(
        rng.integers(0, 65536, shape), 16, 0, before_idat=[(b"eXIf", exif_block(6)[6:])])
    return out


def _oriented() -> dict[str, bytes]:
    out = {}
    for o in range(1, 9):
        out[f"jpeg orientation {o}"] = oriented(PHOTO, o, "JPEG", quality=95)
        out[f"png orientation {o}"] = oriented(PHOTO, o, "PNG")
    return out


def _reencoded() -> dict[str, bytes]:
    """Files the writer re-encodes (it must turn them upright first)."""
    from PIL import Image

    # Smooth, so that JPEG re-encoding keeps the pixels close (noise would not survive it).
    y, x = np.mgrid[0:23, 0:37]
    smooth = np.stack([x * 6, y * 10, 255 - x * 3 - y * 4], -1).astype(np.uint8)
    cmyk = io.BytesIO()
    Image.fromarray(smooth).convert("CMYK").save(cmyk, "JPEG", quality=95, exif=exif_block(6))
    return {"cmyk jpeg orientation 6": cmyk.getvalue(),
            "webp orientation 8": oriented(smooth, 8, "WEBP", lossless=True)}


PNG_MODES = _png_modes()
ORIENTED = _oriented()
REENCODED = _reencoded()
KEPT = {**ORIENTED, **PNG_MODES}


@pytest.mark.parametrize("name", list(KEPT))
def test_decode_image_is_what_a_person_sees(name):
    """decode_image == PIL's exif_transpose, converted to RGB as TensorFlow converts."""
    data = KEPT[name]
    np.testing.assert_array_equal(decode_image(tf.constant(data), accurate_jpeg=True).numpy(),
                                  upright(data))


def test_orientations_turn_the_photo_upright():
    # The stored pixels are PHOTO; PIL's exif_transpose of each orientation, spelled out.
    turned = PHOTO.transpose(1, 0, 2)
    expected = {1: PHOTO, 2: PHOTO[:, ::-1], 3: PHOTO[::-1, ::-1], 4: PHOTO[::-1], 5: turned,
                6: np.rot90(PHOTO, -1), 7: turned[::-1, ::-1], 8: np.rot90(PHOTO, 1)}
    for o in range(1, 9):
        np.testing.assert_array_equal(decode_image(ORIENTED[f"png orientation {o}"]).numpy(),
                                      expected[o], err_msg=f"orientation {o}")
    # 6 is "rotate 90 clockwise": the stored top-left corner ends up top-right.
    six = decode_image(ORIENTED["png orientation 6"]).numpy()
    assert six.shape == (37, 23, 3)
    np.testing.assert_array_equal(six[0, -1], PHOTO[0, 0])


def test_png_modes_convert_as_tensorflow_does():
    values = decode_image(PNG_MODES["grey 16-bit 30000/10000"]).numpy()
    assert values[0, :2, 0].tolist() == [117, 39]  # 30000 >> 8, 10000 >> 8 (not white)
    assert (values[..., 0] == values[..., 2]).all()
    from PIL import Image

    for name, data in PNG_MODES.items():
        image = Image.open(io.BytesIO(data))
        ours = np.asarray(rgb8(image))
        tf_pixels = tf.io.decode_png(data, channels=3).numpy()
        np.testing.assert_array_equal(ours, tf_pixels, err_msg=name)
        if image.mode not in ("I;16", "I;16B", "I"):  # PIL's convert agrees but for 16-bit grey
            assert np.array_equal(np.asarray(image.convert("RGBA").convert("RGB")), tf_pixels)
    # Alpha is dropped, not composited: fully transparent pixels keep their colour.
    transparent = decode_image(PNG_MODES["RGBA transparent"]).numpy()
    assert transparent.std() > 20


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_crops_are_cut_from_the_upright_image(fmt):
    seed = tf.constant([5, 11])
    for o in range(1, 9):
        data = tf.constant(ORIENTED[f"{fmt} orientation {o}"])
        image = decode_image(data)
        for training in (True, False):
            fused = decode_and_crop(data, SIZE, training, seed if training else None).numpy()
            reference = (train_crop(image, SIZE, seed) if training
                         else eval_crop(image, SIZE)).numpy()
            # A JPEG window alone decodes its edge pixels a little differently (chroma).
            np.testing.assert_allclose(fused[1:-1, 1:-1], reference[1:-1, 1:-1], atol=3 / 255,
                                       err_msg=f"orientation {o}, training={training}")
            assert np.abs(fused - reference).mean() < 2 / 255
        square = decode_and_crop(data, SIZE, False, eval_resize="square").numpy()
        np.testing.assert_allclose(
            square, eval_crop(decode_image(data, accurate_jpeg=True), SIZE, "square").numpy(),
            atol=1e-6)


# -- writer -> records -> pipeline -> SavedModel decoding -----------------------------------
@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("decoding")
    images = root / "images"
    images.mkdir()
    sources = {**KEPT, **REENCODED}
    rows = []
    for i, (name, data) in enumerate(sources.items()):
        (images / f"{i}.img").write_bytes(data)
        rows.append(CaptionRow(f"{i}.img", name, "en", image_id=name))
    stats = write_rows(rows, root / "recs", images_dir=images, verbose=False, workers=2)
    stored = {}
    for raw in tf.data.TFRecordDataset(tf.io.gfile.glob(schema.shard_pattern(str(root / "recs")))):
        record = schema.parse_record(raw)
        stored[record[schema.IMAGE_ID].numpy().decode()] = record[schema.IMAGE_ENCODED].numpy()
    return {"prefix": str(root / "recs"), "stats": stats, "sources": sources, "stored": stored}


def test_writer_stores_the_upright_pixels(written):
    stats, stored = written["stats"], written["stored"]
    assert stats.records == len(written["sources"]) and stats.skipped_rows == 0
    assert stats.reencoded_images == len(REENCODED)  # every PNG mode is kept as it is
    for name, data in KEPT.items():
        assert stored[name] == data, name  # orientation stays in the file; readers apply it
        np.testing.assert_array_equal(
            decode_image(tf.constant(stored[name]), accurate_jpeg=True).numpy(), upright(data),
            err_msg=name)
    for name, data in REENCODED.items():
        assert image_header.exif_orientation(stored[name]) == 1  # turned, and no EXIF left
        pixels = decode_image(tf.constant(stored[name]), accurate_jpeg=True).numpy()
        reference = upright(data)
        assert pixels.shape == reference.shape == (37, 23, 3), name
        assert np.abs(pixels.astype(int) - reference).mean() < 3, name  # JPEG quality 95


def test_pipeline_and_saved_model_decoding_see_the_same_pixels(written, tokenizer):
    from malign.export import decode_images

    # One shard, one caption per record: evaluation yields the images in record order.
    dataset = make_dataset(written["prefix"], tokenizer, SIZE, 8, training=False)
    seen = np.concatenate([b["image"] for b in dataset.as_numpy_iterator()])
    names = list(written["stored"])
    assert len(seen) == len(names) == len(written["sources"])
    served = decode_images(tf.constant([written["stored"][n] for n in names]), SIZE).numpy()
    for name, pipeline, served_image in zip(names, seen, served):
        np.testing.assert_allclose(served_image, pipeline, atol=1e-6, err_msg=name)
        expected = eval_crop(upright(written["sources"][name]), SIZE).numpy()
        difference = np.abs(pipeline - expected)
        if name in PNG_MODES or name.startswith("png"):
            np.testing.assert_allclose(pipeline, expected, atol=1e-5, err_msg=name)
        else:  # TensorFlow's fast JPEG decoder, re-encoded files: close, not equal
            assert difference.mean() < 8 / 255, name


# -- the pixel limit ------------------------------------------------------------------------
def _jpeg(height: int, width: int, orientation: int | None = None) -> bytes:
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], -1).astype(np.uint8)
    out = io.BytesIO()
    extra = {} if orientation is None else {"exif": exif_block(orientation)}
    Image.fromarray(pixels).save(out, "JPEG", quality=90, **extra)
    return out.getvalue()


def test_writer_pixel_limit(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "huge.png").write_bytes(zeros_png(20000, 20000))
    (images / "big.jpg").write_bytes(_jpeg(1000, 1200))
    (images / "big6.jpg").write_bytes(_jpeg(1000, 1200, orientation=6))
    (images / "small.png").write_bytes(zeros_png(60, 40, rows_per_block=20))
    rows = [CaptionRow(f, "x", "en") for f in ("huge.png", "big.jpg", "big6.jpg", "small.png")]
    start = time.perf_counter()
    stats = write_rows(rows, tmp_path / "recs", images_dir=images, verbose=False,
                       max_image_pixels=400_000, max_image_side=None)
    assert time.perf_counter() - start < 30
    # The PNG is refused from its header (never "corrupt"), the JPEGs decoded at 1/2 scale.
    assert stats.skipped["image too large"] == 1 and stats.skipped["corrupt image"] == 0
    assert stats.examples["image too large"] == ["huge.png"]
    assert "1 image too large" in stats.skipped_line()
    assert stats.downsized_images == 2 and stats.records == 3
    assert "images over 400,000 pixels, stored downsized: 2" in stats.summary()
    big = load_image(str(images / "big.jpg"), max_image_pixels=400_000)
    assert big.over_limit and big.reencoded and image_header.image_size(big.data) == (500, 600)
    turned = load_image(str(images / "big6.jpg"), max_image_pixels=400_000)
    assert image_header.image_size(turned.data) == (600, 500)  # upright, no EXIF left
    assert image_header.exif_orientation(turned.data) == 1
    # With --max-image-side the JPEG is decoded at 1/8 and resized: the huge PNG still is
    # not decoded, and the reason says how to get it stored.
    small = load_image(str(images / "big.jpg"), max_image_side=64, max_image_pixels=400_000)
    assert image_header.image_size(small.data) == (64, 77)
    with pytest.raises(Exception, match=r"image too large: .*huge.png \(20000x20000 = "
                                        r"400,000,000 pixels, over the limit of 400,000; raise "
                                        r"--max-image-pixels"):
        load_image(str(images / "huge.png"), max_image_side=64, max_image_pixels=400_000)


def test_writer_decodes_bigger_images_when_allowed(tmp_path):
    """Raising the limit lets the writer decode an image and --max-image-side shrink it; the
    16-bit grey PNG keeps its grey levels through the re-encoding (30000 -> 117, not 255)."""
    path = tmp_path / "grey16.png"
    path.write_bytes(png_encode(np.full((300, 400), 30000), 16, 0))
    with pytest.raises(Exception, match="image too large"):
        load_image(str(path), max_image_pixels=100_000)
    loaded = load_image(str(path), max_image_side=50, max_image_pixels=200_000)
    assert loaded.reencoded and not loaded.over_limit
    pixels = decode_image(tf.constant(loaded.data)).numpy()
    assert pixels.shape == (50, 67, 3) and abs(int(np.median(pixels)) - 117) <= 1


@pytest.fixture(scope="module")
def oversized_records(tmp_path_factory):
    """A normal record, one with a valid 20000x20000 PNG, one with a rotated JPEG."""
    prefix = str(tmp_path_factory.mktemp("oversized") / "recs")
    with RecordWriter(prefix, 1) as writer:
        for name, image, fmt in [("normal", jpeg_bytes(30, 40), "jpeg"),
                                 ("huge", zeros_png(20000, 20000), "png"),
                                 ("rotated", ORIENTED["jpeg orientation 6"], "jpeg")]:
            writer.write(schema.ImageTextExample(name, image, fmt, [f"a {name} image"], ["en"]))
    return prefix


def test_pipeline_drops_oversized_images_before_decoding(oversized_records, tokenizer, capfd):
    counter = DropCounter()
    start = time.perf_counter()
    ds = make_dataset(oversized_records, tokenizer, SIZE, 4, training=False, counter=counter)
    batches = list(ds.as_numpy_iterator())
    assert sum(b["image"].shape[0] for b in batches) == 2
    assert time.perf_counter() - start < 30  # 400 million pixels were never decoded
    counts = counter.as_dict()
    assert counts["image too large"] == 1 and counts["undecodable image"] == 0
    assert "dropped record 'huge' (image too large)" in capfd.readouterr().err
    split = read_eval_split(oversized_records, SIZE, 4, verbose=False)
    assert split.image_ids == ["normal", "rotated"]
    assert split.drop_reasons["image too large"] == 1 and split.dropped == 1
    assert "1 image too large" in split.summary()
    training = make_dataset(oversized_records, tokenizer, SIZE, 2, seed=1, counter=DropCounter())
    assert next(iter(training))["image"].shape == (2, SIZE, SIZE, 3)
    with pytest.raises(ValueError, match="max_image_pixels"):
        make_dataset(oversized_records, tokenizer, SIZE, 2, max_image_pixels=0)


def test_inspect_counts_oversized_and_accepts_rotated(oversized_records, capsys):
    from malign.cli import main

    assert main(["data", "inspect", oversized_records, "--image-size", "16"]) == 0
    out = capsys.readouterr().out
    assert "2 images, 2 captions (en 2); dropped 1 records: 0 undecodable image" in out
    assert "1 image too large" in out
    assert main(["data", "inspect", oversized_records, "--strict"]) == 1
