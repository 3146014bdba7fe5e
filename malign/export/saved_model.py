"""SavedModel export for TF Serving: raw strings and encoded images in, embeddings out.

:func:`export_saved_model` writes ``export_dir/<version>/``, the layout TF Serving watches,
holding a SavedModel whose graph does everything a client would otherwise have to copy:
tokenization (the SentencePiece model is a constant of the graph and a file in ``assets/``)
and image decoding plus the evaluation centre crop (:func:`malign.data.preprocess.decode_and_crop`,
the very function ``malign eval`` uses, with the model's ``ImageTowerConfig.eval_resize``: the
shorter side, or both sides as the ``kakaobrain/align-base`` processor does). The SavedModel
needs only ``tensorflow`` and ``tensorflow_text`` to run: neither malign nor keras-hub.

Signatures (``N`` = batch size, ``D`` = embedding width; embeddings are L2-normalised float32):

- ``embed_text``: ``text`` string ``[N]`` (UTF-8 captions) -> ``embeddings`` ``[N, D]``.
- ``embed_image``: ``image_bytes`` string ``[N]`` (JPEG, PNG, GIF, BMP or WebP files) ->
  ``embeddings`` ``[N, D]``.
- ``serving_default``: ``image_bytes`` ``[N_i]`` and ``text`` ``[N_t]`` ->
  ``image_embeddings`` ``[N_i, D]``, ``text_embeddings`` ``[N_t, D]`` and ``logits``
  ``[N_i, N_t]`` (similarity / temperature, as in training).

An export of one tower (``towers=("text",)``, e.g. a distilled student's text encoder)
has that tower's signature, and ``serving_default`` is the same function.

Bad input fails the request with ``INVALID_ARGUMENT`` and a message that names the
element: ``image_bytes[3] (12 bytes) is not a JPEG, PNG, GIF, BMP or WebP file``,
``image_bytes[0] (1874 bytes) is a truncated JPEG (no end-of-image marker)``,
``image_bytes[1] (391865 bytes) is 20000x20000 = 400000000 pixels, over the limit of 67108864
pixels`` (read from the header, before decoding; ``max_image_pixels``),
``text[1] is not valid UTF-8``. An empty caption embeds as ``[CLS] [SEP]``; a batch of zero
rows gives zero rows.

Next to the SavedModel, ``assets.extra/model.json`` is the model card (preset, embedding
width, tokenizer, image size, preprocessing, training data, evaluation figures, the export's
own parity check) and ``assets.extra/`` also holds a copy of the tokenizer file.

A version is written into a hidden staging directory and renamed into place when complete,
so a TF Serving instance watching ``export_dir`` never loads a half-written version.

Example:
    >>> import malign, tempfile
    >>> model = malign.AlignModel.from_preset("tiny")
    >>> tok = malign.text.SentencePieceTokenizer(malign.text.test_vocab_path(), model.sequence_length)
    >>> path = malign.export.export_saved_model(model, tok, tempfile.mkdtemp() + "/align")
    >>> path.name
    '1'
    >>> import tensorflow as tf
    >>> served = tf.saved_model.load(str(path))
    >>> served.signatures["embed_text"](text=tf.constant(["a dog", "ein Hund"]))["embeddings"].shape
    TensorShape([2, 32])
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from malign import atomic_files
from malign.data.image_header import DEFAULT_MAX_IMAGE_PIXELS, image_size_tf
from malign.data.preprocess import (
    ALIGN_CROP,
    ALIGN_RESIZE,
    DEFAULT_EVAL_RESIZE,
    check_eval_resize,
    decode_and_crop,
    model_eval_resize,
    resize_size,
)

__all__ = [
    "EMBED_IMAGE",
    "EMBED_TEXT",
    "IMAGE_INPUT",
    "MODEL_CARD_PATH",
    "SERVING_DEFAULT",
    "TEXT_INPUT",
    "TOWERS",
    "decode_images",
    "export_saved_model",
    "next_version",
    "read_model_card",
    "training_record",
]

EMBED_TEXT = "embed_text"
EMBED_IMAGE = "embed_image"
SERVING_DEFAULT = "serving_default"
TEXT_INPUT = "text"
IMAGE_INPUT = "image_bytes"
TOWERS = ("image", "text")
#: The model card, relative to the version directory.
MODEL_CARD_PATH = "assets.extra/model.json"
#: Largest difference between the SavedModel's and the Keras model's embeddings that the
#: export's own check accepts (it runs both on the same probe inputs).
VERIFY_TOLERANCE = 1e-4

_CARD_FORMAT = "malign-saved-model"
_CARD_FORMAT_VERSION = 1

# File signatures that tf.io.decode_image recognises (it also decodes WebP in TF >= 2.18).
_JPEG_SOI = b"\xff\xd8\xff"
_JPEG_EOI = b"\xff\xd9"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"IEND"
_GIF_SIGNATURES = (b"GIF87a", b"GIF89a")
_BMP_SIGNATURE = b"BM"
_RIFF, _WEBP = b"RIFF", b"WEBP"
#: Base64 of the JPEG/PNG/GIF signatures: bytes starting so were sent still base64-encoded.
_BASE64_PREFIXES = ("/9j/", "iVBORw0KGgo", "R0lGOD")
_SHOWN_BAD = 5  # at most this many bad elements are named in one error message

_PROBE_TEXTS = (
    "a black dog runs across the grass",
    "ein schwarzer Hund läuft über das Gras",
    "un chien noir court sur l'herbe",
    "černý pes běží po trávě",
    "",
    "一只黑狗在草地上奔跑",
)


# -- in-graph image decoding ---------------------------------------------------------------
def _starts_with(strings: tf.Tensor, prefix: bytes, offset: int = 0) -> tf.Tensor:
    return tf.equal(tf.strings.substr(strings, offset, len(prefix)), prefix)


def _contains(strings: tf.Tensor, marker: bytes) -> tf.Tensor:
    """Elementwise: does ``marker`` occur in the string (one split, no decoding)."""
    return tf.strings.split(strings, sep=marker, maxsplit=1).row_lengths() > 1


_SEND_FILES = "send the raw bytes of JPEG, PNG, GIF, BMP or WebP files"


def _bad_image_message(image_bytes: tf.Tensor, bad: tf.Tensor, reason: tf.Tensor,
                       input_name: str, advice: str = _SEND_FILES) -> tf.Tensor:
    """``"image_bytes[3] (12 bytes) is ...; image_bytes[7] ... [2 of 8 images are bad; ...]"``."""
    index = tf.where(bad)[:, 0]
    shown = index[:_SHOWN_BAD]
    sizes = tf.strings.as_string(tf.strings.length(tf.gather(image_bytes, shown)))
    parts = tf.strings.join([
        f"{input_name}[", tf.strings.as_string(shown), "] (", sizes, " bytes) ",
        tf.gather(reason, shown),
    ])
    count = tf.strings.as_string(tf.size(index))
    total = tf.strings.as_string(tf.size(bad))
    return tf.strings.join([
        tf.strings.reduce_join(parts, separator="; "),
        " [", count, " of ", total, f" images are bad; {advice}]",
    ])


def decode_images(image_bytes: tf.Tensor, image_size: int,
                  input_name: str = IMAGE_INPUT,
                  eval_resize: str = DEFAULT_EVAL_RESIZE,
                  max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> tf.Tensor:
    """Decodes and centre-crops a batch of encoded images exactly as evaluation does.

    Each element goes through :func:`malign.data.preprocess.decode_and_crop` with
    ``training=False`` (EXIF orientation applied, shorter side, or with
    ``eval_resize="square"`` both sides, resized to ``round(size * 346 / 289)``, centre
    ``size x size`` crop, values in [0, 1]). Before decoding, the batch is checked: every
    element must start with a JPEG, PNG, GIF, BMP or WebP signature, and a JPEG must contain
    its end-of-image marker and a PNG its ``IEND`` chunk (a truncated upload). Otherwise an
    ``InvalidArgumentError`` names the bad elements, e.g. ``image_bytes[3] (12 bytes) is not a
    JPEG, PNG, GIF, BMP or WebP file``. Then each header's size is read
    (:func:`malign.data.image_header.image_size_tf`) and an image with more than
    ``max_image_pixels`` pixels fails the request before anything is decoded:
    ``image_bytes[0] (391865 bytes) is 20000x20000 = 400000000 pixels, over the limit of
    67108864 pixels``. Bytes that pass these checks but are corrupt inside fail in
    TensorFlow's decoder with its own ``InvalidArgumentError`` ("Invalid JPEG data ...").

    Args:
        image_bytes: string ``[N]``, each element an encoded image file.
        image_size: output side.
        input_name: the input's name in error messages.
        eval_resize: "shorter_side" or "square", the model's
            (``malign.data.preprocess.model_eval_resize(model)``).
        max_image_pixels: the largest width x height accepted; None for no limit.

    Returns:
        float32 ``[N, image_size, image_size, 3]`` in [0, 1].

    Example:
        >>> jpeg = tf.io.encode_jpeg(tf.zeros([40, 60, 3], tf.uint8))
        >>> decode_images(tf.stack([jpeg, jpeg]), 16).shape.as_list()
        [2, 16, 16, 3]
    """
    check_eval_resize(eval_resize)
    image_bytes = tf.convert_to_tensor(image_bytes, tf.string)
    with tf.name_scope(f"decode_{input_name}"):
        # The first 12 bytes, zero-padded so that short inputs compare instead of failing.
        head = tf.strings.join([tf.strings.substr(image_bytes, 0, 12), b"\0" * 12])
        is_jpeg = _starts_with(head, _JPEG_SOI)
        is_png = _starts_with(head, _PNG_SIGNATURE)
        known = (
            is_jpeg | is_png
            | _starts_with(head, _GIF_SIGNATURES[0])
            | _starts_with(head, _GIF_SIGNATURES[1])
            | _starts_with(head, _BMP_SIGNATURE)
            | (_starts_with(head, _RIFF) & _starts_with(head, _WEBP, 8))
        )
        base64 = tf.zeros_like(known)
        for prefix in _BASE64_PREFIXES:
            base64 |= _starts_with(head, prefix.encode())
        truncated_jpeg = is_jpeg & ~_contains(image_bytes, _JPEG_EOI)
        truncated_png = is_png & ~_contains(image_bytes, _PNG_IEND)
        reason = tf.where(
            base64,
            "looks base64-encoded: send the decoded bytes (in a TF Serving REST request, "
            "base64 data goes in an object with the single key b64)",
            tf.where(
                truncated_jpeg,
                "is a truncated JPEG (no end-of-image marker)",
                tf.where(
                    truncated_png,
                    "is a truncated PNG (no IEND chunk)",
                    "is not a JPEG, PNG, GIF, BMP or WebP file",
                ),
            ),
        )
        bad = ~known | base64 | truncated_jpeg | truncated_png
        check = tf.debugging.Assert(
            ~tf.reduce_any(bad),
            [_bad_image_message(image_bytes, bad, reason, input_name)],
            name="check_image_bytes",
        )
        with tf.control_dependencies([check]):
            image_bytes = tf.identity(image_bytes)
        if max_image_pixels is not None:
            image_bytes = _check_image_pixels(image_bytes, int(max_image_pixels), input_name)
        images = tf.map_fn(
            lambda encoded: decode_and_crop(encoded, image_size, training=False,
                                            eval_resize=eval_resize),
            image_bytes,
            fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.float32),
            name="decode_and_crop",
        )
    images.set_shape([None, image_size, image_size, 3])
    return images


def _check_image_pixels(image_bytes: tf.Tensor, limit: int, input_name: str) -> tf.Tensor:
    """Fails with ``image_bytes[i] (n bytes) is WxH = P pixels, over the limit of L pixels``
    for images whose header says more than ``limit`` pixels; reads headers only."""
    sizes = tf.map_fn(image_size_tf, image_bytes,
                      fn_output_signature=tf.TensorSpec([2], tf.int64), name="image_sizes")
    sizes = tf.reshape(sizes, [-1, 2])
    pixels = sizes[:, 0] * sizes[:, 1]
    over = pixels > limit
    reason = tf.strings.join([
        "is ", tf.strings.as_string(sizes[:, 1]), "x", tf.strings.as_string(sizes[:, 0]),
        " = ", tf.strings.as_string(pixels), f" pixels, over the limit of {limit} pixels",
    ])
    check = tf.debugging.Assert(
        ~tf.reduce_any(over),
        [_bad_image_message(image_bytes, over, reason, input_name,
                            advice=f"send images of at most {limit} pixels (width x height)")],
        name="check_image_pixels",
    )
    with tf.control_dependencies([check]):
        return tf.identity(image_bytes)


def _check_text(text: tf.Tensor, input_name: str = TEXT_INPUT) -> tf.Tensor:
    """Fails with ``text[i] is not valid UTF-8`` for captions that are not UTF-8."""
    valid = tf.equal(
        tf.strings.unicode_transcode(text, "UTF-8", "UTF-8", errors="replace",
                                     replacement_char=0xFFFD),
        text,
    )
    shown = tf.where(~valid)[:_SHOWN_BAD, 0]
    message = tf.strings.join([
        tf.strings.reduce_join(
            tf.strings.join([f"{input_name}[", tf.strings.as_string(shown), "]"]),
            separator=", ",
        ),
        " is not valid UTF-8: captions must be UTF-8 text",
    ])
    check = tf.debugging.Assert(tf.reduce_all(valid), [message], name="check_text")
    with tf.control_dependencies([check]):
        return tf.identity(text)


# -- the serving module --------------------------------------------------------------------
class _Untracked:
    """Holds an object without making it a SavedModel dependency."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any) -> None:
        self.obj = obj


