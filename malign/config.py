"""Typed, validated configuration for towers, models, data, training and experiments.

Every config is a frozen dataclass: built once, validated, written next to the
checkpoints, never mutated. ``to_dict``/``from_dict`` round-trip through plain
JSON types, and ``with_overrides`` applies dotted ``key=value`` settings (the
``--set`` flag of ``malign train``) by building a new config.

Example:
    >>> from malign.config import ImageTowerConfig
    >>> cfg = ImageTowerConfig(width_coefficient=1.0, depth_coefficient=1.0, image_size=224)
    >>> cfg.validate()
    >>> ImageTowerConfig.from_dict(cfg.to_dict()) == cfg
    True
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from typing import Any, ClassVar

__all__ = [
    "ConfigError",
    "ImageTowerConfig",
    "TextTowerConfig",
    "ModelConfig",
    "DataConfig",
    "TrainingConfig",
    "DistillationConfig",
    "ExperimentConfig",
    "DEFAULT_WARMUP_STEPS",
    "INT_MAX",
    "MAX_IMAGE_BLOCKS",
    "MAX_STEPS",
    "DEFAULT_STEPS_PER_CHECKPOINT",
    "derived_checkpoint_interval",
    "derived_warmup_steps",
    "divisors",
]


def _did_you_mean(name: str, choices) -> str:
    """`` (did you mean 'steps'?)`` for the closest of ``choices``, or ``""``.

    Example:
        >>> _did_you_mean("step", ["steps", "seed"])
        " (did you mean 'steps'?)"
    """
    import difflib

    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the field."""


def _join(owner: str, field: str) -> str:
    """The dotted name of ``field`` inside the config named ``owner`` ("" = the experiment)."""
    return f"{owner}.{field}" if owner else field


def _fail(owner: str, field: str, message: str) -> None:
    raise ConfigError(f"{_join(owner, field)}: {message}")


class _Config:
    """Mixin: dict round-trip, dotted overrides, validation.

    ``validate(path)`` checks every field's type by its annotation, in every config class
    and nested config (integers are integers, not booleans; floats are finite numbers;
    lists are lists of their item type; nothing required is null), then the values
    (``_check_values``), then that every integer is in ``[0, INT_MAX]`` (they all count
    something). Errors name the field by its dotted path in the experiment
    (``model.text.vocabulary_size``), the name ``--set`` takes, and what it expects.
    """

    _NAME: ClassVar[str] = "config"
    #: The dotted name of this config's fields when it is validated on its own (the
    #: experiment's fields have none: ``training.steps``, ``model.text.vocabulary_size``).
    _ROOT: ClassVar[str | None] = None

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, _Config):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = [list(v) if isinstance(v, tuple) else v for v in value]
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: str | None = None):
        """Builds the config from plain JSON types, converting each value to its field's type.

        Args:
            data: field name -> value (nested configs as mappings).
            path: the dotted name of this config in error messages (default: its own name).

        Raises:
            ConfigError: naming the field, for an unknown field or a value of the wrong type.
        """
        path = cls._default_path() if path is None else path
        if not isinstance(data, dict):
            raise ConfigError(f"{path or cls._NAME}: expected a mapping, got {type(data).__name__}")
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(
                f"{path or cls._NAME}: unknown field(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(names))}"
            )
        kwargs = {}
        for key, value in data.items():
            kwargs[key] = _coerce(path, key, hints[key], value)
        return cls(**kwargs)

    def replace(self, **changes):
        """Returns a copy with ``changes`` applied (validated)."""
        new = dataclasses.replace(self, **changes)
        new.validate()
        return new

    def with_overrides(self, overrides: dict[str, Any]):
        """Returns a copy with dotted overrides, e.g. ``{"training.steps": 10}``.

        A value of ``None`` (``--set training.warmup_steps=null``) unsets a field that may be
        unset (derived at the start of a run, see ``TrainingConfig.resolve``).
        """
        data = self.to_dict()
        for dotted, value in overrides.items():
            node = data
            parts = dotted.split(".")
            for depth, part in enumerate(parts[:-1]):
                if part not in node or not isinstance(node[part], dict):
                    sections = [k for k, v in node.items() if isinstance(v, dict)]
                    raise ConfigError(
                        f"no config section {'.'.join(parts[:depth + 1])!r} in --set "
                        f"{dotted!r}{_did_you_mean(part, sections)}; sections here: "
                        f"{', '.join(sorted(sections)) or '(none)'}")
                node = node[part]
            if parts[-1] not in node:
                raise ConfigError(
                    f"unknown field {dotted!r}{_did_you_mean(parts[-1], node)}; "
                    f"known here: {', '.join(sorted(node))}"
                )
            node[parts[-1]] = value
        new = type(self).from_dict(data)
        new.validate()
        return new

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def _default_path(cls) -> str:
        return cls._NAME if cls._ROOT is None else cls._ROOT

    def validate(self, path: str | None = None) -> None:
        """Checks every field's type, then the values; raises ConfigError naming the field.

        Args:
            path: the dotted name of this config inside an experiment (``"model.text"``);
                default its own name.
        """
        path = self._default_path() if path is None else path
        hints = typing.get_type_hints(type(self))
        for counts in (False, True):
            for f in dataclasses.fields(self):
                _check_type(path, f.name, hints[f.name], getattr(self, f.name), counts)
            if not counts:
                self._check_values(path)

    def _check_values(self, path: str) -> None:  # pragma: no cover - overridden
        pass


