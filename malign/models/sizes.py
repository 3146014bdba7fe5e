"""Tower shapes and weight counts by arithmetic, without TensorFlow.

The EfficientNet width and depth rules (``round_filters``, ``round_repeats``, the block
table ``block_specs``) live here so that the config checks (``ModelConfig.image_embedding_dim``)
and the weight counts of the presets run before TensorFlow loads: ``malign train``'s launcher
answers a bad ``--set`` without importing it. :mod:`malign.models.image_tower` builds its
layers from the same functions.

:func:`count_model_weights` counts what :func:`malign.models.align_model.count_params` counts
on a built :class:`~malign.models.align_model.AlignModel` (every weight, trainable or not):

- image tower: the stem conv and batch norm, each MBConv block (expand conv + BN when the
  expansion ratio is not 1, depthwise conv + BN, squeeze-excite reduce/expand convs with
  biases, project conv + BN), the optional top conv + BN and the optional projection (with
  bias). A batch norm holds 4 vectors (gamma, beta, moving mean, moving variance); convs have
  no bias. The input normalisation holds no weights.
- text tower (keras-hub ``BertBackbone``): token, position (``max_sequence_length`` rows) and
  segment (2 rows) embeddings, the embedding layer norm; per layer the query, key, value and
  output projections (with biases), two layer norms and the two feed-forward denses (with
  biases); the frozen tanh pooler; the optional projection (with bias).
- the model: the temperature, and the logit bias of the sigmoid loss.

Everything here imports only :mod:`malign.config`'s dataclasses (by type, for hints).

Example:
    >>> from malign.config import ImageTowerConfig
    >>> image_output_dim(ImageTowerConfig(width_coefficient=2.0, depth_coefficient=3.1))
    640
    >>> len(block_specs(ImageTowerConfig(width_coefficient=2.0, depth_coefficient=3.1)))
    55
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from malign.config import ImageTowerConfig, ModelConfig, TextTowerConfig

__all__ = [
    "WeightCount",
    "block_specs",
    "count_image_tower_weights",
    "count_model_weights",
    "count_text_tower_weights",
    "image_output_dim",
    "round_filters",
    "round_repeats",
    "se_filters",
]

#: Rows of keras-hub BertBackbone's segment embedding (its ``num_segments`` default).
BERT_NUM_SEGMENTS = 2
#: Vectors a batch norm holds per channel: gamma, beta, moving mean, moving variance.
_BN = 4
#: Vectors a layer norm holds per channel: gamma, beta.
_LN = 2


def round_filters(filters: float, width_coefficient: float, divisor: int) -> int:
    """EfficientNet channel rounding (as in keras.applications and transformers).

    Example:
        >>> round_filters(32, 2.0, 8), round_filters(320, 1.1, 8)
        (64, 352)
    """
    filters *= width_coefficient
    new = max(divisor, int(filters + divisor / 2) // divisor * divisor)
    if new < 0.9 * filters:
        new += divisor
    return int(new)


def round_repeats(repeats: int, depth_coefficient: float) -> int:
    """EfficientNet depth rounding.

    Example:
        >>> round_repeats(4, 3.1)
        13
    """
    return int(math.ceil(depth_coefficient * repeats))


def block_specs(config: ImageTowerConfig) -> list[dict]:
    """Expands the stage table into one dict per block (the tower's exact layout).

    Each dict holds ``kernel``, ``filters_in``, ``filters_out``, ``expand_ratio``, ``stride``
    and ``residual``.

    Example:
        >>> from malign.config import ImageTowerConfig
        >>> block_specs(ImageTowerConfig())[1]["filters_in"], len(block_specs(ImageTowerConfig()))
        (16, 16)
    """
    specs = []
    for kernel, repeats, f_in, f_out, expand, stride in config.stages:
        c_in = round_filters(f_in, config.width_coefficient, config.depth_divisor)
        c_out = round_filters(f_out, config.width_coefficient, config.depth_divisor)
        for j in range(round_repeats(repeats, config.depth_coefficient)):
            specs.append(dict(
                kernel=kernel,
                filters_in=c_in if j == 0 else c_out,
                filters_out=c_out,
                expand_ratio=expand,
                stride=stride if j == 0 else 1,
                residual=j > 0,
            ))
    return specs


def _pooled_width(config: ImageTowerConfig) -> int:
    """Channels after global pooling (before the optional projection)."""
    if config.top_filters:
        return round_filters(config.top_filters, config.width_coefficient, config.depth_divisor)
    # The last block writes the last stage's (rounded) width; computed without expanding
    # the blocks, so a config check on a huge depth_coefficient stays instant.
    return round_filters(config.stages[-1][3], config.width_coefficient, config.depth_divisor)


def image_output_dim(config: ImageTowerConfig) -> int:
    """Width of the image tower's output embedding.

    Example:
        >>> from malign.config import ImageTowerConfig
        >>> image_output_dim(ImageTowerConfig()), image_output_dim(ImageTowerConfig(top_filters=1280))
        (320, 1280)
    """
    if config.projection_dim:
        return config.projection_dim
    return _pooled_width(config)


def se_filters(filters_in: int, se_ratio: float) -> int:
    """Squeeze-excite width of a block with ``filters_in`` input channels."""
    return max(1, int(filters_in * se_ratio))


def count_image_tower_weights(config: ImageTowerConfig) -> int:
    """Weights of the EfficientNet image tower (batch-norm statistics included).

    Example:
        >>> from malign.config import ImageTowerConfig
        >>> count_image_tower_weights(ImageTowerConfig())  # B0 without top conv
        3634844
    """
    divisor = config.depth_divisor
    stem = round_filters(config.stem_filters, config.width_coefficient, divisor)
    total = 3 * 3 * 3 * stem + _BN * stem
    for spec in block_specs(config):
        c_in, c_out, k = spec["filters_in"], spec["filters_out"], spec["kernel"]
        filters = c_in * spec["expand_ratio"]
        if spec["expand_ratio"] != 1:
            total += c_in * filters + _BN * filters
        total += k * k * filters + _BN * filters  # depthwise conv, one kernel per channel
        se = se_filters(c_in, config.se_ratio)
        total += filters * se + se + se * filters + filters  # SE reduce and expand, with biases
        total += filters * c_out + _BN * c_out
    if config.top_filters:
        top = round_filters(config.top_filters, config.width_coefficient, divisor)
        total += block_specs(config)[-1]["filters_out"] * top + _BN * top
    if config.projection_dim:
        total += _pooled_width(config) * config.projection_dim + config.projection_dim
    return total


def count_text_tower_weights(config: TextTowerConfig) -> dict[str, int]:
    """Weights of the BERT text tower, split into ``token_embedding`` and ``rest``.

    Example:
        >>> from malign.config import TextTowerConfig
        >>> count_text_tower_weights(TextTowerConfig(vocabulary_size=30522, projection_dim=640))
        {'token_embedding': 23440896, 'rest': 86533504}
    """
    h, i = config.hidden_dim, config.intermediate_dim
    rest = config.max_sequence_length * h + BERT_NUM_SEGMENTS * h + _LN * h
    per_layer = (
        4 * (h * h + h)  # query, key, value, attention output (heads * head_dim = hidden)
        + 2 * _LN * h  # attention and feed-forward layer norms
        + h * i + i + i * h + h  # feed-forward intermediate and output denses
    )
    rest += config.num_layers * per_layer
    rest += h * h + h  # the tanh pooler (frozen, kept for checkpoints that have one)
    if config.projection_dim:
        rest += h * config.projection_dim + config.projection_dim
    return {"token_embedding": config.vocabulary_size * h, "rest": rest}


@dataclasses.dataclass(frozen=True)
class WeightCount:
    """A model's weights by part.

    Args:
        image_tower: the EfficientNet tower (with batch-norm statistics and projection).
        token_embedding: the text tower's token embedding (vocabulary x hidden width).
        text_rest: the rest of the text tower (positions, layers, pooler, projection).
        model: the model's own scalars (temperature; sigmoid bias).
    """

    image_tower: int
    token_embedding: int
    text_rest: int
    model: int

    @property
    def text_tower(self) -> int:
        """The whole text tower, token embedding included."""
        return self.token_embedding + self.text_rest

    @property
    def total(self) -> int:
        """Every weight, as ``count_params`` of the built model."""
        return self.image_tower + self.text_tower + self.model


def count_model_weights(config: ModelConfig) -> WeightCount:
    """Weights of the AlignModel a config builds, by part, without building it.

    Example:
        >>> from malign.presets import get_preset
        >>> count_model_weights(get_preset("tiny")).total
        66239
    """
    text = count_text_tower_weights(config.text)
    return WeightCount(
        image_tower=count_image_tower_weights(config.image),
        token_embedding=text["token_embedding"],
        text_rest=text["rest"],
        model=1 + (1 if config.loss == "sigmoid" else 0),
    )