class _ServingModule(tf.Module):
    """Holds what the signatures use: the exported towers' weights, the tokenizer, the vocabulary.

    The weights are tracked as the ``tf.Variable`` objects under the Keras variables
    (``keras.Variable.value``), not as Keras layers. A tracked Keras layer saves each weight
    twice: the checkpoint restores a copy while the functions read the original, which
    ``tf.saved_model.load`` tolerates but TF Serving and every other TF1-style session
    loader do not ("Resource localhost/dense/kernel does not exist"). Only the towers being
    exported are tracked, so a text-only export stores no image weights
    (``tf.saved_model.save`` refuses a function that reads an untracked variable, which
    makes this self-checking).
    """

    def __init__(self, model: Any, tokenizer: Any, towers: tuple[str, ...],
                 vocabulary_file: str | None,
                 max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> None:
        super().__init__(name="malign_serving")
        self._ref = _Untracked(model)  # not tracked: only the exported parts are saved
        self._max_image_pixels = _Untracked(max_image_pixels)
        self.towers = tuple(towers)
        for tower in towers:
            part = getattr(model, f"{tower}_tower", None)
            setattr(self, f"{tower}_weights", _tf_variables(part if part is not None else model))
        if "image" in towers and "text" in towers:
            scalars = [getattr(model, "temperature_variable", None),
                       getattr(model, "logit_bias", None)]
            self.scalar_weights = [_tf_variable(v) for v in scalars if v is not None]
            if scalars[0] is None:  # not an AlignModel: track everything it has
                self.model_weights = _tf_variables(model)
        if "text" in towers:
            self.tokenizer = tokenizer
            if vocabulary_file is not None:
                self.vocabulary = tf.saved_model.Asset(vocabulary_file)

    def embed_text(self, text: tf.Tensor) -> tf.Tensor:
        text = _check_text(text)
        return self._ref.obj.embed_text(self.tokenizer(text), training=False)

    def embed_image(self, image_bytes: tf.Tensor) -> tf.Tensor:
        model = self._ref.obj
        images = decode_images(image_bytes, int(model.image_size),
                               eval_resize=model_eval_resize(model),
                               max_image_pixels=self._max_image_pixels.obj)
        # TensorFlow 2.21's CPU Conv2D returns its *input* shape for an empty batch
        # ([0, H, W, 3] instead of [0, H', W', C]), and the next layer then fails: zero
        # images skip the tower.
        width = int(model.embedding_dim)
        return tf.cond(tf.shape(images)[0] > 0,
                       lambda: tf.cast(model.embed_image(images, training=False), tf.float32),
                       lambda: tf.zeros([0, width], tf.float32))

    def logits(self, image_embeddings: tf.Tensor, text_embeddings: tf.Tensor) -> tf.Tensor:
        return tf.cast(self._ref.obj.similarity_logits(image_embeddings, text_embeddings),
                       tf.float32)


def _tf_variable(variable: Any) -> tf.Variable:
    """The ``tf.Variable`` holding a Keras variable's value (itself for a ``tf.Variable``)."""
    value = variable if isinstance(variable, tf.Variable) else getattr(variable, "value", None)
    if not isinstance(value, tf.Variable):
        raise TypeError(f"cannot export the weight {getattr(variable, 'path', variable)!r}: "
                        f"it is a {type(variable).__name__}, not a TensorFlow-backend variable "
                        "(export needs KERAS_BACKEND=tensorflow)")
    return value


def _tf_variables(layer: Any) -> list[tf.Variable]:
    """Every variable of a Keras layer or model, as ``tf.Variable`` objects."""
    seen: dict[int, tf.Variable] = {}
    for variable in layer.variables:
        value = _tf_variable(variable)
        seen.setdefault(id(value), value)
    return list(seen.values())


def _named(tensor: tf.Tensor, name: str) -> tf.Tensor:
    return tf.identity(tf.cast(tensor, tf.float32), name=name)


def _signatures(module: _ServingModule) -> dict[str, Any]:
    text_spec = tf.TensorSpec([None], tf.string, name=TEXT_INPUT)
    image_spec = tf.TensorSpec([None], tf.string, name=IMAGE_INPUT)
    signatures: dict[str, Any] = {}

    if "text" in module.towers:
        @tf.function(input_signature=[text_spec])
        def embed_text(text):
            return {"embeddings": _named(module.embed_text(text), "embeddings")}

        signatures[EMBED_TEXT] = embed_text

    if "image" in module.towers:
        @tf.function(input_signature=[image_spec])
        def embed_image(image_bytes):
            return {"embeddings": _named(module.embed_image(image_bytes), "embeddings")}

        signatures[EMBED_IMAGE] = embed_image

    if len(module.towers) == 2:
        # Calls the two traced functions above rather than tracing each tower again.
        @tf.function(input_signature=[image_spec, text_spec])
        def serving_default(image_bytes, text):
            image_emb = embed_image(image_bytes)["embeddings"]
            text_emb = embed_text(text)["embeddings"]
            return {
                "image_embeddings": tf.identity(image_emb, name="image_embeddings"),
                "text_embeddings": tf.identity(text_emb, name="text_embeddings"),
                "logits": _named(module.logits(image_emb, text_emb), "logits"),
            }

        signatures[SERVING_DEFAULT] = serving_default
    else:
        signatures[SERVING_DEFAULT] = next(iter(signatures.values()))
    return signatures


# -- checks and helpers -------------------------------------------------------------------
def _resolve_model(model: Any, towers: tuple[str, ...]) -> Any:
    """The model to export: the model itself, or the ``student`` of a distillation model."""
    needed = {"image": ("embed_image", "image_size"), "text": ("embed_text", "sequence_length")}

    def has_all(candidate: Any) -> bool:
        return all(hasattr(candidate, a) for t in towers for a in needed[t])

    if has_all(model):
        return model
    student = getattr(model, "student", None)
    if student is not None and has_all(student):
        return student
    missing = sorted({a for t in towers for a in needed[t] if not hasattr(model, a)})
    raise ValueError(
        f"cannot export towers {', '.join(towers)} of a {type(model).__name__}: it has no "
        f"{', '.join(missing)} (export an AlignModel, or a model whose 'student' is one)"
    )


def _check_towers(towers: Sequence[str] | str) -> tuple[str, ...]:
    if isinstance(towers, str):
        towers = [t.strip() for t in towers.split(",") if t.strip()]
    towers = tuple(dict.fromkeys(towers))
    unknown = [t for t in towers if t not in TOWERS]
    if unknown or not towers:
        raise ValueError(
            f"towers must be 'image', 'text' or both, got {', '.join(map(repr, towers)) or 'none'}"
        )
    return tuple(t for t in TOWERS if t in towers)


def _check_tokenizer(tokenizer: Any, model: Any) -> None:
    if tokenizer is None:
        raise ValueError("exporting the text tower needs the tokenizer the model was trained with")
    length = getattr(tokenizer, "sequence_length", None)
    if length != model.sequence_length:
        raise ValueError(
            f"the tokenizer makes rows of {length} tokens but the model was built for "
            f"{model.sequence_length}: build it with sequence_length=model.sequence_length, "
            "as evaluation does, so that served embeddings equal evaluated ones"
        )
    vocab = getattr(model, "vocabulary_size", None)
    if vocab is not None and tokenizer.vocabulary_size > vocab:
        raise ValueError(
            f"the tokenizer has {tokenizer.vocabulary_size} ids but the model's vocabulary has "
            f"{vocab}: it is not the tokenizer this model was trained with"
        )


def next_version(export_dir: str | os.PathLike) -> int:
    """The version TF Serving would see as newest plus one (1 for a new directory).

    Args:
        export_dir: the model's base directory (the one holding ``1/``, ``2/``, ...).

    Example:
        >>> next_version("/nonexistent/malign")
        1
    """
    base = Path(export_dir)
    versions = [int(p.name) for p in base.iterdir() if p.is_dir() and p.name.isdigit()] \
        if base.is_dir() else []
    return max(versions, default=0) + 1


def _tokenizer_file(tokenizer: Any) -> tuple[str, bytes, dict[str, Any]]:
    """The tokenizer as a file (name, bytes) and its description for the model card."""
    specials = {
        name: int(getattr(tokenizer, f"{name}_token_id"))
        for name in ("cls", "sep", "pad", "mask", "unk")
    }
    info: dict[str, Any] = {
        "class": type(tokenizer).__name__,
        "vocabulary_size": int(tokenizer.vocabulary_size),
        "sequence_length": int(tokenizer.sequence_length),
        "special_token_ids": specials,
        "packing": "[CLS] pieces [SEP] [PAD]..., truncated to sequence_length - 2 pieces",
    }
    if hasattr(tokenizer, "proto"):
        name, data = "tokenizer.model", bytes(tokenizer.proto)
        info["type"] = "sentencepiece"
    elif hasattr(tokenizer, "vocabulary"):
        name = "vocab.txt"
        data = "".join(t + "\n" for t in tokenizer.vocabulary).encode("utf-8")
        info["type"] = "wordpiece"
        info["lowercase"] = bool(getattr(tokenizer, "lowercase", True))
    else:
        raise ValueError(
            f"cannot export a {type(tokenizer).__name__}: expected a malign.text tokenizer "
            "(SentencePieceTokenizer or WordPieceTokenizer)"
        )
    info["file"] = f"assets/{name}"
    info["sha256"] = hashlib.sha256(data).hexdigest()
    return name, data, info


def _probe_images(image_size: int) -> list[bytes]:
    """Two deterministic non-square images, JPEG and PNG, for the export's parity check."""
    rng = np.random.default_rng(0)
    side = max(2 * int(image_size), 8)
    smooth = np.linspace(0, 255, side * (side + side // 2) * 3).reshape(side, -1, 3)
    noisy = np.clip(smooth + rng.normal(0, 30, smooth.shape), 0, 255).astype(np.uint8)
    return [tf.io.encode_jpeg(noisy, quality=90).numpy(),
            tf.io.encode_png(np.ascontiguousarray(noisy.transpose(1, 0, 2))).numpy()]


def _verify(path: Path, model: Any, tokenizer: Any, towers: tuple[str, ...]) -> dict[str, Any]:
    """Loads the SavedModel and compares it with the Keras model on probe inputs."""
    loaded = tf.saved_model.load(str(path))
    result: dict[str, Any] = {"tolerance": VERIFY_TOLERANCE}
    if "text" in towers:
        texts = tf.constant(_PROBE_TEXTS)
        served = loaded.signatures[EMBED_TEXT](text=texts)["embeddings"].numpy()
        expected = _numpy(model.embed_text(tokenizer(texts), training=False))
        result["text_max_abs_diff"] = float(np.max(np.abs(served - expected)))
        result["texts"] = len(_PROBE_TEXTS)
    if "image" in towers:
        probes = _probe_images(model.image_size)
        served = loaded.signatures[EMBED_IMAGE](image_bytes=tf.constant(probes))["embeddings"]
        mode = model_eval_resize(model)
        images = tf.stack([decode_and_crop(b, model.image_size, training=False, eval_resize=mode)
                           for b in probes])
        expected = _numpy(model.embed_image(images, training=False))
        result["image_max_abs_diff"] = float(np.max(np.abs(served.numpy() - expected)))
        result["images"] = len(probes)
    worst = max(v for k, v in result.items() if k.endswith("max_abs_diff"))
    if not worst <= VERIFY_TOLERANCE:
        raise RuntimeError(
            f"the exported SavedModel's embeddings differ from the Keras model's by {worst:.3g} "
            f"(more than {VERIFY_TOLERANCE}); the export at {path} is not usable: {result}"
        )
    return result


def _numpy(x: Any) -> np.ndarray:
    """A tensor or Keras variable as a numpy array (without numpy's copy-keyword warning)."""
    return np.array(tf.convert_to_tensor(x).numpy())


def _preset_name(model: Any) -> str | None:
    """The preset whose config equals the model's, if any."""
    config = getattr(model, "model_config", None)
    if config is None:
        return None
    from malign.presets import PRESETS

    for name, preset in PRESETS.items():
        if preset == config:
            return name
    return None


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda o: o.tolist() if hasattr(o, "tolist")
                                 else str(o)))


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _signature_table(towers: tuple[str, ...], dim: int) -> dict[str, Any]:
    text_in = {TEXT_INPUT: {"dtype": "string", "shape": [None]}}
    image_in = {IMAGE_INPUT: {"dtype": "string", "shape": [None]}}
    emb = {"embeddings": {"dtype": "float32", "shape": [None, dim]}}
    table = {}
    if "text" in towers:
        table[EMBED_TEXT] = {"inputs": text_in, "outputs": emb}
    if "image" in towers:
        table[EMBED_IMAGE] = {"inputs": image_in, "outputs": emb}
    if len(towers) == 2:
        table[SERVING_DEFAULT] = {
            "inputs": {**image_in, **text_in},
            "outputs": {
                "image_embeddings": {"dtype": "float32", "shape": [None, dim]},
                "text_embeddings": {"dtype": "float32", "shape": [None, dim]},
                "logits": {"dtype": "float32", "shape": [None, None]},
            },
        }
    else:
        table[SERVING_DEFAULT] = dict(next(iter(table.values())))
    return table


def _model_card(model: Any, towers: tuple[str, ...], version: int, tokenizer_info: dict | None,
                extra: Mapping[str, Any] | None,
                max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> dict[str, Any]:
    import malign

    dim = int(model.embedding_dim)
    config = getattr(model, "model_config", None)
    card: dict[str, Any] = {
        "format": _CARD_FORMAT,
        "format_version": _CARD_FORMAT_VERSION,
        "name": getattr(model, "name", type(model).__name__),
        "version": version,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "preset": _preset_name(model),
        "towers": list(towers),
        "embedding_dim": dim,
        "embeddings": "float32, L2-normalised: similarity is the dot product (cosine)",
        "signatures": _signature_table(towers, dim),
    }
    if "image" in towers:
        size = int(model.image_size)
        mode = model_eval_resize(model)
        side = resize_size(size)
        if mode == "square":
            resize = (f"resize the whole image to {side}x{side} (= round({size} * {ALIGN_RESIZE} / "
                      f"{ALIGN_CROP}); the aspect ratio is not kept) with antialiased bilinear "
                      "interpolation, round to whole pixel values")
        else:
            resize = (f"resize the shorter side to {side} (= round({size} * {ALIGN_RESIZE} / "
                      f"{ALIGN_CROP})) with antialiased bilinear interpolation")
        card["image"] = {
            "image_size": size,
            "eval_resize": mode,
            "formats": ["jpeg", "png", "gif", "bmp", "webp"],
            "max_image_pixels": max_image_pixels,
            "preprocessing": (
                "decode to 8-bit RGB (first frame of an animation; 16-bit samples keep their "
                "high byte; alpha dropped), turn upright by the EXIF orientation (JPEG, PNG, "
                f"WebP), {resize}, centre crop "
                f"{size}x{size}, divide by 255; the model normalises further itself. Equal to "
                "`malign eval` (malign.data.preprocess.decode_and_crop, training=False, "
                f"eval_resize={mode!r})."
            ),
        }
    if "text" in towers:
        card["text"] = {"sequence_length": int(model.sequence_length),
                        "tokenizer": tokenizer_info}
    if len(towers) == 2:
        card["temperature"] = float(_numpy(model.temperature))
        bias = getattr(model, "logit_bias", None)
        card["logit_bias"] = None if bias is None else float(_numpy(bias))
        card["logits"] = "image_embeddings @ text_embeddings^T / temperature (+ logit_bias)"
    if config is not None and hasattr(config, "to_dict"):
        card["model_config"] = config.to_dict()
    card["training"] = None
    card["evaluation"] = None
    card["software"] = {
        "malign": malign.__version__,
        "tensorflow": tf.__version__,
        "tensorflow_text": _version_of("tensorflow_text"),
        "keras": _version_of("keras"),
        "keras_hub": _version_of("keras_hub"),
    }
    card["serving"] = {
        "runtime": "any TensorFlow runtime with tensorflow-text ops (TF Serving 2.x images "
                   "include them); malign is not needed",
        "errors": "undecodable images, images over image.max_image_pixels (width x height, "
                  "read from the header) and non-UTF-8 captions fail the request with "
                  "INVALID_ARGUMENT naming the element, e.g. image_bytes[3]",
    }
    if extra:
        card = _merge(card, extra)
    return _json_safe(card)


def _version_of(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module.replace("_", "-"))
    except Exception:  # not installed: the card just says so
        return None


# -- public API ----------------------------------------------------------------------------
def export_saved_model(
    model: Any,
    tokenizer: Any,
    export_dir: str | os.PathLike,
    version: int | None = 1,
    towers: Sequence[str] | str = TOWERS,
    model_card: Mapping[str, Any] | None = None,
    *,
    overwrite: bool = False,
    verify: bool = True,
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
) -> Path:
    """Writes a TF Serving SavedModel of a model's towers to ``export_dir/<version>/``.

    See the module docstring for the signatures. The tokenizer's vocabulary is stored in
    the SavedModel (a graph constant for tensorflow-text's op, and ``assets/tokenizer.model``
    or ``assets/vocab.txt``), so the export references no file outside itself.

    Args:
        model: an :class:`malign.AlignModel` (or an object with its ``embed_image`` /
            ``embed_text`` interface, or a distillation model whose ``student`` has it).
        tokenizer: the ``malign.text`` tokenizer the model was trained with, with
            ``sequence_length == model.sequence_length``. Unused (may be None) for an
            image-only export.
        export_dir: the model's base directory; TF Serving's ``--model_base_path``.
        version: the version number (the sub-directory name); None takes the next free one.
        towers: ``("image", "text")``, ``("image",)`` or ``("text",)`` (or ``"image,text"``).
        model_card: extra fields for ``assets.extra/model.json`` (e.g. ``{"training":
            {...}, "evaluation": {...}}``), merged over the generated card.
        overwrite: replace an existing version directory (otherwise FileExistsError).
        verify: load the SavedModel back and check that its embeddings equal the Keras
            model's on probe captions and JPEG/PNG images (within 1e-4); the figures go into
            the card under ``export_check``.
        max_image_pixels: ``embed_image`` refuses images whose header says more pixels
            (width x height) with INVALID_ARGUMENT, before decoding them; recorded in the
            card as ``image.max_image_pixels``. None for no limit.

    Returns:
        The version directory.

    Raises:
        FileExistsError: the version exists and ``overwrite`` is False.
        ValueError: bad towers, or a tokenizer that does not fit the model.
        RuntimeError: the verification found different embeddings.
        malign.atomic_files.WriteFailedError: the disk is full or read-only (names the
            version directory; an existing version is unchanged, the staging removed).

    Example:
        >>> import malign, tempfile
        >>> model = malign.AlignModel.from_preset("tiny")
        >>> tok = malign.text.SentencePieceTokenizer(malign.text.test_vocab_path(), 16)
        >>> out = export_saved_model(model, tok, tempfile.mkdtemp(), version=3, towers="text")
        >>> out.name, read_model_card(out)["towers"]
        ('3', ['text'])
    """
    started = time.perf_counter()
    towers = _check_towers(towers)
    model = _resolve_model(model, towers)
    if "text" in towers:
        _check_tokenizer(tokenizer, model)
    base = Path(export_dir)
    if "://" in os.fspath(export_dir):
        raise ValueError(
            f"export_dir must be a local directory, got {export_dir}: export locally, then copy "
            "the version directory (e.g. gsutil cp -r) so the copy appears complete"
        )
    if version is None:
        version = next_version(base)
    if not isinstance(version, (int, np.integer)) or isinstance(version, bool) or version < 0:
        raise ValueError(f"version must be a non-negative integer, got {version!r}")
    version = int(version)
    target = base / str(version)
    if target.exists() and not overwrite:
        raise FileExistsError(
            f"{target} exists: TF Serving versions are immutable; choose another --version "
            "(or none, for the next one) or pass overwrite=True / --overwrite"
        )
    base.mkdir(parents=True, exist_ok=True)
    # A hidden, non-numeric staging directory: TF Serving ignores it until the rename.
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-export-{version}-", dir=base))
    try:
        saved = staging / "saved_model"
        tokenizer_info = vocabulary_file = None
        if "text" in towers:
            name, data, tokenizer_info = _tokenizer_file(tokenizer)
            vocabulary_file = staging / name
            vocabulary_file.write_bytes(data)
        module = _ServingModule(model, tokenizer, towers,
                                None if vocabulary_file is None else str(vocabulary_file),
                                max_image_pixels)
        signatures = _signatures(module)
        tf.saved_model.save(module, str(saved), signatures=signatures)
        extra_dir = saved / "assets.extra"
        extra_dir.mkdir(exist_ok=True)
        if vocabulary_file is not None:
            shutil.copyfile(vocabulary_file, extra_dir / vocabulary_file.name)
        card = _model_card(model, towers, version, tokenizer_info, model_card, max_image_pixels)
        card["export_seconds"] = round(time.perf_counter() - started, 2)
        if verify:
            card["export_check"] = _verify(saved, model, tokenizer, towers)
        (saved / MODEL_CARD_PATH).write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n",
                                             encoding="utf-8")
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".old-{version}-", dir=base))
            os.replace(target, old / "v")
            os.replace(saved, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(saved, target)
    except BaseException as error:
        # A full or read-only disk: one error naming the version; the staging is removed
        # below and an existing version is unchanged.
        if atomic_files.is_write_failure(error):
            raise atomic_files.WriteFailedError(target, error) from error
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def read_model_card(version_dir: str | os.PathLike) -> dict[str, Any]:
    """Reads ``assets.extra/model.json`` of an exported version.

    Args:
        version_dir: the directory :func:`export_saved_model` returned.

    Example:
        >>> read_model_card("export/malign/1")["embedding_dim"]  # doctest: +SKIP
        640
    """
    return json.loads((Path(version_dir) / MODEL_CARD_PATH).read_text(encoding="utf-8"))


def training_record(model_path: str | os.PathLike) -> dict[str, Any]:
    """What the run that wrote ``model_path`` says about itself, for the model card.

    Reads ``config.json`` (written by ``malign train``) next to the model or one directory up
    for the preset, training data and schedule, and every ``metrics.json`` (written by
    ``malign eval``) up to two directories below the model's directory whose ``meta.model``
    is this model file.

    Args:
        model_path: the ``.keras`` file.

    Returns:
        ``{"preset": ..., "training": {...} | None, "evaluation": {...} | None}`` (keys with
        nothing found are left out).

    Example:
        >>> training_record("/nonexistent/model.keras")
        {}
    """
    path = Path(model_path).resolve()
    out: dict[str, Any] = {}
    for directory in (path.parent, path.parent.parent):
        config_file = directory / "config.json"
        if config_file.is_file():
            try:
                config = json.loads(config_file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            training = config.get("training", {}) if isinstance(config, dict) else {}
            if not isinstance(config, dict) or "data" not in config:
                continue
            if config.get("preset"):
                out["preset"] = config["preset"]
            out["training"] = {
                "source": str(config_file),
                "experiment": config.get("name"),
                "preset": config.get("preset"),
                "data": config.get("data"),
                "steps": training.get("steps"),
                "global_batch_size": training.get("global_batch_size"),
                "optimizer": training.get("optimizer"),
                "learning_rate": training.get("learning_rate"),
                "mixed_precision": training.get("mixed_precision"),
            }
            break
    evaluations = {}
    if path.parent.is_dir():
        for pattern in ("*/metrics.json", "*/*/metrics.json"):
            for metrics_file in sorted(path.parent.glob(pattern)):
                try:
                    report = json.loads(metrics_file.read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    continue
                meta = report.get("meta", {}) if isinstance(report, dict) else {}
                source = meta.get("model")
                if source and Path(source).resolve() == path:
                    evaluations[str(metrics_file.relative_to(path.parent))] = report
    if evaluations:
        out["evaluation"] = evaluations
    return out
