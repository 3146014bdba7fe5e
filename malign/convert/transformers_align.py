"""Import of the transformers ALIGN checkpoint (``kakaobrain/align-base``) into malign.

The transformers ``AlignModel`` is an EfficientNet without top conv, mean-pooled
(the image embedding, no projection), and a BERT whose ``[CLS]`` state goes through
``text_projection``; logits are cosine similarities divided by the raw ``temperature``
parameter. malign's ``AlignModel`` has the same layout, so the conversion is a
renaming with layout changes, checked both ways:

======================================================  ============================================
transformers (torch layout)                             malign (Keras layout)
======================================================  ============================================
``vision_model.embeddings.convolution`` [o,i,kh,kw]     ``stem_conv`` [kh,kw,i,o]
``vision_model.embeddings.batchnorm``                   ``stem_bn``
``…blocks.{i}.expansion.expand_conv`` / ``expand_bn``   ``block{i}_expand_conv`` / ``block{i}_expand_bn``
``…blocks.{i}.depthwise_conv.depthwise_conv`` [C,1,k,k] ``block{i}_dwconv`` [k,k,C,1]
``…blocks.{i}.depthwise_conv.depthwise_norm``           ``block{i}_dw_bn``
``…blocks.{i}.squeeze_excite.reduce`` / ``expand``      ``block{i}_se_reduce`` / ``block{i}_se_expand``
``…blocks.{i}.projection.project_conv`` / ``_bn``       ``block{i}_project_conv`` / ``block{i}_project_bn``
batch norm ``weight, bias, running_mean, running_var``  ``gamma, beta, moving_mean, moving_variance``
``text_model.embeddings.word_embeddings``               ``token_embedding``
``text_model.embeddings.position_embeddings``           ``position_embedding``
``text_model.embeddings.token_type_embeddings``         ``segment_embedding``
``text_model.embeddings.LayerNorm``                     ``embeddings_layer_norm``
``…layer.{i}.attention.self.query|key|value`` [H,H]     ``transformer_layer_{i}`` q/k/v [H,heads,head_dim]
``…layer.{i}.attention.output.dense`` [H,H]             attention output [heads,head_dim,H]
``…layer.{i}.attention.output.LayerNorm``               ``_self_attention_layer_norm``
``…layer.{i}.intermediate.dense`` / ``output.dense``    feed-forward intermediate / output [in,out]
``…layer.{i}.output.LayerNorm``                         ``_feedforward_layer_norm``
``text_model.pooler.dense``                             ``pooled_dense`` (kept, frozen, unused)
``text_projection``                                     ``text_projection``
``temperature``                                         ``AlignModel.temperature_variable``
======================================================  ============================================

Loading is strict: a checkpoint tensor left unused, a model weight left unset, or a
shape that does not fit is an error naming the weight (all problems at once).

The transformers implementation's conventions that the config carries over (checked
against ``transformers/models/align/modeling_align.py``): the stem pads one pixel
right and bottom before a ``valid`` stride-2 conv; a stride-2 depthwise conv pads
``k//2 - 1`` before and ``k//2`` after, except blocks listed in ``depthwise_padding``
(``k//2`` on both sides); squeeze-excite is a quarter of the block's *input* width;
batch-norm epsilon 1e-3; BERT's GELU is the exact (erf) one; the text embedding is the
``[CLS]`` state, not the tanh pooler. Pixels enter transformers as ``2x - 1`` (NCHW);
they enter malign as ``x`` in [0, 1] (NHWC) and the image tower's first layer applies
``2x - 1``.

Example:
    >>> model = from_transformers_align("tests/fixtures/align_tiny")  # doctest: +SKIP
    >>> model.image_size, model.embedding_dim  # doctest: +SKIP
    (67, 32)
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from malign.config import ImageTowerConfig, ModelConfig, TextTowerConfig
from malign.convert.checkpoint import ConversionError, checkpoint_directory, read_transformers_weights
from malign.convert.inputs import check_vocabulary, read_json_object
from malign.convert.preprocess import ImageProcessorSettings, read_image_processor
from malign.models.image_tower import block_specs

__all__ = [
    "AlignImport",
    "config_from_transformers_align",
    "from_transformers_align",
    "import_transformers_align",
    "load_transformers_align_weights",
    "read_align_config",
    "transformers_align_tokenizer",
    "weight_mapping",
]

#: AlignProcessor pads and truncates captions to 64 tokens.
DEFAULT_SEQUENCE_LENGTH = 64

# transformers AlignVisionConfig / AlignTextConfig defaults, for config.json files that
# leave a field out (transformers fills the same defaults).
_VISION_DEFAULTS: dict[str, Any] = dict(
    num_channels=3, image_size=600, width_coefficient=2.0, depth_coefficient=3.1,
    depth_divisor=8, kernel_sizes=[3, 3, 5, 3, 5, 5, 3],
    in_channels=[32, 16, 24, 40, 80, 112, 192], out_channels=[16, 24, 40, 80, 112, 192, 320],
    depthwise_padding=[], strides=[1, 2, 2, 2, 1, 2, 1], num_block_repeats=[1, 2, 2, 3, 3, 4, 1],
    expand_ratios=[1, 6, 6, 6, 6, 6, 6], squeeze_expansion_ratio=0.25, hidden_act="swish",
    hidden_dim=2560, pooling_type="mean", batch_norm_eps=1e-3, batch_norm_momentum=0.99,
    drop_connect_rate=0.2,
)
_TEXT_DEFAULTS: dict[str, Any] = dict(
    vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
    intermediate_size=3072, hidden_act="gelu", hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.1, max_position_embeddings=512, type_vocab_size=2,
    layer_norm_eps=1e-12, position_embedding_type="absolute",
)
# transformers activation names -> malign TextTowerConfig.activation.
_TEXT_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_approximate",
                     "gelu_pytorch_tanh": "gelu_approximate"}


# -- config ----------------------------------------------------------------------------------
def read_align_config(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a checkpoint's ``config.json`` with transformers' defaults filled in.

    Args:
        path: the checkpoint directory (or a file in it).

    Returns:
        ``{"text_config": {...}, "vision_config": {...}, "projection_dim": int,
        "temperature_init_value": float}``.

    Raises:
        ConversionError: naming the file: no ``config.json``, not valid JSON, not an ALIGN
            config, or sections and numbers of the wrong type.

    Example:
        >>> read_align_config("tests/fixtures/align_tiny")["projection_dim"]  # doctest: +SKIP
        32
    """
    directory = checkpoint_directory(path)
    file = directory / "config.json"
    if not file.is_file():
        raise ConversionError(f"no config.json in {directory}: pass the checkpoint directory")
    data = read_json_object(file, "the model config")
    model_type = data.get("model_type")
    if model_type != "align":
        raise ConversionError(f"{file}: model_type is {model_type!r}, not 'align' "
                              "(an AlignModel checkpoint such as kakaobrain/align-base)")
    sections = {}
    for name in ("vision_config", "text_config"):
        section = data.get(name) or {}
        if not isinstance(section, dict):
            raise ConversionError(f"{file}: {name} must be an object of settings, got "
                                  f"{type(section).__name__}")
        sections[name] = section
    projection_dim = data.get("projection_dim", 640)
    temperature = data.get("temperature_init_value", 1.0)
    if isinstance(projection_dim, bool) or not isinstance(projection_dim, int) \
            or projection_dim < 0:
        raise ConversionError(f"{file}: projection_dim must be an integer >= 0, got "
                              f"{projection_dim!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise ConversionError(f"{file}: temperature_init_value must be a number, got "
                              f"{temperature!r}")
    return {
        "text_config": {**_TEXT_DEFAULTS, **sections["text_config"]},
        "vision_config": {**_VISION_DEFAULTS, **sections["vision_config"]},
        "projection_dim": projection_dim,
        "temperature_init_value": float(temperature),
    }


