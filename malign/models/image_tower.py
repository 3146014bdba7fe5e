"""EfficientNet image tower (B0..B7 and the ALIGN variant).

The tower follows the EfficientNet compound scaling (width/depth coefficients
over the B0 stage table) with the padding rules of the transformers ALIGN
implementation, so the released ``kakaobrain/align-base`` weights load into it
exactly: the stem pads one pixel right and bottom before a ``valid`` stride-2
conv; stride-2 depthwise convs pad ``k//2 - 1`` before and ``k//2`` after
(``k//2`` on both sides for blocks listed in ``depthwise_padding``). On even
input sizes both rules equal TensorFlow's ``same`` padding.

Layer names are stable and used by the checkpoint converter:
``stem_conv``, ``stem_bn``, ``block{i}_expand_conv``, ``block{i}_expand_bn``,
``block{i}_dwconv``, ``block{i}_dw_bn``, ``block{i}_se_reduce``,
``block{i}_se_expand``, ``block{i}_project_conv``, ``block{i}_project_bn``,
``top_conv``, ``top_bn``, ``image_projection`` (``i`` counts blocks from 0).

Example:
    >>> from malign.config import ImageTowerConfig
    >>> tower = ImageTower(ImageTowerConfig(width_coefficient=0.25, depth_coefficient=0.25,
    ...                                     image_size=32))
    >>> tower(np.zeros((2, 32, 32, 3), "float32")).shape
    TensorShape([2, 80])
"""

from __future__ import annotations

import keras
import numpy as np  # noqa: F401  (used in the docstring example)

from malign.config import ImageTowerConfig
from malign.models.pointwise_conv import pointwise_conv2d

# The width/depth arithmetic is TensorFlow-free (config checks run before TF loads); the
# tower and the converter use it from here as before.
from malign.models.sizes import (  # noqa: F401  (re-exported)
    block_specs,
    image_output_dim,
    round_filters,
    round_repeats,
    se_filters,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _normalization_layer(kind: str) -> keras.layers.Layer | None:
    if kind == "minus_one_to_one":
        return keras.layers.Rescaling(2.0, offset=-1.0, name="normalize")
    if kind == "imagenet":
        return keras.layers.Normalization(
            mean=list(IMAGENET_MEAN), variance=[s * s for s in IMAGENET_STD], name="normalize"
        )
    return None


@keras.saving.register_keras_serializable(package="malign")
class ImageTower(keras.Model):
    """EfficientNet image encoder: images float32 RGB in [0, 1] -> pooled features.

    Args:
        config: an ``ImageTowerConfig`` (or its dict).
        **kwargs: ``keras.Model`` arguments (name, dtype).

    Example:
        >>> from malign.presets import get_preset
        >>> tower = ImageTower(get_preset("tiny").image)
        >>> tower.output_dim
        32
    """

    def __init__(self, config: ImageTowerConfig | dict, **kwargs):
        if isinstance(config, dict):
            config = ImageTowerConfig.from_dict(config)
        config.validate()
        bn_args = dict(
            axis=-1,
            momentum=config.batch_norm_momentum,
            epsilon=config.batch_norm_epsilon,
            synchronized=config.synchronized_batch_norm,
        )

        def bn(name):
            return keras.layers.BatchNormalization(name=name, **bn_args)

        images = keras.Input(shape=(None, None, 3), name="image", dtype="float32")
        x = images
        norm = _normalization_layer(config.normalization)
        if norm is not None:
            x = norm(x)

        stem = round_filters(config.stem_filters, config.width_coefficient, config.depth_divisor)
        x = keras.layers.ZeroPadding2D(((0, 1), (0, 1)), name="stem_pad")(x)
        x = keras.layers.Conv2D(stem, 3, strides=2, padding="valid", use_bias=False,
                                name="stem_conv")(x)
        x = bn("stem_bn")(x)
        x = keras.layers.Activation("swish", name="stem_act")(x)

        specs = block_specs(config)
        # Stage boundaries (input and output of each stage's blocks), for recomputation.
        stage_ends, first = [], 0
        for stage in config.stages:
            first += round_repeats(stage[1], config.depth_coefficient)
            stage_ends.append(first)
        boundaries = [x]
        for i, spec in enumerate(specs):
            rate = config.drop_connect_rate * i / len(specs)
            x = _mbconv_block(x, i, spec, config, bn, rate)
            if i + 1 in stage_ends:
                boundaries.append(x)

        if config.top_filters:
            top = round_filters(config.top_filters, config.width_coefficient,
                                config.depth_divisor)
            x = pointwise_conv2d(top, padding="same", use_bias=False, name="top_conv")(x)
            x = bn("top_bn")(x)
            x = keras.layers.Activation("swish", name="top_act")(x)
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        if config.dropout_rate:
            x = keras.layers.Dropout(config.dropout_rate, name="top_dropout")(x)
        if config.projection_dim:
            x = keras.layers.Dense(config.projection_dim, name="image_projection")(x)
        super().__init__(inputs=images, outputs=x, **kwargs)
        self.tower_config = config
        self.output_dim = image_output_dim(config)
        if config.freeze_batch_norm:
            for layer in self.layers:
                if isinstance(layer, keras.layers.BatchNormalization):
                    # Keras runs a non-trainable batch norm in inference mode.
                    layer.trainable = False
        #: Recompute each stage's activations in the backward pass (``training.remat``).
        self.remat = False
        # The graph cut at the stage boundaries: head (input .. stem), one segment per
        # stage, tail (top conv .. projection). They share this tower's layers; kept out of
        # Keras' tracking (a plain tuple in __dict__) so saving and weights see the tower only.
        segments = [keras.Model(a, b, name=f"{self.name}_segment_{j}")
                    for j, (a, b) in enumerate(zip([images, *boundaries], [*boundaries, x]))]
        self.__dict__["_segments"] = tuple(segments)

    def call(self, inputs, training=None, mask=None, **kwargs):
        """The tower's graph; with ``remat`` on, each stage is recomputed in the backward pass."""
        if not self.remat:
            return super().call(inputs, training=training, mask=mask, **kwargs)
        from malign.models import remat

        head, *stages, tail = self._segments
        x = head(inputs, training=training)
        for stage in stages:
            x = remat.recompute_grad(lambda t, stage=stage: stage(t, training=training), stage)(x)
        return tail(x, training=training)

    def get_config(self) -> dict:
        return {"config": self.tower_config.to_dict(), "name": self.name,
                "trainable": self.trainable}

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)