def _is_optional(hint: Any) -> tuple[bool, Any]:
    """(True, X) for ``X | None``; (False, hint) otherwise."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return True, args[0]
    return False, hint


#: Every integer field counts something (sizes, steps, widths, a seed): it must lie in
#: ``[0, INT_MAX]``; ``INT_MAX`` is the largest int64 (TensorFlow's step and size counters).
INT_MAX = 2**63 - 1


def _describe(hint: Any) -> str:
    if isinstance(hint, type) and issubclass(hint, _Config):
        return "a mapping of fields"
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        return f"a list of {_plural(args[0])}" if args else "a list"
    return {int: "an integer in [0, 2**63)", float: "a finite number", str: "a string",
            bool: "a boolean"}.get(hint, str(hint))


def _plural(hint: Any) -> str:
    """``_describe`` of a list item, in the plural ("integers in [0, ...]", "lists of ...")."""
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        return f"lists of {_plural(args[0])}" if args else "lists"
    return {int: "integers in [0, 2**63)", float: "finite numbers", str: "strings",
            bool: "booleans"}.get(hint, str(hint))


def _shown(value: Any, limit: int = 60) -> str:
    """``repr(value)``, shortened to ``limit`` characters (a 400-digit number stays readable)."""
    try:
        text = repr(value)
    except ValueError:  # an int beyond Python's int-to-str digit limit
        return f"an integer of about {int(value.bit_length() * 0.30103)} digits"
    return text if len(text) <= limit else f"{text[:limit - 5]}...{text[-2:]}"


def _is_finite(value: int | float) -> bool:
    """True for a number that is a finite float (an int too large for a float is not)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _check_type(owner: str, key: str, hint: Any, value: Any, counts: bool = True) -> None:
    """Raises ConfigError unless ``value`` has the type ``hint`` (finite, for numbers).

    Args:
        counts: also refuse negative integers (every integer field counts something).
            ``validate`` checks the types without it first, so that a config's own
            ``_check_values`` (whose messages suggest values that work) sees every
            negative number before this generic check.
    """
    optional, hint = _is_optional(hint)
    if value is None:
        if optional:
            return
        _fail(owner, key, f"must be set: expected {_describe(hint)}, got null")
    if isinstance(hint, type) and issubclass(hint, _Config):
        if not isinstance(value, hint):
            _fail(owner, key, f"expected {_describe(hint)}, got {_shown(value)}")
        return
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, tuple):
            _fail(owner, key, f"expected {_describe(hint)}, got {_shown(value)}")
        args = typing.get_args(hint)
        if args:
            for item in value:
                _check_type(owner, key, args[0], item, counts)
        return
    ok = True
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = (isinstance(value, int) and not isinstance(value, bool)
              and (0 if counts else -INT_MAX - 1) <= value <= INT_MAX)
    elif hint is float:
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
              and _is_finite(value))
    elif hint is str:
        ok = isinstance(value, str)
    if not ok:
        _fail(owner, key, f"expected {_describe(hint)}, got {_shown(value)}")


def _coerce(owner: str, key: str, hint: Any, value: Any) -> Any:
    """Converts a JSON/CLI value (lists, strings) to the annotated field type.

    Raises:
        ConfigError: naming ``owner.key`` when the value cannot be one of that type (a
            null for a field that must be set, a non-finite number, a number for a list).
    """
    optional, hint = _is_optional(hint)
    if optional and isinstance(value, str) and value.strip().lower() in ("none", "null"):
        return None
    if value is None:
        if optional:
            return None
        _fail(owner, key, f"must be set: expected {_describe(hint)}, got null")
    if isinstance(hint, type) and issubclass(hint, _Config):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            _fail(owner, key, f"expected {_describe(hint)}, got {_shown(value)}")
        return hint.from_dict(value, path=_join(owner, key))
    if typing.get_origin(hint) is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            _fail(owner, key, f"expected a list (or comma-separated values), got {_shown(value)}")
        args = typing.get_args(hint)
        item = args[0] if args else Any
        return tuple(_coerce(owner, key, item, v) for v in value)
    if hint is bool:
        if isinstance(value, str):
            if value.strip().lower() in ("1", "true", "yes", "on"):
                return True
            if value.strip().lower() in ("0", "false", "no", "off"):
                return False
        elif isinstance(value, (bool, int)) and value in (0, 1):
            return bool(value)
        _fail(owner, key, f"expected a boolean, got {_shown(value)}")
    if hint is int:
        number = None
        if isinstance(value, float) and value.is_integer():
            number = int(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str):
            try:
                number = int(value.strip())
            except ValueError:
                pass
        # Negative numbers are refused by ``validate`` (after the config's own checks).
        if number is None or not -INT_MAX - 1 <= number <= INT_MAX:
            _fail(owner, key, f"expected {_describe(int)}, got {_shown(value)}")
        return number
    if hint is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and _is_finite(value):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None or not math.isfinite(number):
            _fail(owner, key, f"expected a finite number, got {_shown(value)}")
        return number
    if hint is str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (str, int, float)):
            return str(value)
        _fail(owner, key, f"expected a string, got {_shown(value)}")
    return value


