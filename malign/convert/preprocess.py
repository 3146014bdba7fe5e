"""The image preprocessing of a transformers ALIGN checkpoint, as TensorFlow ops.

``kakaobrain/align-base`` ships an ``EfficientNetImageProcessor`` that resizes every
image to 346x346 (both sides, bilinear: the aspect ratio is not kept), cuts out the
centre 289x289 and maps pixels to ``pixel / 127.5 - 1``. A converted malign model takes
float32 RGB in [0, 1] and applies the ``2x - 1`` itself (its image tower's first layer),
so :func:`processor_image_preprocess` stops at [0, 1]: feeding its output to the
converted model is the checkpoint's own pipeline.

The evaluation crop is a property of a malign model (``ImageTowerConfig.eval_resize``).
A converted checkpoint whose processor resizes to a fixed height x width gets
``eval_resize="square"`` (:attr:`ImageProcessorSettings.eval_resize`), and so does the
``align-base`` preset: ``malign eval``, zero-shot, the training callback and the exported
SavedModel then all use ``malign.data.preprocess.eval_crop(..., eval_resize="square")``,
which resizes both sides to ``resize_size(image_size)`` (346 for 289), rounds to whole pixel
values and cuts the centre: the same pixels as :func:`processor_image_preprocess` (tested
equal) and within one grey level of the processor itself (PIL's and TensorFlow's
antialiased resizes round differently); ``decode_and_crop`` decodes JPEGs with the
accurate integer DCT, as PIL does, so from the file bytes on the pixels stay within that
grey level. Models trained by malign keep the default
"shorter_side" (the paper's crop: the shorter side to 346, aspect ratio kept, centre
square). On a non-square image the processor's crop holds the whole width, squeezed,
while the shorter-side crop holds the centre square unsqueezed, so a checkpoint is
evaluated with its own processor's layout only through ``eval_resize="square"``.
:meth:`ImageProcessorSettings.eval_crop_mismatch` says when a processor's sizes are not
the ones ``eval_crop`` uses (for example another resize-to-crop ratio).

This module stays the general reproduction of a processor (any height x width, any
resample filter), e.g. to feed images to ``model.embed_image`` directly.

Example:
    >>> import tensorflow as tf
    >>> settings = ImageProcessorSettings.align_base()
    >>> image = tf.zeros([480, 640, 3], tf.uint8)
    >>> processor_image_preprocess(image, settings).shape.as_list()
    [289, 289, 3]
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import tensorflow as tf

from malign.convert.checkpoint import ConversionError, checkpoint_directory
from malign.convert.inputs import read_json_object
from malign.models.image_tower import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["ImageProcessorSettings", "processor_image_preprocess", "read_image_processor"]

#: PIL resampling codes used by transformers image processors -> tf.image.resize methods.
_RESAMPLE = {0: "nearest", 1: "lanczos5", 2: "bilinear", 3: "bicubic", 4: "bilinear",
             5: "bicubic"}


@dataclasses.dataclass(frozen=True)
class ImageProcessorSettings:
    """What a transformers ``EfficientNetImageProcessor`` does, in malign's terms.

    Args:
        resize: (height, width) every image is resized to first, or None for no resize.
        crop: (height, width) of the centre crop, or None for none.
        method: ``tf.image.resize`` method matching the processor's ``resample``.
        normalization: the malign ``ImageTowerConfig.normalization`` that equals the
            processor's rescaling of [0, 1] pixels ("minus_one_to_one" for align-base).

    Example:
        >>> ImageProcessorSettings.align_base().image_size
        289
    """

    resize: tuple[int, int] | None = (346, 346)
    crop: tuple[int, int] | None = (289, 289)
    method: str = "bilinear"
    normalization: str = "minus_one_to_one"

    @classmethod
    def align_base(cls) -> ImageProcessorSettings:
        """The settings of ``kakaobrain/align-base`` (346 -> 289, bilinear, 2x - 1)."""
        return cls()

    @property
    def eval_resize(self) -> str:
        """The malign ``ImageTowerConfig.eval_resize`` of this processor.

        "square" when it resizes every image to a fixed height x width (align-base's
        346x346), else "shorter_side".

        Example:
            >>> ImageProcessorSettings.align_base().eval_resize
            'square'
        """
        return "square" if self.resize is not None else "shorter_side"

    def eval_crop_mismatch(self, image_size: int) -> str | None:
        """How malign's evaluation crop of a model with ``image_size`` differs from this
        processor, or None when they are the same operations.

        ``eval_crop(..., eval_resize=self.eval_resize)`` resizes to
        ``resize_size(image_size)`` on both sides with antialiased bilinear interpolation
        and crops the centre ``image_size``; a processor with another resize size, a
        non-square resize, another filter or no resize at all gives other pixels.

        Args:
            image_size: the model's input size.

        Example:
            >>> ImageProcessorSettings.align_base().eval_crop_mismatch(289) is None
            True
            >>> ImageProcessorSettings(resize=(320, 320)).eval_crop_mismatch(289)
            'the processor resizes to 320x320 and crops 289x289; malign evaluates with 346x346 and 289x289'
        """
        from malign.data.preprocess import resize_size

        side = resize_size(image_size)
        if self.resize is None:
            crop = f"crops {self.crop[0]}x{self.crop[1]}" if self.crop else "does nothing"
            return (f"the processor does not resize (it {crop}); malign evaluates by "
                    f"resizing the shorter side to {side} and cropping {image_size}x{image_size}")
        problems = []
        crop = "x".join(map(str, self.crop)) if self.crop else "nothing"
        if self.resize != (side, side) or self.crop != (image_size, image_size):
            problems.append(f"the processor resizes to {self.resize[0]}x{self.resize[1]} and "
                            f"crops {crop}; malign evaluates with {side}x{side} and "
                            f"{image_size}x{image_size}")
        if self.method != "bilinear":
            problems.append(f"the processor resizes with {self.method}; malign evaluates "
                            "with bilinear")
        return "; ".join(problems) or None

    @property
    def image_size(self) -> int:
        """The side of the square images the model sees."""
        size = self.crop or self.resize
        if size is None:
            raise ConversionError("the image processor neither resizes nor crops: no image size")
        if size[0] != size[1]:
            raise ConversionError(f"the image processor makes {size[0]}x{size[1]} images; "
                                  "malign models take square images")
        return int(size[0])

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _size(value: Any, field: str) -> tuple[int, int]:
    if isinstance(value, dict):
        if "height" in value and "width" in value:
            return int(value["height"]), int(value["width"])
        if "shortest_edge" in value:
            raise ConversionError(
                f"image processor {field}={value}: a shortest-edge resize is not the "
                "EfficientNet processor's; malign reproduces only fixed height/width sizes"
            )
        raise ConversionError(f"image processor {field}={value}: expected height and width")
    if isinstance(value, (int, float)):
        return int(value), int(value)
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return int(value[0]), int(value[1])
    raise ConversionError(f"image processor {field}={value!r}: expected height and width")


def _close(a: Any, b: Any, tol: float = 1e-6) -> bool:
    try:
        if isinstance(a, (list, tuple)):
            return len(a) == len(b) and all(math.isclose(x, y, abs_tol=tol) for x, y in zip(a, b))
        return math.isclose(float(a), float(b), abs_tol=tol)
    except (TypeError, ValueError):
        return False


def settings_from_processor_dict(data: dict[str, Any]) -> ImageProcessorSettings:
    """Maps an ``EfficientNetImageProcessor`` config (a dict) to malign settings.

    Args:
        data: the image processor's JSON (``preprocessor_config.json``, or the
            ``image_processor`` entry of ``processor_config.json``).

    Raises:
        ConversionError: for processing malign's normalisations cannot reproduce
            (``include_top``, other means and deviations), naming the fields.

    Example:
        >>> settings_from_processor_dict({"do_resize": True, "size": {"height": 346, "width": 346},
        ...     "do_center_crop": True, "crop_size": {"height": 289, "width": 289},
        ...     "do_rescale": True, "rescale_factor": 1 / 127.5, "rescale_offset": True,
        ...     "do_normalize": False, "include_top": False, "resample": 2}).normalization
        'minus_one_to_one'
    """
    kind = data.get("image_processor_type", "EfficientNetImageProcessor")
    if not str(kind).startswith("EfficientNetImageProcessor"):
        raise ConversionError(f"image_processor_type {kind!r}: only EfficientNetImageProcessor "
                              "(the ALIGN processor) is supported")
    resize = _size(data.get("size", {"height": 346, "width": 346}), "size") \
        if data.get("do_resize", True) else None
    crop = _size(data.get("crop_size", {"height": 289, "width": 289}), "crop_size") \
        if data.get("do_center_crop", False) else None
    resample = data.get("resample", 3)
    if resample not in _RESAMPLE:
        raise ConversionError(f"image processor resample={resample!r}: unknown PIL filter")

    do_rescale = data.get("do_rescale", True)
    factor = data.get("rescale_factor", 1 / 255) if do_rescale else 1.0
    offset = bool(data.get("rescale_offset", False)) and do_rescale
    do_normalize = data.get("do_normalize", True)
    mean = data.get("image_mean", [0.5, 0.5, 0.5])
    std = data.get("image_std", [0.5, 0.5, 0.5])
    if data.get("include_top", True):
        raise ConversionError(
            "image processor include_top=true divides by image_std a second time (the "
            "EfficientNet classifier's input); ALIGN checkpoints use include_top=false"
        )
    if offset and _close(factor, 1 / 127.5) and not do_normalize:
        normalization = "minus_one_to_one"
    elif not offset and _close(factor, 1 / 255) and do_normalize and _close(
            mean, list(IMAGENET_MEAN), 1e-4) and _close(std, list(IMAGENET_STD), 1e-4):
        normalization = "imagenet"
    elif not offset and _close(factor, 1 / 255) and do_normalize and _close(
            mean, [0.5] * 3) and _close(std, [0.5] * 3):
        normalization = "minus_one_to_one"
    elif not offset and _close(factor, 1 / 255) and not do_normalize:
        normalization = "none"
    else:
        raise ConversionError(
            "image processor rescaling is not one malign reproduces: "
            f"do_rescale={do_rescale}, rescale_factor={factor}, rescale_offset={offset}, "
            f"do_normalize={do_normalize}, image_mean={mean}, image_std={std} (supported: "
            "pixel/127.5-1, ImageNet mean/std, mean=std=0.5, or plain /255)"
        )
    return ImageProcessorSettings(resize=resize, crop=crop, method=_RESAMPLE[resample],
                                  normalization=normalization)


def read_image_processor(path: str | os.PathLike) -> ImageProcessorSettings | None:
    """Reads a checkpoint directory's image processor, if it has one.

    ``preprocessor_config.json`` (what ``kakaobrain/align-base`` ships) is read first,
    then the ``image_processor`` entry of ``processor_config.json`` (what
    ``AlignProcessor.save_pretrained`` writes in transformers 5).

    Args:
        path: a checkpoint directory (a file's directory is used for a file).

    Returns:
        The settings, or None when neither file exists.

    Raises:
        ConversionError: naming the file, when it is not valid JSON, holds settings of the
            wrong type, or processing malign cannot reproduce.

    Example:
        >>> read_image_processor("tests/fixtures/align_tiny").image_size  # doctest: +SKIP
        67
    """
    directory = checkpoint_directory(path)
    flat = directory / "preprocessor_config.json"
    nested = directory / "processor_config.json"
    if flat.is_file():
        file, data = flat, read_json_object(flat, "the image processor config")
    elif nested.is_file():
        file = nested
        data = read_json_object(nested, "the processor config").get("image_processor")
        if not isinstance(data, dict):
            return None
    else:
        return None
    try:
        return settings_from_processor_dict(data)
    except ConversionError as error:
        raise ConversionError(f"{file}: {error}") from None
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, OverflowError) as error:
        raise ConversionError(f"{file}: a setting of the wrong type ({type(error).__name__}: "
                              f"{error}); the file is not an image processor config or it "
                              "is damaged") from None


def processor_image_preprocess(image: tf.Tensor, settings: ImageProcessorSettings) -> tf.Tensor:
    """The checkpoint processor's resize and centre crop, then pixels / 255.

    Feed it the pixels PIL decodes (for a JPEG: ``malign.data.decode_image(data,
    accurate_jpeg=True)``; TensorFlow's default fast DCT differs by a few grey levels).

    Resizes the whole image to ``settings.resize`` (aspect ratio not kept, antialiased
    like PIL), rounds to whole pixel values as the processor's uint8 resize does, cuts
    the centre ``settings.crop`` (offsets ``(size - crop) // 2``), and scales to [0, 1].
    The converted model's first layer then applies the checkpoint's rescaling.

    Args:
        image: uint8 (or float in [0, 255]) ``[H, W, 3]``.
        settings: from :func:`read_image_processor` or ``ImageProcessorSettings.align_base()``.

    Returns:
        float32 ``[size, size, 3]`` in [0, 1].

    Example:
        >>> img = tf.fill([50, 80, 3], tf.constant(255, tf.uint8))
        >>> out = processor_image_preprocess(img, ImageProcessorSettings((40, 40), (33, 33)))
        >>> out.shape.as_list(), float(out.numpy().min())
        ([33, 33, 3], 1.0)
    """
    image = tf.convert_to_tensor(image)
    image = tf.cast(image, tf.float32)
    if settings.resize is not None:
        image = tf.image.resize(image, list(settings.resize), method=settings.method,
                                antialias=True)
        image = tf.clip_by_value(tf.round(image), 0.0, 255.0)
    if settings.crop is not None:
        height, width = settings.crop
        shape = tf.shape(image)
        top = (shape[0] - height) // 2
        left = (shape[1] - width) // 2
        image = tf.image.crop_to_bounding_box(image, top, left, height, width)
        image.set_shape([height, width, 3])
    return image / 255.0