def _image_tower_config(vision: dict[str, Any], image_size: int,
                        normalization: str, eval_resize: str) -> ImageTowerConfig:
    def need(ok: bool, field: str, message: str) -> None:
        if not ok:
            raise ConversionError(f"vision_config.{field}: {message}")

    need(vision["num_channels"] == 3, "num_channels", f"{vision['num_channels']}; RGB (3) only")
    need(vision["hidden_act"] in ("swish", "silu"), "hidden_act",
         f"{vision['hidden_act']!r}; the EfficientNet tower uses swish")
    need(vision["pooling_type"] == "mean", "pooling_type",
         f"{vision['pooling_type']!r}; ALIGN mean-pools (max pooling is not supported)")
    lists = ("kernel_sizes", "num_block_repeats", "in_channels", "out_channels",
             "expand_ratios", "strides")
    lengths = {name: len(vision[name]) for name in lists}
    need(len(set(lengths.values())) == 1, "kernel_sizes", f"stage lists differ in length: {lengths}")
    stages = tuple(
        tuple(int(v) for v in stage) for stage in zip(*(vision[name] for name in lists))
    )
    try:
        config = ImageTowerConfig(
            width_coefficient=float(vision["width_coefficient"]),
            depth_coefficient=float(vision["depth_coefficient"]),
            image_size=int(image_size),
            stages=stages,
            stem_filters=32,  # transformers: round_filters(config, 32), whatever in_channels say
            top_filters=0,
            projection_dim=0,
            se_ratio=float(vision["squeeze_expansion_ratio"]),
            depth_divisor=int(vision["depth_divisor"]),
            dropout_rate=0.0,
            drop_connect_rate=float(vision["drop_connect_rate"]),
            batch_norm_epsilon=float(vision["batch_norm_eps"]),
            # transformers passes Keras' 0.99 to torch, where it means the opposite; malign
            # keeps the checkpoint's (TensorFlow) meaning: moving = 0.99 moving + 0.01 batch.
            batch_norm_momentum=float(vision["batch_norm_momentum"]),
            depthwise_padding=tuple(int(i) for i in vision["depthwise_padding"]),
            normalization=normalization,
            eval_resize=eval_resize,
        )
        config.validate()
    except ValueError as error:
        raise ConversionError(f"vision_config cannot be built: {error}") from error
    return config