# EfficientNet-B0 stage table: (kernel, repeats, filters_in, filters_out, expand, stride).
EFFICIENTNET_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (3, 1, 32, 16, 1, 1),
    (3, 2, 16, 24, 6, 2),
    (5, 2, 24, 40, 6, 2),
    (3, 3, 40, 80, 6, 2),
    (5, 3, 80, 112, 6, 1),
    (5, 4, 112, 192, 6, 2),
    (3, 1, 192, 320, 6, 1),
)

#: The most MBConv blocks an image tower may have (EfficientNet-B7 has 55, L2 about 90).
MAX_IMAGE_BLOCKS = 1000
#: The most optimizer steps a run may take (ALIGN: 1.2M). The checkpoint interval is a
#: divisor of the steps, found by trial division up to their square root.
MAX_STEPS = 10**12

NORMALIZATIONS = ("minus_one_to_one", "imagenet", "none")
#: How evaluation and serving resize an image before the centre crop
#: (``ImageTowerConfig.eval_resize``; ``malign.data.preprocess.eval_crop`` implements them).
EVAL_RESIZES = ("shorter_side", "square")


@dataclasses.dataclass(frozen=True)
class ImageTowerConfig(_Config):
    """EfficientNet image tower.

    Args:
        width_coefficient: channel multiplier (B0 1.0 ... B7 2.0).
        depth_coefficient: repeat multiplier (B0 1.0 ... B7 3.1).
        image_size: square input size in pixels.
        stages: stage table (kernel, repeats, in, out, expand ratio, stride) before scaling.
        stem_filters: stem width before scaling.
        top_filters: width of the final 1x1 conv before scaling (1280 in EfficientNet);
            0 means no top conv, as in ALIGN (pooled width = last block's channels).
        projection_dim: optional linear projection after pooling (0 = none).
        se_ratio: squeeze-excite width as a fraction of the block's input channels.
        depth_divisor: channel rounding.
        dropout_rate: dropout before the projection / output.
        drop_connect_rate: stochastic depth rate of the last block (linear in block index).
        batch_norm_epsilon, batch_norm_momentum: batch norm settings.
        synchronized_batch_norm: all-reduce batch statistics across replicas.
        freeze_batch_norm: run every batch norm in inference mode (its moving statistics,
            neither updated nor replaced by batch statistics; gamma and beta not trained),
            for fine-tuning from trained statistics. With ``training.micro_batch_size``
            and unfrozen batch norm, training statistics are per micro-batch (ghost batch
            norm), so a micro-batched step differs from the whole-batch one.
        depthwise_padding: block indices whose stride-2 depthwise conv pads k//2 on both
            sides (the transformers checkpoint's rule); others pad k//2-1 before, k//2 after.
        normalization: first layer applied to [0, 1] images.
        eval_resize: how evaluation (``malign eval``, zero-shot, the in-training retrieval
            evaluation) and the exported SavedModel resize an image before the centre
            ``image_size`` crop. "shorter_side" (default, the paper's): the shorter side to
            ``malign.data.preprocess.resize_size(image_size)`` (346 for 289), aspect ratio
            kept. "square": both sides to that size, aspect ratio not kept, rounded to whole
            pixel values, as the ``EfficientNetImageProcessor`` of ``kakaobrain/align-base``
            does; converted checkpoints and the ``align-base`` preset use it. Training crops
            do not depend on it. Configs saved before this field existed load as
            "shorter_side".
    """

    _NAME: ClassVar[str] = "image_tower"

    width_coefficient: float = 1.0
    depth_coefficient: float = 1.0
    image_size: int = 224
    stages: tuple[tuple[int, ...], ...] = EFFICIENTNET_STAGES
    stem_filters: int = 32
    top_filters: int = 0
    projection_dim: int = 0
    se_ratio: float = 0.25
    depth_divisor: int = 8
    dropout_rate: float = 0.0
    drop_connect_rate: float = 0.0
    batch_norm_epsilon: float = 1e-3
    batch_norm_momentum: float = 0.99
    synchronized_batch_norm: bool = True
    freeze_batch_norm: bool = False
    depthwise_padding: tuple[int, ...] = ()
    normalization: str = "minus_one_to_one"
    eval_resize: str = "shorter_side"

    def _check_values(self, n: str) -> None:
        if self.width_coefficient <= 0:
            _fail(n, "width_coefficient", f"must be > 0, got {self.width_coefficient}")
        if self.depth_coefficient <= 0:
            _fail(n, "depth_coefficient", f"must be > 0, got {self.depth_coefficient}")
        if self.image_size < 16:
            _fail(n, "image_size", f"must be >= 16 pixels, got {self.image_size}")
        if self.depth_divisor < 1:
            _fail(n, "depth_divisor", f"channels are rounded to multiples of it: must be >= 1 "
                                      f"(EfficientNet: 8), got {self.depth_divisor}")
        if not self.stages:
            _fail(n, "stages", "needs at least one stage")
        for i, stage in enumerate(self.stages):
            if len(stage) != 6:
                _fail(n, "stages", f"stage {i} must be (kernel, repeats, in, out, expand, stride)")
            kernel, repeats, f_in, f_out, expand, stride = stage
            if kernel % 2 == 0 or kernel < 1:
                _fail(n, "stages", f"stage {i} kernel must be odd, got {kernel}")
            if min(repeats, f_in, f_out, expand) < 1 or stride not in (1, 2):
                _fail(n, "stages", f"stage {i} has invalid values {stage}")
            # Each stage reads what the previous one (the stem, for the first) writes.
            before, source = ((self.stem_filters, "stem_filters") if i == 0 else
                              (self.stages[i - 1][3], f"stage {i - 1}'s output width"))
            if f_in != before:
                _fail(n, "stages" if i else "stem_filters",
                      f"stage {i} reads {f_in} channels but {source} is {before}; the widths "
                      "must chain (stem_filters = stage 0's input, each stage's input = the "
                      "previous stage's output)")
        from malign.models.sizes import round_repeats

        blocks = sum(round_repeats(stage[1], self.depth_coefficient) for stage in self.stages)
        if blocks > MAX_IMAGE_BLOCKS:
            _fail(n, "depth_coefficient",
                  f"{self.depth_coefficient} makes {blocks} blocks from the stage table; at "
                  f"most {MAX_IMAGE_BLOCKS} can be built (EfficientNet-B7, depth 3.1: 55)")
        for value, name in ((self.dropout_rate, "dropout_rate"),
                            (self.drop_connect_rate, "drop_connect_rate")):
            if not 0.0 <= value < 1.0:
                _fail(n, name, f"must be in [0, 1), got {value}")
        if self.top_filters < 0 or self.projection_dim < 0:
            _fail(n, "top_filters" if self.top_filters < 0 else "projection_dim", "must be >= 0")
        if self.batch_norm_epsilon <= 0:
            _fail(n, "batch_norm_epsilon", f"must be > 0, got {self.batch_norm_epsilon}")
        if not 0.0 <= self.batch_norm_momentum < 1.0:
            _fail(n, "batch_norm_momentum", f"must be in [0, 1), got {self.batch_norm_momentum}")
        if not 0 < self.se_ratio <= 1:
            _fail(n, "se_ratio", f"must be in (0, 1], got {self.se_ratio}")
        if self.normalization not in NORMALIZATIONS:
            _fail(n, "normalization",
                  f"must be one of {NORMALIZATIONS}, got {self.normalization!r}")
        if self.eval_resize not in EVAL_RESIZES:
            _fail(n, "eval_resize",
                  f"must be one of {EVAL_RESIZES}, got {self.eval_resize!r}")


