"""Image decoding and cropping, as pure TensorFlow ops (usable in ``tf.data`` and in the
serving signature of an exported SavedModel).

The crops follow ALIGN: the shorter side is resized to ``size * 346 / 289`` (346 for the
paper's 289-pixel crops), then a ``size x size`` window is cut out: at random and randomly
flipped left-right for training, in the centre for evaluation. The window is computed in the
original image's coordinates and only the window is resized, which gives the same pixels as
resizing the whole image first (up to interpolation) at a fraction of the cost; for JPEG the
window alone is decoded.

Evaluation has a second resize mode, a property of the model
(``ImageTowerConfig.eval_resize``, read with :func:`model_eval_resize`): "square" resizes
the whole image to ``resize_size(size)`` on both sides (the aspect ratio is not kept),
rounds to whole pixel values and cuts the centre ``size x size``: the image processor of
the released ``kakaobrain/align-base`` checkpoint (346x346, crop 289), whose numbers can
only be reproduced with its own pixels. The default "shorter_side" is the crop above.

Every output is float32 RGB in [0, 1]; each image tower normalises its input itself.

Decoding gives the pixels a person sees, the same way in the record writer, in training and
evaluation, and in the exported SavedModel:

- **EXIF orientation** is applied (JPEG APP1, PNG ``eXIf``, WebP ``EXIF``; read in the
  graph by :mod:`malign.data.image_header`, equal to PIL's ``ImageOps.exif_transpose`` on
  these files): a phone photo tagged "rotate 90" comes out upright. Crops are cut in the
  upright image (for JPEG the window is mapped back to the stored frame, so only the window
  is still decoded).
- **Every PNG bit depth and colour type** becomes 8-bit RGB: 1/2/4-bit grey scaled to
  0..255, 16-bit samples to their high byte (``v >> 8``, TensorFlow's ``decode_png``),
  palettes expanded; **alpha is dropped**, not composited (a transparent pixel shows its
  colour, as PIL's ``convert("RGB")`` and ``tf.io.decode_png(channels=3)`` both do),
  including grey+alpha and palette or grey/RGB transparency (``tRNS``).
- **Size** is known from the header before decoding
  (:func:`malign.data.image_header.image_size_tf`); the pipeline and the SavedModel refuse
  images over a pixel limit without decoding them.

Example:
    >>> import tensorflow as tf
    >>> image = tf.zeros([120, 200, 3], tf.uint8)
    >>> eval_crop(image, 64).shape.as_list()
    [64, 64, 3]
    >>> eval_crop(image, 64, eval_resize="square").shape.as_list()
    [64, 64, 3]
    >>> train_crop(image, 64, seed=tf.constant([1, 2])).dtype
    tf.float32
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from malign.config import EVAL_RESIZES, ConfigError
from malign.data.image_header import exif_orientation_tf

#: ALIGN resizes to 346 and crops 289 (paper and ``kakaobrain/align-base``).
ALIGN_RESIZE = 346
ALIGN_CROP = 289
#: Shorter side before cropping = ``round(size * EVAL_RESIZE_RATIO)``; used for training too.
EVAL_RESIZE_RATIO = ALIGN_RESIZE / ALIGN_CROP
#: The evaluation resize modes (``ImageTowerConfig.eval_resize``) and the default one.
EVAL_RESIZE_MODES = EVAL_RESIZES
DEFAULT_EVAL_RESIZE = "shorter_side"

_JPEG_SOI = b"\xff\xd8\xff"
_JPEG_EOI = b"\xff\xd9"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"IEND"
#: How far from the end of the file the end marker may sit (trailing padding is common).
END_MARKER_WINDOW = 64


def resize_size(size: int) -> int:
    """The shorter side an image is resized to before a ``size`` crop.

    Args:
        size: the crop size.

    Example:
        >>> resize_size(289), resize_size(224)
        (346, 268)
    """
    return int(round(size * EVAL_RESIZE_RATIO))


def check_eval_resize(eval_resize: str) -> str:
    """Returns ``eval_resize`` if it is a known evaluation resize mode.

    Args:
        eval_resize: "shorter_side" or "square" (see :func:`eval_crop`).

    Raises:
        ConfigError: for any other value, naming the field.

    Example:
        >>> check_eval_resize("square")
        'square'
    """
    if eval_resize not in EVAL_RESIZE_MODES:
        raise ConfigError(f"image_tower.eval_resize: must be one of {EVAL_RESIZE_MODES}, "
                          f"got {eval_resize!r}")
    return eval_resize


def model_eval_resize(model: Any) -> str:
    """The evaluation resize mode of a model: its ``ImageTowerConfig.eval_resize``.

    Evaluation and export call this so that every path crops as the model asks. A model
    with an ``eval_resize`` attribute gives that; an ``AlignModel`` its config's field; a
    model with neither (or an ``ImageTower``'s ``tower_config``) the default
    "shorter_side".

    Args:
        model: an ``AlignModel`` (or any model with ``model_config.image``).

    Returns:
        "shorter_side" or "square".

    Example:
        >>> import malign
        >>> model_eval_resize(malign.AlignModel.from_preset("tiny"))
        'shorter_side'
    """
    value = getattr(model, "eval_resize", None)
    if value is None:
        config = getattr(model, "model_config", None)
        image = getattr(config, "image", None) or getattr(model, "tower_config", None)
        value = getattr(image, "eval_resize", DEFAULT_EVAL_RESIZE)
    return check_eval_resize(str(value))


def _tail_contains(encoded: tf.Tensor, marker: bytes) -> tf.Tensor:
    """Whether ``marker`` occurs within the last END_MARKER_WINDOW bytes of ``encoded``."""
    n = tf.strings.length(encoded)
    tail = tf.strings.substr(encoded, tf.maximum(n - END_MARKER_WINDOW, 0), END_MARKER_WINDOW)
    raw = tf.cast(tf.io.decode_raw(tail, tf.uint8), tf.int32)
    m = len(marker)
    count = tf.maximum(tf.shape(raw)[0] - m + 1, 0)
    raw = tf.concat([raw, tf.fill([m], -1)], axis=0)
    found = tf.ones([count], tf.bool)
    for j, byte in enumerate(marker):
        found = found & tf.equal(tf.slice(raw, [j], [count]), byte)
    return tf.reduce_any(found)


def image_bytes_ok(encoded: tf.Tensor) -> tf.Tensor:
    """A cheap check that ``encoded`` is a complete JPEG or PNG file (scalar bool).

    It checks the signature and that the end marker (JPEG EOI, PNG IEND) is near the end of
    the file, which catches truncated downloads and non-image bytes without decoding. An
    image whose body is corrupt can still fail to decode; the pipeline drops those too.

    Args:
        encoded: a scalar string tensor.

    Example:
        >>> bool(image_bytes_ok(tf.constant(b"not an image")))
        False
    """
    encoded = tf.convert_to_tensor(encoded, tf.string)
    head = tf.strings.substr(encoded, 0, 8)
    is_jpeg = tf.equal(tf.strings.substr(head, 0, 3), _JPEG_SOI)
    is_png = tf.equal(head, _PNG_SIGNATURE)
    return tf.cond(
        is_jpeg,
        lambda: _tail_contains(encoded, _JPEG_EOI),
        lambda: tf.cond(
            is_png, lambda: _tail_contains(encoded, _PNG_IEND), lambda: tf.constant(False)
        ),
    )


def image_bytes_ok_py(data: bytes) -> bool:
    """The same check as :func:`image_bytes_ok`, in Python (the writer uses it).

    Args:
        data: the encoded image file.

    Example:
        >>> image_bytes_ok_py(b"\\xff\\xd8\\xff\\xe0 ... \\xff\\xd9")
        True
    """
    tail = data[-END_MARKER_WINDOW:]
    if data.startswith(_JPEG_SOI):
        return _JPEG_EOI in tail
    if data.startswith(_PNG_SIGNATURE):
        return _PNG_IEND in tail
    return False


def _orientation_steps(orientation: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """``(transpose, flip_left_right, flip_up_down)``: EXIF orientation ``o`` shows the
    stored image as ``flips(transpose(image))`` (transposing first)."""
    o = tf.cast(orientation, tf.int32)
    transpose = o >= 5
    flip_lr = tf.equal(o, 2) | tf.equal(o, 3) | tf.equal(o, 6) | tf.equal(o, 7)
    flip_ud = tf.equal(o, 3) | tf.equal(o, 4) | tf.equal(o, 7) | tf.equal(o, 8)
    return transpose, flip_lr, flip_ud


@tf.autograph.experimental.do_not_convert
def apply_orientation(image: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
    """Turns a stored image upright as its EXIF orientation says (PIL's ``exif_transpose``).

    1 identity, 2 mirror left-right, 3 rotate 180, 4 mirror top-bottom, 5 transpose,
    6 rotate 90 clockwise, 7 transverse, 8 rotate 90 counter-clockwise; other values are
    left alone.

    Args:
        image: ``[H, W, C]``.
        orientation: an int scalar (e.g. from
            :func:`malign.data.image_header.exif_orientation_tf`).

    Returns:
        ``[H, W, C]`` for orientations 1-4, ``[W, H, C]`` for 5-8.

    Example:
        >>> image = tf.reshape(tf.range(6), [2, 3, 1])
        >>> apply_orientation(image, 6)[..., 0].numpy().tolist()
        [[3, 0], [4, 1], [5, 2]]
    """
    transpose, flip_lr, flip_ud = _orientation_steps(orientation)
    image = tf.cond(transpose, lambda: tf.image.transpose(image), lambda: image)
    image = tf.cond(flip_lr, lambda: tf.image.flip_left_right(image), lambda: image)
    return tf.cond(flip_ud, lambda: tf.image.flip_up_down(image), lambda: image)


def _decode_stored(encoded: tf.Tensor, accurate_jpeg: bool) -> tf.Tensor:
    """The pixels as stored, uint8 RGB (no orientation)."""
    if accurate_jpeg:
        return tf.cond(
            tf.io.is_jpeg(encoded),
            lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE"),
            lambda: tf.io.decode_image(encoded, channels=3, dtype=tf.uint8,
                                       expand_animations=False),
        )
    return tf.io.decode_image(encoded, channels=3, dtype=tf.uint8, expand_animations=False)


@tf.autograph.experimental.do_not_convert
def decode_image(encoded: tf.Tensor, accurate_jpeg: bool = False,
                 orient: bool = True) -> tf.Tensor:
    """Decodes a JPEG/PNG (also GIF/BMP/WebP) file into uint8 RGB ``[H, W, 3]``, upright.

    The EXIF orientation is applied (see the module docstring), every PNG mode becomes
    8-bit RGB (16-bit samples: high byte) and alpha is dropped.

    Args:
        encoded: a scalar string tensor holding the file's bytes.
        accurate_jpeg: decode a JPEG with libjpeg's accurate integer DCT, as PIL does (and
            so the transformers image processors), instead of TensorFlow's default fast
            one; the two differ by a few grey levels at some pixels (up to 20 seen).
        orient: apply the EXIF orientation (False gives the pixels as stored).

    Example:
        >>> png = tf.io.encode_png(tf.zeros([5, 7, 3], tf.uint8))
        >>> decode_image(png).shape.as_list()
        [5, 7, 3]
    """
    encoded = tf.convert_to_tensor(encoded, tf.string)
    image = _decode_stored(encoded, accurate_jpeg)
    image.set_shape([None, None, 3])
    if orient:
        image = apply_orientation(image, exif_orientation_tf(encoded))
        image.set_shape([None, None, 3])
    return image


def _crop_side(height: tf.Tensor, width: tf.Tensor, size: int) -> tf.Tensor:
    """Side, in original pixels, of a window that becomes ``size`` after resizing the shorter
    side to ``resize_size(size)``."""
    shorter = tf.cast(tf.minimum(height, width), tf.float32)
    side = tf.round(shorter * (size / resize_size(size)))
    return tf.cast(tf.clip_by_value(side, 1.0, shorter), tf.int32)


def _window(height, width, size, seed):
    side = _crop_side(height, width, size)
    if seed is None:
        return (height - side) // 2, (width - side) // 2, side
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 2)
    top = tf.random.stateless_uniform([], seeds[0], 0, height - side + 1, dtype=tf.int32)
    left = tf.random.stateless_uniform([], seeds[1], 0, width - side + 1, dtype=tf.int32)
    return top, left, side


def _finish(window: tf.Tensor, size: int) -> tf.Tensor:
    image = tf.image.resize(window, [size, size], method="bilinear", antialias=True)
    image = tf.clip_by_value(image / 255.0, 0.0, 1.0)
    image.set_shape([size, size, 3])
    return image


def _flip(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    flip_seed = tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), 7)
    return tf.image.stateless_random_flip_left_right(image, flip_seed)


def train_crop(image: tf.Tensor, size: int, seed: tf.Tensor) -> tf.Tensor:
    """ALIGN's training crop: resize shorter side to ``resize_size(size)``, random
    ``size x size`` crop, random left-right flip.

    Args:
        image: uint8 (or float in [0, 255]) ``[H, W, 3]``.
        size: output side.
        seed: a stateless seed, int tensor of shape [2]; the same seed gives the same crop.

    Returns:
        float32 ``[size, size, 3]`` in [0, 1].

    Example:
        >>> img = tf.random.uniform([50, 80, 3], 0, 255, tf.int32)
        >>> train_crop(tf.cast(img, tf.uint8), 32, tf.constant([0, 1])).shape.as_list()
        [32, 32, 3]
    """
    shape = tf.shape(image)
    top, left, side = _window(shape[0], shape[1], size, seed)
    window = tf.image.crop_to_bounding_box(image, top, left, side, side)
    return _flip(_finish(window, size), seed)


def _square_crop(image: tf.Tensor, size: int) -> tf.Tensor:
    """The "square" evaluation crop (see :func:`eval_crop`)."""
    side = resize_size(size)
    image = tf.image.resize(tf.cast(image, tf.float32), [side, side], method="bilinear",
                            antialias=True)
    # The processor resizes uint8 images with PIL, whose output is whole pixel values.
    image = tf.clip_by_value(tf.round(image), 0.0, 255.0)
    offset = (side - size) // 2
    image = tf.image.crop_to_bounding_box(image, offset, offset, size, size)
    image = image / 255.0
    image.set_shape([size, size, 3])
    return image


def eval_crop(image: tf.Tensor, size: int, eval_resize: str = DEFAULT_EVAL_RESIZE) -> tf.Tensor:
    """ALIGN's evaluation crop: resize to ``resize_size(size)``, then the centre crop.

    Two resize modes (the model's ``ImageTowerConfig.eval_resize``; pass
    ``model_eval_resize(model)``):

    - "shorter_side" (default): the shorter side becomes ``resize_size(size)`` (346 for
      289) and the aspect ratio is kept; the centre square is cut out. Only the window is
      resized (antialiased bilinear), which equals resizing first up to interpolation.
    - "square": the whole image is resized to ``resize_size(size)`` on both sides (the
      aspect ratio is not kept; antialiased bilinear), rounded to whole pixel values, and
      the centre ``size x size`` is cut out at offset ``(resize_size(size) - size) // 2``.
      This is the image processor of ``kakaobrain/align-base`` (346x346, crop 289): equal
      to ``malign.convert.processor_image_preprocess`` with its settings, and within one
      grey level of the processor itself (PIL and TensorFlow round differently) when
      given the pixels PIL decodes (``decode_and_crop`` decodes JPEGs so).

    On square images the two modes differ only by interpolation and rounding.

    Args:
        image: uint8 (or float in [0, 255]) ``[H, W, 3]``.
        size: output side.
        eval_resize: "shorter_side" or "square".

    Returns:
        float32 ``[size, size, 3]`` in [0, 1].

    Raises:
        ConfigError: for an unknown ``eval_resize``.

    Example:
        >>> float(eval_crop(tf.fill([10, 10, 3], tf.constant(255, tf.uint8)), 4).numpy().max())
        1.0
        >>> eval_crop(tf.zeros([30, 80, 3], tf.uint8), 8, eval_resize="square").shape.as_list()
        [8, 8, 3]
    """
    if check_eval_resize(eval_resize) == "square":
        return _square_crop(image, size)
    shape = tf.shape(image)
    top, left, side = _window(shape[0], shape[1], size, None)
    window = tf.image.crop_to_bounding_box(image, top, left, side, side)
    return _finish(window, size)


@tf.autograph.experimental.do_not_convert
def decode_and_crop(
    encoded: tf.Tensor,
    size: int,
    training: bool,
    seed: tf.Tensor | None = None,
    eval_resize: str = DEFAULT_EVAL_RESIZE,
) -> tf.Tensor:
    """Decodes and crops in one step; for JPEG only the crop window is decoded.

    The crop is cut from the upright image (EXIF orientation applied). Gives the same
    result as ``train_crop(decode_image(x), size, seed)`` (``training``) or
    ``eval_crop(decode_image(x), size)``. The "square" evaluation resize needs the whole
    image, so it decodes the whole file, and it decodes JPEGs as PIL does
    (``eval_crop(decode_image(x, accurate_jpeg=True), size, "square")``), so that the
    pixels are the transformers processor's to within one grey level.

    Args:
        encoded: a scalar string tensor (JPEG, PNG, GIF or BMP file).
        size: output side.
        training: random crop and flip (needs ``seed``) or centre crop.
        seed: stateless seed of shape [2] for training.
        eval_resize: the evaluation resize mode (see :func:`eval_crop`); training crops
            ignore it.

    Returns:
        float32 ``[size, size, 3]`` in [0, 1].

    Example:
        >>> jpeg = tf.io.encode_jpeg(tf.zeros([40, 60, 3], tf.uint8))
        >>> decode_and_crop(jpeg, 16, training=False).shape.as_list()
        [16, 16, 3]
    """
    if training and seed is None:
        raise ValueError("decode_and_crop(training=True) needs a seed")
    if check_eval_resize(eval_resize) == "square" and not training:
        return eval_crop(decode_image(encoded, accurate_jpeg=True), size, eval_resize)

    encoded = tf.convert_to_tensor(encoded, tf.string)
    orientation = exif_orientation_tf(encoded)

    def jpeg_path() -> tf.Tensor:
        # The window is chosen in the upright image and mapped back to the stored frame, so
        # that only the window is decoded and the crop equals cropping the upright image.
        transpose, flip_lr, flip_ud = _orientation_steps(orientation)
        stored = tf.image.extract_jpeg_shape(encoded)
        height = tf.where(transpose, stored[1], stored[0])
        width = tf.where(transpose, stored[0], stored[1])
        top, left, side = _window(height, width, size, seed if training else None)
        top = tf.where(flip_ud, height - top - side, top)
        left = tf.where(flip_lr, width - left - side, left)
        box = tf.where(transpose, tf.stack([left, top]), tf.stack([top, left]))
        window = tf.image.decode_and_crop_jpeg(
            encoded, tf.concat([box, tf.stack([side, side])], axis=0), channels=3
        )
        window = apply_orientation(window, orientation)
        return _finish(window, size)

    def other_path() -> tf.Tensor:
        image = _decode_stored(encoded, accurate_jpeg=False)
        image.set_shape([None, None, 3])
        image = apply_orientation(image, orientation)
        shape = tf.shape(image)
        top, left, side = _window(shape[0], shape[1], size, seed if training else None)
        return _finish(tf.image.crop_to_bounding_box(image, top, left, side, side), size)

    image = tf.cond(tf.io.is_jpeg(encoded), jpeg_path, other_path)
    image.set_shape([size, size, 3])
    return _flip(image, seed) if training else image