def _text_tower_config(text: dict[str, Any], projection_dim: int,
                       sequence_length: int) -> TextTowerConfig:
    def need(ok: bool, field: str, message: str) -> None:
        if not ok:
            raise ConversionError(f"text_config.{field}: {message}")

    need(text["hidden_act"] in _TEXT_ACTIVATIONS, "hidden_act",
         f"{text['hidden_act']!r}; supported: {sorted(_TEXT_ACTIVATIONS)}")
    need(math.isclose(float(text["layer_norm_eps"]), 1e-12, rel_tol=1e-6), "layer_norm_eps",
         f"{text['layer_norm_eps']}; keras-hub's BERT uses 1e-12")
    need(int(text["type_vocab_size"]) == 2, "type_vocab_size",
         f"{text['type_vocab_size']}; keras-hub's BERT has 2 segments")
    need(text.get("position_embedding_type", "absolute") == "absolute",
         "position_embedding_type", f"{text.get('position_embedding_type')!r}; absolute only")
    max_positions = int(text["max_position_embeddings"])
    try:
        config = TextTowerConfig(
            vocabulary_size=int(text["vocab_size"]),
            num_layers=int(text["num_hidden_layers"]),
            num_heads=int(text["num_attention_heads"]),
            hidden_dim=int(text["hidden_size"]),
            intermediate_dim=int(text["intermediate_size"]),
            dropout=float(text["hidden_dropout_prob"]),
            max_sequence_length=max_positions,
            sequence_length=min(int(sequence_length), max_positions),
            projection_dim=int(projection_dim),
            activation=_TEXT_ACTIVATIONS[text["hidden_act"]],
        )
        config.validate()
    except ValueError as error:
        raise ConversionError(f"text_config cannot be built: {error}") from error
    return config


def _sequence_length_of(directory: Path) -> int:
    """The tokenizer's ``model_max_length`` when it is a caption length, else 64."""
    file = directory / "tokenizer_config.json"
    if file.is_file():
        value = read_json_object(file, "the tokenizer config").get("model_max_length")
        if isinstance(value, (int, float)) and 2 <= value <= 512:
            return int(value)
    return DEFAULT_SEQUENCE_LENGTH