@dataclasses.dataclass(frozen=True)
class TextTowerConfig(_Config):
    """BERT text tower: keras-hub BertBackbone, [CLS] state, linear projection.

    Args:
        vocabulary_size: token vocabulary (shared SentencePiece, or BERT WordPiece).
        num_layers, num_heads, hidden_dim, intermediate_dim: BERT sizes.
        dropout: dropout inside BERT.
        max_sequence_length: position embedding table size.
        sequence_length: tokens per caption fed to the tower ([CLS] ... [SEP] padded).
        projection_dim: output width (must equal the image embedding width); 0 = none.
        activation: feed-forward activation: "gelu_approximate" (tanh approximation,
            keras-hub's BERT default) or "gelu" (exact erf GELU, as in the transformers
            BERT of kakaobrain/align-base; needed to load it exactly).
    """

    _NAME: ClassVar[str] = "text_tower"

    vocabulary_size: int = 30522
    num_layers: int = 12
    num_heads: int = 12
    hidden_dim: int = 768
    intermediate_dim: int = 3072
    dropout: float = 0.1
    max_sequence_length: int = 512
    sequence_length: int = 64
    projection_dim: int = 640
    activation: str = "gelu_approximate"

    def _check_values(self, n: str) -> None:
        if self.activation not in ("gelu_approximate", "gelu"):
            _fail(n, "activation",
                  f"must be 'gelu_approximate' or 'gelu', got {self.activation!r}")
        for name in ("vocabulary_size", "num_layers", "num_heads", "hidden_dim",
                     "intermediate_dim", "max_sequence_length", "sequence_length"):
            if getattr(self, name) < 1:
                _fail(n, name, f"must be >= 1, got {getattr(self, name)}")
        if self.vocabulary_size < 8:
            _fail(n, "vocabulary_size",
                  f"must hold at least the 5 special tokens, got {self.vocabulary_size}")
        if self.hidden_dim % self.num_heads:
            _fail(n, "hidden_dim",
                  f"{self.hidden_dim} is not divisible by num_heads={self.num_heads}")
        if self.sequence_length > self.max_sequence_length:
            _fail(n, "sequence_length",
                  f"{self.sequence_length} exceeds max_sequence_length={self.max_sequence_length}")
        if not 0.0 <= self.dropout < 1.0:
            _fail(n, "dropout", f"must be in [0, 1), got {self.dropout}")
        if self.projection_dim < 0:
            _fail(n, "projection_dim", "must be >= 0")


