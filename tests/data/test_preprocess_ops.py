"""Decoding, the cheap completeness screen, and ALIGN's crops."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from image_bytes import corrupt_body_jpeg, jpeg_bytes, png_bytes

from malign.data import preprocess
from malign.data.preprocess import (
    decode_and_crop,
    decode_image,
    eval_crop,
    image_bytes_ok,
    image_bytes_ok_py,
    resize_size,
    train_crop,
)


def _cases():
    jpeg, png = jpeg_bytes(), png_bytes()
    return [
        ("jpeg", jpeg, True),
        ("png", png, True),
        ("png palette", png_bytes(mode="P"), True),
        ("jpeg with trailing padding", jpeg + b"\x00" * 20, True),
        ("truncated jpeg", jpeg[: len(jpeg) // 2], False),
        ("truncated png", png[: len(png) - 30], False),
        ("random bytes", bytes(range(200)), False),
        ("empty", b"", False),
        ("text", b"<html>not found</html>", False),
    ]


@pytest.mark.parametrize("name, data, ok", _cases(), ids=[c[0] for c in _cases()])
def test_image_bytes_ok(name, data, ok):
    assert bool(image_bytes_ok(tf.constant(data))) is ok
    assert image_bytes_ok_py(data) is ok


def test_corrupt_body_passes_screen_but_fails_decode():
    data = corrupt_body_jpeg()
    assert image_bytes_ok_py(data)
    with pytest.raises(tf.errors.InvalidArgumentError):
        decode_image(tf.constant(data))


def test_resize_size_matches_align():
    assert resize_size(289) == 346
    assert preprocess.EVAL_RESIZE_RATIO == pytest.approx(346 / 289)


def test_eval_crop_equals_resize_then_centre_crop():
    # A smooth image, so resizing the window or the whole image gives close pixels.
    y, x = np.mgrid[0:120, 0:200].astype(np.float32)
    image = np.stack([x / 200 * 255, y / 120 * 255, (x + y) / 320 * 255], -1)
    size = 48
    out = eval_crop(tf.constant(image), size).numpy()
    assert out.shape == (size, size, 3) and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    r = resize_size(size)
    resized = tf.image.resize(image, [r, round(200 * r / 120)], antialias=True).numpy()
    top, left = (resized.shape[0] - size) // 2, (resized.shape[1] - size) // 2
    reference = resized[top : top + size, left : left + size] / 255.0
    np.testing.assert_allclose(out, reference, atol=0.02)


def test_train_crop_is_seeded_and_random():
    image = tf.constant(np.random.default_rng(0).integers(0, 255, (60, 90, 3), np.uint8))
    a = train_crop(image, 32, tf.constant([1, 2]))
    b = train_crop(image, 32, tf.constant([1, 2]))
    np.testing.assert_array_equal(a, b)
    crops = [train_crop(image, 32, tf.constant([s, 0])).numpy() for s in range(8)]
    assert len({c.tobytes() for c in crops}) == 8
    for crop in crops:
        assert crop.shape == (32, 32, 3) and 0.0 <= crop.min() and crop.max() <= 1.0


def test_train_crop_flips_about_half_the_time():
    # Left half black, right half white: a flip puts the white half on the left.
    image = np.zeros([50, 50, 3], np.uint8)
    image[:, 25:] = 255
    flipped = 0
    for s in range(40):
        crop = train_crop(tf.constant(image), 20, tf.constant([s, 5])).numpy()
        flipped += crop[:, :5].mean() > crop[:, -5:].mean()
    assert 8 <= flipped <= 32


@pytest.mark.parametrize("kind", ["png", "jpeg"])
@pytest.mark.parametrize("training", [True, False])
def test_decode_and_crop_equals_decode_then_crop(kind, training):
    data = png_bytes(47, 81, seed=3) if kind == "png" else jpeg_bytes(47, 81, seed=3)
    seed = tf.constant([4, 9])
    fused = decode_and_crop(tf.constant(data), 24, training, seed if training else None)
    image = decode_image(tf.constant(data))
    reference = train_crop(image, 24, seed) if training else eval_crop(image, 24)
    fused, reference = fused.numpy(), reference.numpy()
    if kind == "png":
        np.testing.assert_allclose(fused, reference, atol=1e-6)
    else:
        # Decoding only the JPEG window upsamples chroma differently at the window's edge
        # (libjpeg has no neighbour pixels there): equal inside, close at the border.
        np.testing.assert_allclose(fused[1:-1, 1:-1], reference[1:-1, 1:-1], atol=3 / 255)
        assert np.abs(fused - reference).mean() < 2 / 255


def test_decode_and_crop_in_tf_function():
    fn = tf.function(lambda b: decode_and_crop(b, 16, training=False),
                     input_signature=[tf.TensorSpec([], tf.string)])
    assert fn(tf.constant(jpeg_bytes())).shape == (16, 16, 3)
    assert fn(tf.constant(png_bytes())).shape == (16, 16, 3)
    with pytest.raises(ValueError, match="needs a seed"):
        decode_and_crop(tf.constant(png_bytes()), 16, training=True)


# -- the "square" evaluation resize (kakaobrain/align-base's processor) ---------------------
def _processor(size: int):
    from malign.convert import ImageProcessorSettings

    return ImageProcessorSettings(resize=(resize_size(size),) * 2, crop=(size, size))


@pytest.mark.parametrize("height, width, size", [(47, 81, 24), (90, 40, 33), (375, 500, 289)])
def test_square_eval_crop_equals_the_processor_preprocess(height, width, size):
    """On a non-square JPEG: the same pixels as convert.processor_image_preprocess."""
    from malign.convert import processor_image_preprocess

    image = decode_image(tf.constant(jpeg_bytes(height, width, seed=5)))
    square = eval_crop(image, size, eval_resize="square").numpy()
    expected = processor_image_preprocess(image, _processor(size)).numpy()
    assert square.shape == (size, size, 3) and square.dtype == np.float32
    np.testing.assert_array_equal(square, expected)
    # Whole grey levels, as the processor's uint8 resize gives.
    np.testing.assert_allclose(square * 255, np.round(square * 255), atol=1e-4)
    # The default crop keeps the aspect ratio: other pixels on a non-square image.
    assert np.abs(eval_crop(image, size).numpy() - expected).max() > 0.1


def test_square_eval_crop_squeezes_the_whole_width():
    # Left quarter black, the rest white: only a squeezing resize keeps the black band.
    image = np.full([40, 160, 3], 255, np.uint8)
    image[:, :40] = 0
    square = eval_crop(tf.constant(image), 20, eval_resize="square").numpy()
    shorter = eval_crop(tf.constant(image), 20).numpy()
    assert square[:, :2].max() == 0.0 and square[:, -2:].min() == 1.0
    assert shorter.min() > 0.999  # the centre square is white


@pytest.mark.parametrize("kind", ["png", "jpeg"])
def test_decode_and_crop_square_equals_decode_then_crop(kind):
    data = png_bytes(47, 81, seed=3) if kind == "png" else jpeg_bytes(47, 81, seed=3)
    fn = tf.function(lambda b: decode_and_crop(b, 24, training=False, eval_resize="square"),
                     input_signature=[tf.TensorSpec([], tf.string)])
    pixels = decode_image(tf.constant(data), accurate_jpeg=True)
    reference = eval_crop(pixels, 24, eval_resize="square").numpy()
    # In a graph, TensorFlow may turn the division by 255 into a product: 1 ulp.
    np.testing.assert_allclose(fn(tf.constant(data)).numpy(), reference, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(
        decode_and_crop(tf.constant(data), 24, False, eval_resize="square").numpy(), reference)
    # Training crops do not depend on the evaluation resize.
    seed = tf.constant([4, 9])
    np.testing.assert_array_equal(
        decode_and_crop(tf.constant(data), 24, True, seed, eval_resize="square").numpy(),
        decode_and_crop(tf.constant(data), 24, True, seed).numpy())


def test_accurate_jpeg_decoding_equals_pil():
    """The square crop decodes JPEGs as PIL (the transformers processors' decoder) does."""
    import io

    from PIL import Image

    # A smooth photo-like JPEG, where TensorFlow's default fast DCT visibly differs.
    y, x = np.mgrid[0:90, 0:130]
    pixels = np.stack([x * 1.9, y * 2.8, (x + y) * 1.1 + 20 * np.sin(x / 3.0)], -1)
    out = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=95)
    data = out.getvalue()
    pil = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    np.testing.assert_array_equal(decode_image(tf.constant(data), accurate_jpeg=True).numpy(), pil)
    png = png_bytes(20, 30)
    np.testing.assert_array_equal(decode_image(tf.constant(png), accurate_jpeg=True).numpy(),
                                  decode_image(tf.constant(png)).numpy())