def config_from_transformers_align(
    path: str | os.PathLike,
    *,
    temperature: float | None = None,
    image_size: int | None = None,
    sequence_length: int | None = None,
) -> ModelConfig:
    """The malign ``ModelConfig`` of a transformers ALIGN checkpoint (no weights read).

    Args:
        path: the checkpoint directory (``config.json``, optionally the processor files).
        temperature: the checkpoint's temperature value; default the config's
            ``temperature_init_value`` (the trained value is in the weights).
        image_size: input size; default the processor's crop size (289 for align-base),
            else ``vision_config.image_size``.
        sequence_length: tokens per caption; default the tokenizer's
            ``model_max_length`` if it is at most 512, else 64 (``AlignProcessor``'s).

    Returns:
        A validated ``ModelConfig``. Its ``image.eval_resize`` is "square" when the
        processor resizes every image to a fixed height x width, as align-base's does
        (also when there is no processor file: align-base's default), so that
        ``malign eval`` and the exported SavedModel crop as the processor does.

    Raises:
        ConversionError: for settings malign cannot reproduce exactly.

    Example:
        >>> cfg = config_from_transformers_align("tests/fixtures/align_tiny")  # doctest: +SKIP
        >>> cfg.image.depthwise_padding, cfg.text.activation  # doctest: +SKIP
        ((1, 3), 'gelu')
    """
    directory = checkpoint_directory(path)
    align = read_align_config(directory)
    processor = read_image_processor(directory)
    vision = align["vision_config"]
    if image_size is None and processor is not None and (processor.crop or processor.resize):
        image_size = processor.image_size
    normalization = processor.normalization if processor is not None else "minus_one_to_one"
    # Evaluate and serve with the processor's layout: a fixed height x width resize (the
    # align-base default when there is no processor file) is eval_resize "square".
    eval_resize = processor.eval_resize if processor is not None else "square"
    if sequence_length is None:
        sequence_length = _sequence_length_of(directory)
    file = directory / "config.json"
    try:
        if image_size is None:
            size = vision["image_size"]
            image_size = int(size[0] if isinstance(size, (list, tuple)) else size)
        image = _image_tower_config(vision, int(image_size), normalization, eval_resize)
        text = _text_tower_config(align["text_config"], align["projection_dim"],
                                  sequence_length)
    except ConversionError as error:
        raise ConversionError(f"{file}: {error}") from None
    except (TypeError, ValueError, KeyError, IndexError, OverflowError) as error:
        raise ConversionError(
            f"{file}: vision_config or text_config holds a value of the wrong type "
            f"({type(error).__name__}: {error}); the file is not a transformers ALIGN config "
            "or it is damaged") from None
    if temperature is None:
        temperature = align["temperature_init_value"]
    temperature = float(temperature)
    if not temperature > 0 or not math.isfinite(temperature):
        raise ConversionError(f"temperature: {temperature} (logits divide by it; must be > 0)")
    defaults = ModelConfig()
    config = ModelConfig(
        image=image,
        text=text,
        temperature_init=temperature,
        # Keep the checkpoint's value inside the clipping range, with room to train.
        min_temperature=min(defaults.min_temperature, temperature / 10),
        max_temperature=max(defaults.max_temperature, temperature * 10),
        learnable_temperature=True,
        loss="softmax",
        label_smoothing=0.1,  # transformers' align_loss
    )
    try:
        config.validate()
    except ValueError as error:
        raise ConversionError(f"the checkpoint's config does not make a malign model: {error}") \
            from error
    return config


# -- weight mapping --------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Layout:
    """How a torch tensor becomes a Keras variable: source shape from target and transform."""

    name: str
    source_shape: Callable[[tuple[int, ...]], tuple[int, ...]]
    apply: Callable[[np.ndarray, tuple[int, ...]], np.ndarray]


_COPY = _Layout("copy", lambda t: t, lambda a, t: a)
# Conv2d [out, in, kh, kw] -> Conv2D [kh, kw, in, out]
_CONV = _Layout("conv", lambda t: (t[3], t[2], t[0], t[1]), lambda a, t: a.transpose(2, 3, 1, 0))
# depthwise Conv2d [C, 1, kh, kw] -> DepthwiseConv2D [kh, kw, C, 1]
_DEPTHWISE = _Layout("depthwise", lambda t: (t[2], t[3], t[0], t[1]),
                     lambda a, t: a.transpose(2, 3, 0, 1))