@dataclasses.dataclass(frozen=True)
class ModelConfig(_Config):
    """The dual encoder: two towers, temperature, and the contrastive loss.

    Args:
        image: image tower config.
        text: text tower config.
        temperature_init: initial temperature (logits = similarity / temperature).
        min_temperature, max_temperature: the temperature is clipped to this range.
        learnable_temperature: train the temperature.
        loss: "softmax" (ALIGN/CLIP normalized softmax) or "sigmoid" (SigLIP).
        label_smoothing: softmax-loss label smoothing (ALIGN: 0.1).
        sigmoid_bias_init: initial bias of the sigmoid loss.
    """

    _NAME: ClassVar[str] = "model"

    image: ImageTowerConfig = dataclasses.field(default_factory=ImageTowerConfig)
    text: TextTowerConfig = dataclasses.field(default_factory=TextTowerConfig)
    temperature_init: float = 1.0
    min_temperature: float = 1e-3
    max_temperature: float = 100.0
    learnable_temperature: bool = True
    loss: str = "softmax"
    label_smoothing: float = 0.1
    sigmoid_bias_init: float = -10.0

    @property
    def image_embedding_dim(self) -> int:
        # The TensorFlow-free arithmetic, so config checks run before TensorFlow loads.
        from malign.models.sizes import image_output_dim

        return image_output_dim(self.image)

    @property
    def text_embedding_dim(self) -> int:
        return self.text.projection_dim or self.text.hidden_dim

    def _check_values(self, n: str) -> None:
        self.image.validate(f"{n}.image")
        self.text.validate(f"{n}.text")
        if not 0 < self.min_temperature <= self.temperature_init <= self.max_temperature:
            _fail(n, "temperature_init",
                  f"must satisfy 0 < min_temperature ({self.min_temperature}) <= temperature_init "
                  f"({self.temperature_init}) <= max_temperature ({self.max_temperature})")
        if self.loss not in ("softmax", "sigmoid"):
            _fail(n, "loss", f"must be 'softmax' or 'sigmoid', got {self.loss!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            _fail(n, "label_smoothing", f"must be in [0, 1), got {self.label_smoothing}")
        if self.image_embedding_dim != self.text_embedding_dim:
            raise ConfigError(
                f"{n}.text.projection_dim: the text embedding width "
                f"({self.text_embedding_dim}) must equal the image embedding width "
                f"({self.image_embedding_dim}, from {n}.image)"
            )


@dataclasses.dataclass(frozen=True)
class DataConfig(_Config):
    """Where training pairs come from.

    Args:
        train_pattern: TFRecord glob of training shards; "synthetic" generates demo
            data into the work directory; "random" feeds random tensors (smoke tests).
        eval_pattern: optional TFRecord glob for evaluation.
        tokenizer: path of the SentencePiece .model (or "test" for the checked-in one).
        synthetic_examples: number of synthetic training scenes when train_pattern is
            "synthetic".
        languages: caption languages to train on (empty = all).
        shuffle_buffer: examples in the shuffle buffer.
    """

    _NAME: ClassVar[str] = "data"

    train_pattern: str = "random"
    eval_pattern: str = ""
    tokenizer: str = ""
    synthetic_examples: int = 2000
    languages: tuple[str, ...] = ()
    shuffle_buffer: int = 2048

    def _check_values(self, n: str) -> None:
        if not self.train_pattern.strip():
            _fail(n, "train_pattern", "must be a file glob, 'synthetic' or 'random'")
        if self.synthetic_examples < 1:
            _fail(n, "synthetic_examples", f"must be >= 1, got {self.synthetic_examples}")
        if self.shuffle_buffer < 1:
            _fail(n, "shuffle_buffer", f"must be >= 1, got {self.shuffle_buffer}")
        for lang in self.languages:
            if not lang.strip() or lang != lang.strip():
                _fail(n, "languages", f"language codes must be non-empty, without spaces; got "
                                      f"{list(self.languages)!r}")


#: The values an unset ``training.warmup_steps`` / ``training.steps_per_checkpoint``
#: follow (see ``TrainingConfig.resolve``).
DEFAULT_WARMUP_STEPS = 100
DEFAULT_STEPS_PER_CHECKPOINT = 100


def divisors(n: int) -> list[int]:
    """The positive divisors of ``n`` >= 1, ascending.

    Example:
        >>> divisors(20)
        [1, 2, 4, 5, 10, 20]
    """
    small, large = [], []
    i = 1
    while i * i <= n:
        if n % i == 0:
            small.append(i)
            if i != n // i:
                large.append(n // i)
        i += 1
    return small + large[::-1]


def derived_warmup_steps(steps: int, default: int = DEFAULT_WARMUP_STEPS) -> int:
    """The warm-up of a run that does not set one: a tenth of the steps, at most ``default``.

    Example:
        >>> derived_warmup_steps(20), derived_warmup_steps(1000), derived_warmup_steps(300_000)
        (2, 100, 100)
    """
    return min(default, steps // 10)


def derived_checkpoint_interval(steps: int, default: int = DEFAULT_STEPS_PER_CHECKPOINT) -> int:
    """The checkpoint interval of a run that does not set one: the divisor of ``steps``
    closest to ``default`` by ratio (the smaller one on a tie).

    Checkpoints fall at whole intervals (a Keras epoch), so the interval must divide the
    steps. A run shorter than ``default`` checkpoints once, at its end. A step count with no
    divisor near ``default`` gets the nearest one there is: 101 steps checkpoint once (at
    101), not at every step.

    Example:
        >>> [derived_checkpoint_interval(s) for s in (20, 1000, 150, 101, 1_200_000)]
        [20, 100, 75, 101, 100]
    """
    return min(divisors(steps), key=lambda d: (abs(math.log(d / default)), d))


def _neighbours(values: list[int], target: int) -> list[int]:
    """The largest value below ``target`` and the smallest above it (those that exist)."""
    below = [v for v in values if v < target]
    above = [v for v in values if v > target]
    return ([below[-1]] if below else []) + ([above[0]] if above else [])


@dataclasses.dataclass(frozen=True)
class TrainingConfig(_Config):
    """How to train.

    ``warmup_steps`` and ``steps_per_checkpoint`` may be left unset (None, the default):
    ``resolve()`` then derives them from ``steps`` at the start of a run (see
    ``derived_warmup_steps``, ``derived_checkpoint_interval``), or, when the run resumes,
    takes the values it started with. ``malign train`` writes (and ``--print-config``
    shows) the resolved values. A value that is set and cannot work is an error naming
    the field and values that would.

    Args:
        strategy: distribution spec for ``malign.distributed.get_strategy``.
        global_batch_size: examples per step over all replicas (divisible by replicas).
        steps: total optimizer steps.
        steps_per_checkpoint: steps between checkpoints (Keras "epoch" length); must
            divide ``steps``. Unset: the divisor of ``steps`` nearest 100.
        optimizer: "lamb" or "adamw".
        learning_rate: peak learning rate.
        warmup_steps: linear warm-up steps (at most ``steps``). Unset:
            ``min(100, steps // 10)``.
        decay: "linear" or "cosine" decay to end_learning_rate after warm-up; "constant".
        end_learning_rate: final learning rate.
        weight_decay: decoupled weight decay (norms, biases and temperature excluded).
        beta_1, beta_2, epsilon: Adam/LAMB moments.
        clipnorm: global gradient-norm clip (0 = none).
        mixed_precision: Keras dtype policy ("float32", "mixed_bfloat16", "mixed_float16").
        jit_compile: "auto" (XLA on TPU/GPU, not CPU), "true" or "false".
        seed: random seed (0 <= seed < 2**32).
        log_every_steps: loss, temperature and learning rate go to TensorBoard
            (``logs/train``) and to the progress line every this many steps (and at the
            last step).
        eval_every_steps: run the retrieval evaluation on the held-out set
            (``data.eval_pattern``, or the synthetic held-out scenes) every this many
            steps during training and log it to TensorBoard (``logs/retrieval``);
            0 = only once, after training.
        init_from: optional ``.keras`` model (e.g. a converted checkpoint) whose weights
            start the run; its weights must match the model config's shapes. The
            optimizer starts fresh. Ignored when the run resumes from a restore point.
        nonfinite: what a step whose loss or gradient holds a NaN or Inf does: "stop"
            (the update is skipped and the run stops with an error naming the step; the
            restore points hold only finite values) or "skip" (the update is skipped,
            counted and reported, and the run goes on).
        micro_batch_size: gradient caching (GradCache): each replica embeds its batch in
            micro-batches of this many examples, first without keeping activations, then
            again with them, back-propagating the gradient of the global-batch loss with
            respect to each embedding; the step's gradient equals the whole batch's.
            Must divide the per-replica batch. None or 0 = off (``malign.training.grad_cache``).
        remat: recompute activations in the backward pass, per EfficientNet stage and per
            BERT layer, instead of keeping them (``malign.models.remat``): less memory,
            about one more forward pass of compute.
        sigmoid_chunked: with ``model.loss="sigmoid"``, compute the loss one replica's
            text embeddings at a time (``losses.chunked_sigmoid_loss``), so no replica
            holds the global logits or text embeddings; the same value and gradient.

    Example:
        >>> cfg = TrainingConfig(steps=20)
        >>> cfg.warmup_steps is None
        True
        >>> resolved = cfg.resolve()
        >>> resolved.warmup_steps, resolved.steps_per_checkpoint
        (2, 20)
    """

    _NAME: ClassVar[str] = "training"
    #: The fields that may be unset and are derived by ``resolve``.
    DERIVED: ClassVar[tuple[str, ...]] = ("warmup_steps", "steps_per_checkpoint")

    strategy: str = "default"
    global_batch_size: int = 32
    steps: int = 1000
    steps_per_checkpoint: int | None = None
    optimizer: str = "lamb"
    learning_rate: float = 1e-3
    warmup_steps: int | None = None
    decay: str = "linear"
    end_learning_rate: float = 0.0
    weight_decay: float = 1e-5
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-6
    clipnorm: float = 0.0
    mixed_precision: str = "float32"
    jit_compile: str = "auto"
    seed: int = 0
    log_every_steps: int = 10
    eval_every_steps: int = 0
    init_from: str = ""
    nonfinite: str = "stop"
    micro_batch_size: int | None = None
    remat: bool = False
    sigmoid_chunked: bool = False

    def resolve(self, previous: TrainingConfig | None = None) -> TrainingConfig:
        """A copy with every unset field set, validated.

        Args:
            previous: the training config of the run being resumed (its work directory's
                ``config.json``). An unset field takes the value that run used, so a run
                extended to more ``steps`` keeps its warm-up and checkpoint interval;
                without one it is derived from ``steps``.

        Raises:
            ConfigError: naming the field, when a value cannot work (e.g. the resumed
                run's checkpoint interval does not divide the new ``steps``).

        Example:
            >>> TrainingConfig(steps=40).resolve(TrainingConfig(steps=20).resolve()).warmup_steps
            2
        """
        derive = {"warmup_steps": derived_warmup_steps,
                  "steps_per_checkpoint": derived_checkpoint_interval}
        self.validate()
        changes = {}
        for name in self.DERIVED:
            if getattr(self, name) is None:
                kept = getattr(previous, name, None) if previous is not None else None
                changes[name] = kept if kept is not None else derive[name](self.steps)
        resolved = dataclasses.replace(self, **changes)
        resolved.validate()
        return resolved

    @property
    def is_resolved(self) -> bool:
        """True when no field is left to derive."""
        return all(getattr(self, name) is not None for name in self.DERIVED)

    def _check_values(self, n: str) -> None:
        if self.global_batch_size < 2:
            _fail(n, "global_batch_size",
                  f"a contrastive loss needs >= 2, got {self.global_batch_size}")
        if not 1 <= self.steps <= MAX_STEPS:
            _fail(n, "steps", f"must be in [1, {MAX_STEPS:.0e}], got {self.steps}")
        if self.steps_per_checkpoint is not None:
            self._check_checkpoint_interval(n)
        if self.optimizer not in ("lamb", "adamw"):
            _fail(n, "optimizer", f"must be 'lamb' or 'adamw', got {self.optimizer!r}")
        if self.decay not in ("linear", "cosine", "constant"):
            _fail(n, "decay", f"must be 'linear', 'cosine' or 'constant', got {self.decay!r}")
        if self.learning_rate <= 0:
            _fail(n, "learning_rate", f"must be > 0, got {self.learning_rate}")
        if self.end_learning_rate < 0:
            _fail(n, "end_learning_rate", f"must be >= 0, got {self.end_learning_rate}")
        if self.warmup_steps is not None and not 0 <= self.warmup_steps <= self.steps:
            _fail(n, "warmup_steps",
                  f"must be in [0, {_join(n, 'steps')}={self.steps}], got {self.warmup_steps}; "
                  f"use e.g. {derived_warmup_steps(self.steps)} (a tenth of the steps), or "
                  "unset it (null) to derive min(100, steps // 10)")
        if self.weight_decay < 0:
            _fail(n, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        for name in ("beta_1", "beta_2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                _fail(n, name, f"must be in [0, 1), got {getattr(self, name)}")
        if self.epsilon <= 0:
            _fail(n, "epsilon", f"must be > 0, got {self.epsilon}")
        if self.clipnorm < 0:
            _fail(n, "clipnorm", f"must be >= 0 (0 = no clipping), got {self.clipnorm}")
        if self.mixed_precision not in ("float32", "mixed_bfloat16", "mixed_float16"):
            _fail(n, "mixed_precision",
                  f"must be float32, mixed_bfloat16 or mixed_float16, got {self.mixed_precision!r}")
        if self.nonfinite not in ("stop", "skip"):
            _fail(n, "nonfinite", f"must be 'stop' or 'skip', got {self.nonfinite!r}")
        if self.jit_compile not in ("auto", "true", "false"):
            _fail(n, "jit_compile", f"must be 'auto', 'true' or 'false', got {self.jit_compile!r}")
        if not 0 <= self.seed < 2**32:
            _fail(n, "seed", f"must be in [0, 2**32), got {self.seed}")
        if self.log_every_steps < 1:
            _fail(n, "log_every_steps", f"must be >= 1, got {self.log_every_steps}")
        if self.eval_every_steps < 0:
            _fail(n, "eval_every_steps",
                  f"must be >= 0 (0 = after training only), got {self.eval_every_steps}")
        if self.micro_batch_size is not None:
            self._check_micro_batch_size(n)

    def _check_micro_batch_size(self, n: str) -> None:
        size, batch = self.micro_batch_size, self.global_batch_size
        if size < 0:
            _fail(n, "micro_batch_size", f"must be a positive number of examples (or 0/null "
                                         f"= off), got {size}")
        if size and batch % size:
            options = _neighbours(divisors(batch), size)
            _fail(n, "micro_batch_size",
                  f"{size} must divide the per-replica batch, and so first "
                  f"{_join(n, 'global_batch_size')}={batch} (the per-replica batch on one "
                  f"device); use "
                  f"{' or '.join(map(str, options))}, or unset it (null) to turn gradient "
                  "caching off")

    def _check_checkpoint_interval(self, n: str) -> None:
        interval, steps = self.steps_per_checkpoint, self.steps
        if interval < 1:
            _fail(n, "steps_per_checkpoint", f"must be >= 1, got {interval}")
        if steps % interval:
            options = _neighbours(divisors(steps), interval)
            multiples = [m for m in ((steps // interval) * interval,
                                     (steps // interval + 1) * interval) if m > 0]
            _fail(n, "steps_per_checkpoint",
                  f"{interval} must divide {_join(n, 'steps')}={steps} (checkpoints fall at "
                  f"whole intervals); use {' or '.join(map(str, options))}, or set "
                  f"{_join(n, 'steps')} to {' or '.join(map(str, multiples))}, or unset it "
                  "(null) to derive the divisor of steps nearest 100")


@dataclasses.dataclass(frozen=True)
class DistillationConfig(_Config):
    """How ``malign distill`` teaches the student (the experiment's ``model``) from a teacher.

    The loss is the weighted sum of the student's own contrastive loss, the KL between the
    teacher's and the student's in-batch similarity distributions over the global batch,
    and the alignment of the student's image and text embeddings with the teacher's
    (``malign.losses``). With ``pivot_language`` set, the teacher embeds a caption's
    translation source: for a German caption of a record that also holds an English
    caption, the teacher sees the English one, so the text alignment pulls the student's
    German embedding to the teacher's English one (cross-lingual distillation; Reimers &
    Gurevych 2020, Carlsson et al. 2022). A weight of 0 turns a term off.

    Args:
        teacher: the teacher's ``.keras`` model (a trained malign model or a converted
            ``kakaobrain/align-base``); frozen. Required by ``malign distill``.
        teacher_tokenizer: the teacher's tokenizer file; "" finds ``tokenizer.model``,
            ``sentencepiece.model`` or ``vocab.txt`` beside the teacher (as ``malign eval``).
        contrastive_weight: weight of the student's contrastive loss (the model's ``loss``).
        similarity_kl_weight: weight of KL(teacher || student) of the image->text and
            text->image similarity distributions (``losses.similarity_kl_loss``).
        distill_temperature: the temperature softening both distributions in the KL.
        image_alignment_weight: weight of the image embedding alignment.
        text_alignment_weight: weight of the text embedding alignment (cross-lingual for
            translated captions).
        alignment: "cosine" or "mse" (``losses.embedding_alignment_loss``); widths that
            differ are mapped by a learned linear map (no bias).
        pivot_language: the language the teacher reads ("en" for an English teacher);
            "" makes the teacher embed the student's own caption.
        cache_teacher: compute the teacher's embeddings once (centre crops, every caption
            the teacher reads) into ``workdir/teacher_cache/`` and train from them instead
            of running the teacher each step; a cache made by another teacher or from other
            data is refused.
    """

    _NAME: ClassVar[str] = "distillation"
    ALIGNMENTS: ClassVar[tuple[str, ...]] = ("cosine", "mse")

    teacher: str = ""
    teacher_tokenizer: str = ""
    contrastive_weight: float = 1.0
    similarity_kl_weight: float = 1.0
    distill_temperature: float = 1.0
    image_alignment_weight: float = 1.0
    text_alignment_weight: float = 1.0
    alignment: str = "cosine"
    pivot_language: str = "en"
    cache_teacher: bool = False

    def _check_values(self, n: str) -> None:
        weights = ("contrastive_weight", "similarity_kl_weight", "image_alignment_weight",
                   "text_alignment_weight")
        for name in weights:
            if getattr(self, name) < 0:
                _fail(n, name, f"must be >= 0 (0 turns the term off), got {getattr(self, name)}")
        if not any(getattr(self, name) for name in weights):
            _fail(n, "contrastive_weight", "every loss weight is 0: nothing would be learned")
        if self.distill_temperature <= 0:
            _fail(n, "distill_temperature", f"must be > 0, got {self.distill_temperature}")
        if self.alignment not in self.ALIGNMENTS:
            _fail(n, "alignment", f"must be one of {', '.join(self.ALIGNMENTS)}, got "
                                  f"{self.alignment!r}")
        if self.pivot_language != self.pivot_language.strip():
            _fail(n, "pivot_language", f"a language code without spaces, got "
                                       f"{self.pivot_language!r}")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig(_Config):
    """A whole run: preset name + overrides resolved into a model, data and training.

    Errors name fields by the dotted path ``--set`` takes (``training.steps``,
    ``model.text.vocabulary_size``).

    Args:
        name: experiment name (used in logs).
        model: the model config (usually ``presets.get_preset(name)``).
        data: data config.
        training: training config.
        preset: name of the preset the model came from, for the record.
        distillation: the teacher and loss weights of ``malign distill`` (unused by
            ``malign train``).

    Example:
        >>> from malign.presets import get_preset
        >>> exp = ExperimentConfig(model=get_preset("tiny"))
        >>> exp.with_overrides({"training.steps": 20}).resolve().training.steps_per_checkpoint
        20
        >>> exp.with_overrides({"training.steps": None})
        Traceback (most recent call last):
        malign.config.ConfigError: training.steps: must be set: expected an integer in [0, 2**63), got null
    """

    _NAME: ClassVar[str] = "experiment"
    _ROOT: ClassVar[str | None] = ""

    name: str = "experiment"
    preset: str = ""
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)
    distillation: DistillationConfig = dataclasses.field(default_factory=DistillationConfig)

    def resolve(self, previous: ExperimentConfig | None = None) -> ExperimentConfig:
        """A copy whose unset training fields are set (see ``TrainingConfig.resolve``).

        Args:
            previous: the config of the run being resumed, whose values unset fields keep.
        """
        self.validate()
        training = self.training.resolve(previous.training if previous is not None else None)
        return dataclasses.replace(self, training=training)

    def _check_values(self, n: str) -> None:
        self.model.validate(_join(n, "model"))
        self.data.validate(_join(n, "data"))
        self.training.validate(_join(n, "training"))
        self.distillation.validate(_join(n, "distillation"))
        if self.training.sigmoid_chunked and self.model.loss != "sigmoid":
            _fail(_join(n, "training"), "sigmoid_chunked",
                  f"chunks the sigmoid loss, but model.loss is {self.model.loss!r}: set "
                  "model.loss=sigmoid or training.sigmoid_chunked=false")
        if (self.training.eval_every_steps and not self.data.eval_pattern
                and self.data.train_pattern != "synthetic"):
            _fail(_join(n, "training"), "eval_every_steps",
                  "needs a held-out set: set data.eval_pattern (or train on 'synthetic' data)")