def test_eval_resize_is_a_validated_config_field():
    import malign
    from malign.config import ConfigError, ImageTowerConfig, ModelConfig
    from malign.data import model_eval_resize

    with pytest.raises(ConfigError, match=r"image_tower\.eval_resize: .*'squash'"):
        ImageTowerConfig(eval_resize="squash").validate()
    with pytest.raises(ConfigError, match=r"image_tower\.eval_resize"):
        eval_crop(tf.zeros([8, 8, 3], tf.uint8), 4, eval_resize="squash")
    with pytest.raises(ConfigError, match=r"image_tower\.eval_resize"):
        decode_and_crop(tf.constant(png_bytes()), 4, False, eval_resize="squash")
    with pytest.raises(ConfigError, match=r"image\.eval_resize"):  # the path --set takes
        ModelConfig().with_overrides({"image.eval_resize": "crop"})
    # A config written before the field existed loads with the old behaviour.
    old = ImageTowerConfig().to_dict()
    del old["eval_resize"]
    assert ImageTowerConfig.from_dict(old).eval_resize == "shorter_side"
    cfg = ImageTowerConfig.from_dict({**old, "eval_resize": "square"})
    assert cfg.eval_resize == "square" and ImageTowerConfig.from_dict(cfg.to_dict()) == cfg
    # Presets: align-base evaluates as its checkpoint's processor, the others as the paper.
    assert malign.presets.get_preset("align-base").image.eval_resize == "square"
    assert malign.presets.get_preset("malign-b7-mbert").image.eval_resize == "shorter_side"
    tiny = malign.AlignModel.from_preset("tiny", eval_resize="square")
    assert model_eval_resize(tiny) == "square"
    assert model_eval_resize(malign.AlignModel.from_preset("tiny")) == "shorter_side"
    assert model_eval_resize(object()) == "shorter_side"