# Linear [out, in] -> Dense [in, out]
_DENSE = _Layout("dense", lambda t: (t[1], t[0]), lambda a, t: a.T)
# Linear [heads*head_dim, in] -> EinsumDense [in, heads, head_dim]
_HEADS_IN = _Layout("heads_in", lambda t: (t[1] * t[2], t[0]), lambda a, t: a.T.reshape(t))
# bias [heads*head_dim] -> [heads, head_dim]
_HEADS_BIAS = _Layout("heads_bias", lambda t: (t[0] * t[1],), lambda a, t: a.reshape(t))
# Linear [out, heads*head_dim] -> EinsumDense [heads, head_dim, out]
_HEADS_OUT = _Layout("heads_out", lambda t: (t[2], t[0] * t[1]), lambda a, t: a.T.reshape(t))


def _batch_norm(source: str, target: str) -> list[tuple[str, str, _Layout]]:
    return [
        (f"{source}.weight", f"{target}/gamma", _COPY),
        (f"{source}.bias", f"{target}/beta", _COPY),
        (f"{source}.running_mean", f"{target}/moving_mean", _COPY),
        (f"{source}.running_var", f"{target}/moving_variance", _COPY),
    ]


def _dense(source: str, target: str, layout: _Layout = _DENSE,
           bias: _Layout = _COPY) -> list[tuple[str, str, _Layout]]:
    return [(f"{source}.weight", f"{target}/kernel", layout),
            (f"{source}.bias", f"{target}/bias", bias)]


def _layer_norm(source: str, target: str) -> list[tuple[str, str, _Layout]]:
    return [(f"{source}.weight", f"{target}/gamma", _COPY),
            (f"{source}.bias", f"{target}/beta", _COPY)]


def weight_mapping(config: ModelConfig) -> list[tuple[str, str, _Layout]]:
    """Every (checkpoint name, malign weight, layout) pair of a converted model.

    malign weights are named ``image_tower/<keras path>``, ``text_tower/<keras path>``
    and ``temperature``.

    Args:
        config: the converted model's config.

    Example:
        >>> from malign.presets import get_preset
        >>> pairs = weight_mapping(get_preset("align-base"))
        >>> len(pairs), pairs[0][:2]
        (1232, ('vision_model.embeddings.convolution.weight', 'image_tower/stem_conv/kernel'))
    """
    pairs: list[tuple[str, str, _Layout]] = []

    def image(items):
        pairs.extend((s, f"image_tower/{t}", layout) for s, t, layout in items)

    def text(items):
        pairs.extend((s, f"text_tower/{t}", layout) for s, t, layout in items)

    image([("vision_model.embeddings.convolution.weight", "stem_conv/kernel", _CONV)])
    image(_batch_norm("vision_model.embeddings.batchnorm", "stem_bn"))
    for i, spec in enumerate(block_specs(config.image)):
        b = f"vision_model.encoder.blocks.{i}"
        if spec["expand_ratio"] != 1:
            image([(f"{b}.expansion.expand_conv.weight", f"block{i}_expand_conv/kernel", _CONV)])
            image(_batch_norm(f"{b}.expansion.expand_bn", f"block{i}_expand_bn"))
        image([(f"{b}.depthwise_conv.depthwise_conv.weight", f"block{i}_dwconv/kernel",
                _DEPTHWISE)])
        image(_batch_norm(f"{b}.depthwise_conv.depthwise_norm", f"block{i}_dw_bn"))
        image(_dense(f"{b}.squeeze_excite.reduce", f"block{i}_se_reduce", _CONV))
        image(_dense(f"{b}.squeeze_excite.expand", f"block{i}_se_expand", _CONV))
        image([(f"{b}.projection.project_conv.weight", f"block{i}_project_conv/kernel", _CONV)])
        image(_batch_norm(f"{b}.projection.project_bn", f"block{i}_project_bn"))
    if config.image.top_filters or config.image.projection_dim:
        raise ConversionError("transformers ALIGN has neither a top conv nor an image projection")

    e = "text_model.embeddings"
    text([(f"{e}.word_embeddings.weight", "token_embedding/embeddings", _COPY),
          (f"{e}.position_embeddings.weight", "position_embedding/embeddings", _COPY),
          (f"{e}.token_type_embeddings.weight", "segment_embedding/embeddings", _COPY)])
    text(_layer_norm(f"{e}.LayerNorm", "embeddings_layer_norm"))
    for i in range(config.text.num_layers):
        s = f"text_model.encoder.layer.{i}"
        t = f"transformer_layer_{i}"
        for name in ("query", "key", "value"):
            text(_dense(f"{s}.attention.self.{name}", f"{t}/self_attention_layer/{name}",
                        _HEADS_IN, _HEADS_BIAS))
        text(_dense(f"{s}.attention.output.dense", f"{t}/self_attention_layer/attention_output",
                    _HEADS_OUT))
        text(_layer_norm(f"{s}.attention.output.LayerNorm", f"{t}/self_attention_layer_norm"))
        text(_dense(f"{s}.intermediate.dense", f"{t}/feedforward_intermediate_dense"))
        text(_dense(f"{s}.output.dense", f"{t}/feedforward_output_dense"))
        text(_layer_norm(f"{s}.output.LayerNorm", f"{t}/feedforward_layer_norm"))
    text(_dense("text_model.pooler.dense", "pooled_dense"))
    if config.text.projection_dim:
        text(_dense("text_projection", "text_projection"))
    pairs.append(("temperature", "temperature", _COPY))
    return pairs