def _mbconv_block(x, index: int, spec: dict, config: ImageTowerConfig, bn, drop_rate: float):
    """Inverted-residual block with squeeze-excite (MBConv)."""
    p = f"block{index}_"
    inputs = x
    filters = spec["filters_in"] * spec["expand_ratio"]
    if spec["expand_ratio"] != 1:
        x = pointwise_conv2d(filters, padding="same", use_bias=False,
                             name=p + "expand_conv")(x)
        x = bn(p + "expand_bn")(x)
        x = keras.layers.Activation("swish", name=p + "expand_act")(x)

    kernel = spec["kernel"]
    if spec["stride"] == 2:
        half = kernel // 2
        if index in config.depthwise_padding:
            pad = ((half, half), (half, half))
        else:
            pad = ((half - 1, half), (half - 1, half))
        x = keras.layers.ZeroPadding2D(pad, name=p + "dwpad")(x)
        padding = "valid"
    else:
        padding = "same"
    x = keras.layers.DepthwiseConv2D(kernel, strides=spec["stride"], padding=padding,
                                     use_bias=False, name=p + "dwconv")(x)
    x = bn(p + "dw_bn")(x)
    x = keras.layers.Activation("swish", name=p + "dw_act")(x)

    se = keras.layers.GlobalAveragePooling2D(keepdims=True, name=p + "se_squeeze")(x)
    se = pointwise_conv2d(se_filters(spec["filters_in"], config.se_ratio), padding="same",
                          activation="swish", name=p + "se_reduce")(se)
    se = pointwise_conv2d(filters, padding="same", activation="sigmoid",
                          name=p + "se_expand")(se)
    x = keras.layers.Multiply(name=p + "se_excite")([x, se])

    x = pointwise_conv2d(spec["filters_out"], padding="same", use_bias=False,
                         name=p + "project_conv")(x)
    x = bn(p + "project_bn")(x)
    if spec["residual"]:
        if drop_rate > 0:
            x = keras.layers.Dropout(drop_rate, noise_shape=(None, 1, 1, 1),
                                     name=p + "drop")(x)
        x = keras.layers.Add(name=p + "add")([x, inputs])
    return x