def _model_variables(model) -> dict[str, Any]:
    """The model's variables by the names ``weight_mapping`` uses."""
    variables: dict[str, Any] = {}
    for prefix, tower in (("image_tower", model.image_tower), ("text_tower", model.text_tower)):
        for variable in tower.weights:
            name = f"{prefix}/{variable.path}"
            if name in variables:
                raise ConversionError(f"two model weights share the name {name}")
            variables[name] = variable
    variables["temperature"] = model.temperature_variable
    if model.logit_bias is not None:
        variables["logit_bias"] = model.logit_bias
    return variables


def load_transformers_align_weights(model, weights: dict[str, np.ndarray]) -> int:
    """Copies a transformers ALIGN state dict into a malign ``AlignModel``, strictly.

    Every checkpoint tensor must be used, every model weight set, every shape fit;
    otherwise nothing is assigned and the error lists each problem by name.

    Args:
        model: an ``AlignModel`` built from ``config_from_transformers_align``.
        weights: from ``read_transformers_weights`` (numpy, torch names).

    Returns:
        The number of tensors copied.

    Raises:
        ConversionError: naming every unused checkpoint tensor, unset model weight and
            shape mismatch.

    Example:
        >>> import malign
        >>> path = "tests/fixtures/align_tiny"
        >>> model = malign.AlignModel(config_from_transformers_align(path))  # doctest: +SKIP
        >>> load_transformers_align_weights(model, read_transformers_weights(path))  # doctest: +SKIP
        175
    """
    variables = _model_variables(model)
    problems: list[str] = []
    assignments = []
    used: set[str] = set()
    targets: set[str] = set()
    for source, target, layout in weight_mapping(model.model_config):
        targets.add(target)
        variable = variables.get(target)
        if variable is None:
            problems.append(f"model weight {target} (for checkpoint {source}) does not exist "
                            "in the malign model")
            continue
        if source not in weights:
            problems.append(f"checkpoint has no {source} (needed for model weight {target})")
            continue
        used.add(source)
        value = weights[source]
        shape = tuple(int(d) for d in variable.shape)
        expected = tuple(int(d) for d in layout.source_shape(shape))
        if tuple(value.shape) != expected:
            problems.append(f"checkpoint {source} has shape {tuple(value.shape)}; model weight "
                            f"{target} {shape} needs {expected}")
            continue
        assignments.append((variable, layout.apply(value, shape)))
    for name in sorted(set(weights) - used):
        problems.append(f"checkpoint weight {name} {tuple(weights[name].shape)} is not used "
                        "by the malign model")
    for name in sorted(set(variables) - targets):
        problems.append(f"model weight {name} is not set by the checkpoint")
    if problems:
        head = f"cannot load the checkpoint exactly ({len(problems)} problem(s)):\n  "
        raise ConversionError(head + "\n  ".join(problems))
    for variable, value in assignments:
        variable.assign(np.asarray(value, dtype=variable.dtype))
    return len(assignments)


@dataclasses.dataclass
class AlignImport:
    """What ``import_transformers_align`` found: the model and how to feed it.

    Args:
        model: the converted ``AlignModel``.
        image_processor: the checkpoint's image preprocessing (align-base's if it has none).
        vocabulary: path of the WordPiece ``vocab.txt``, or None if the checkpoint has none.
        lowercase: the tokenizer's ``do_lower_case``.
        tensors: number of checkpoint tensors copied.
    """

    model: Any
    image_processor: ImageProcessorSettings
    vocabulary: Path | None
    lowercase: bool
    tensors: int


def _tokenizer_settings(directory: Path) -> dict:
    """The checkpoint tokenizer's WordPiece settings (``malign.text.wordpiece_settings``)."""
    from malign.text import wordpiece_settings

    try:
        return wordpiece_settings(directory)
    except ValueError as error:
        raise ConversionError(str(error)) from None


def _names(path: str | os.PathLike) -> str:
    """The checkpoint's weight files, for messages."""
    from malign.convert.checkpoint import find_weights_files

    return ", ".join(str(f) for f in find_weights_files(path))


def _vocabulary_size(align: dict[str, Any], directory: Path) -> int:
    """``text_config.vocab_size`` of a config read by ``read_align_config``."""
    size = align["text_config"]["vocab_size"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ConversionError(f"{directory / 'config.json'}: text_config.vocab_size must be "
                              f"an integer >= 1, got {size!r}")
    return size


def _lowercase_of(directory: Path) -> bool:
    return bool(_tokenizer_settings(directory).get("lowercase", True))


def import_transformers_align(
    path: str | os.PathLike,
    *,
    image_size: int | None = None,
    sequence_length: int | None = None,
) -> AlignImport:
    """Converts a checkpoint and reports how to feed the result; see ``from_transformers_align``.

    Args:
        path: the checkpoint directory.
        image_size: input size; default the processor's crop (289 for align-base).
        sequence_length: caption length; default the tokenizer's (64 for align-base).

    Returns:
        An ``AlignImport``: the model, the image processor settings (align-base's
        resize ratio and the model's image size when the checkpoint has no processor
        file), the ``vocab.txt`` path, the tokenizer's lowercasing and the tensor count.
        A processor whose sizes or filter are not those of the model's evaluation crop
        (``settings.eval_crop_mismatch(model.image_size)``) gives a ``UserWarning``.

    Raises:
        ConversionError: as ``from_transformers_align``.

    Example:
        >>> result = import_transformers_align("tests/fixtures/align_tiny")  # doctest: +SKIP
        >>> result.image_processor.resize, result.vocabulary.name  # doctest: +SKIP
        ((80, 80), 'vocab.txt')
    """
    from malign.models.align_model import AlignModel

    directory = checkpoint_directory(path)
    # The files are checked before the weights are read and the model is built: a missing,
    # foreign or damaged config.json first, then the tokenizer files.
    align = read_align_config(directory)
    vocabulary = directory / "vocab.txt"
    if vocabulary.is_file():
        check_vocabulary(vocabulary, _vocabulary_size(align, directory))
    _tokenizer_settings(directory)
    weights = read_transformers_weights(path)
    temperature = weights.get("temperature")
    if temperature is None:
        raise ConversionError("checkpoint has no temperature (needed for model weight "
                              "temperature)")
    if np.size(temperature) != 1:
        raise ConversionError(f"the checkpoint's temperature has shape {np.shape(temperature)}; "
                              f"expected one number (files: {_names(path)})")
    config = config_from_transformers_align(
        directory, temperature=float(np.asarray(temperature).reshape(())),
        image_size=image_size, sequence_length=sequence_length,
    )
    model = AlignModel(config)
    count = load_transformers_align_weights(model, weights)
    size = config.image.image_size
    processor = read_image_processor(directory)
    if processor is None:  # align-base's resize-to-crop ratio
        processor = ImageProcessorSettings(resize=(round(size * 346 / 289),) * 2,
                                           crop=(size,) * 2)
    elif processor.image_size != size:  # an image_size override: scale the processor's sizes
        scale = size / processor.image_size
        processor = dataclasses.replace(
            processor,
            resize=tuple(round(v * scale) for v in processor.resize) if processor.resize else None,
            crop=(size, size) if processor.crop else None,
        )
        if processor.crop is None:
            processor = dataclasses.replace(processor, resize=(size, size))
    mismatch = processor.eval_crop_mismatch(size)
    if mismatch:
        warnings.warn(f"{directory}: malign's evaluation and export crop "
                      f"(eval_resize={config.image.eval_resize!r}) is not the checkpoint's "
                      f"image processor: {mismatch}. Use "
                      "malign.convert.processor_image_preprocess for its exact pixels.",
                      stacklevel=2)
    return AlignImport(model=model, image_processor=processor,
                       vocabulary=vocabulary if vocabulary.is_file() else None,
                       lowercase=_lowercase_of(directory), tensors=count)


def from_transformers_align(
    path: str | os.PathLike,
    *,
    image_size: int | None = None,
    sequence_length: int | None = None,
):
    """Builds a malign ``AlignModel`` from a transformers ALIGN checkpoint, exactly.

    Reads ``config.json`` (text_config, vision_config, projection_dim), the weights
    (``model.safetensors`` with numpy; ``pytorch_model.bin`` only if torch is
    installed) and the processor files, builds the model and copies every weight:
    the EfficientNet stem and blocks with their batch-norm statistics, the BERT
    embeddings, layers, layer norms and pooler, the text projection and the trained
    temperature. The result takes images as every malign model does (float32 RGB in
    [0, 1]; its first layer applies the checkpoint's ``2x - 1``) and text as
    ``{"token_ids", "padding_mask"}`` from ``transformers_align_tokenizer(path)``.

    Args:
        path: the checkpoint directory (e.g. a download of ``kakaobrain/align-base``).
        image_size: input size; default the processor's crop (289 for align-base).
        sequence_length: caption length; default the tokenizer's (64 for align-base).

    Returns:
        The converted ``AlignModel``.

    Raises:
        ConversionError: an unsupported setting, or a weight that is missing, unused or
            of the wrong shape (named).

    Example:
        >>> import malign
        >>> model = malign.convert.from_transformers_align("tests/fixtures/align_tiny")  # doctest: +SKIP
        >>> tok = malign.convert.transformers_align_tokenizer("tests/fixtures/align_tiny")  # doctest: +SKIP
        >>> txt = model.embed_text(tok(["a photo of a cat"]))  # doctest: +SKIP
    """
    return import_transformers_align(path, image_size=image_size,
                                     sequence_length=sequence_length).model


def transformers_align_tokenizer(path: str | os.PathLike, sequence_length: int | None = None):
    """The checkpoint's BERT WordPiece tokenizer as a malign tokenizer layer.

    Args:
        path: the checkpoint directory (``vocab.txt``; optionally ``tokenizer.json`` or
            ``tokenizer_config.json`` for lowercasing, accents and added tokens, see
            ``malign.text.wordpiece_settings``, and ``model_max_length``).
        sequence_length: tokens per caption; default as in ``config_from_transformers_align``.

    Returns:
        ``malign.text.WordPieceTokenizer`` (strings -> ``{"token_ids", "padding_mask"}``).

    Raises:
        ConversionError: the checkpoint has no ``vocab.txt``, or its tokenizer does something
            the WordPiece layer does not (named with the file).

    Example:
        >>> tok = transformers_align_tokenizer("tests/fixtures/align_tiny")  # doctest: +SKIP
        >>> tok(["a photo of a cat"])["token_ids"].shape  # doctest: +SKIP
        TensorShape([1, 16])
    """
    from malign.text import WordPieceTokenizer

    directory = checkpoint_directory(path)
    vocabulary = directory / "vocab.txt"
    if not vocabulary.is_file():
        raise ConversionError(f"no vocab.txt in {directory}: the BERT WordPiece vocabulary "
                              "ships with the checkpoint (download the whole directory)")
    if sequence_length is None:
        sequence_length = _sequence_length_of(directory)
        if (directory / "config.json").is_file():  # as the converted model's
            text = read_align_config(directory)["text_config"]
            sequence_length = min(sequence_length, int(text["max_position_embeddings"]))
    return WordPieceTokenizer(str(vocabulary), sequence_length=int(sequence_length),
                              **_tokenizer_settings(directory))
