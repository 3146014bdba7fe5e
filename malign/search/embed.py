"""Embedding images and captions with a ``.keras`` model or an exported SavedModel.

:func:`load_encoder` opens either kind of model behind one interface, an :class:`Encoder`:

- a ``.keras`` file saved by malign, loaded as ``malign eval`` loads it
  (:func:`malign.evaluation.commands.load_model`), with its tokenizer from ``--tokenizer`` or
  found beside it (:func:`malign.evaluation.commands.find_tokenizer`); images are decoded
  and centre-cropped by :func:`malign.data.preprocess.decode_and_crop` with the model's
  ``eval_resize``, as ``malign eval`` and the export do;
- a SavedModel version directory of ``malign export``: its ``embed_text`` and
  ``embed_image`` signatures (``malign.export.EMBED_TEXT`` / ``EMBED_IMAGE``), which take raw
  captions and encoded image files and decode inside the graph.

Both take encoded image files, so the two give the same embeddings (to float rounding) for
the same files. :func:`embed_images` screens every file first
(:func:`malign.search.sources.screen_image`), embeds them in batches, and when a batch
fails in the decoder embeds its files one by one, so that one corrupt file costs only
itself: every file left out is returned with its reason. All rows come out L2-normalised.

Example:
    >>> encoder = load_encoder("runs/demo/model.keras")  # doctest: +SKIP
    >>> encoder.embed_texts(["a dog", "ein Hund"]).shape  # doctest: +SKIP
    (2, 32)
"""

from __future__ import annotations

import abc
import dataclasses
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from malign.search.embeddings_file import normalise
from malign.search.fingerprint import file_sha256, model_fingerprint, model_format, resolve_model_path
from malign.search.sources import screen_image

__all__ = [
    "EmbeddedImages",
    "Encoder",
    "KerasEncoder",
    "SavedModelEncoder",
    "describe_decode_error",
    "embed_images",
    "embed_texts",
    "load_encoder",
]

_MESSAGE_LENGTH = 300
# Lines of a TensorFlow error message that frame the message rather than say what failed.
_FRAMING = ("Graph execution error", "Detected at node", "<stack traces", "[[", "File ",
            "Traceback", "[Op:")


def describe_decode_error(error: BaseException) -> str:
    """The gist of a decoding error: its first line of substance, without TensorFlow's framing.

    Example:
        >>> describe_decode_error(ValueError(
        ...     "Graph execution error:\\n\\nDetected at node x:\\n<stack traces unavailable>\\n"
        ...     "Invalid JPEG data, size 206\\n\\t [[{{node x}}]]"))
        'could not be decoded: Invalid JPEG data, size 206'
    """
    lines = [line.strip() for line in str(getattr(error, "message", "") or error).splitlines()]
    lines = [line for line in lines if line and not line.startswith(_FRAMING)]
    line = lines[0] if lines else type(error).__name__
    if line.startswith("assertion failed: ["):
        line = line[len("assertion failed: ["):].rstrip("]")
    return ("could not be decoded: " + line)[:_MESSAGE_LENGTH]


class Encoder(abc.ABC):
    """A model that embeds captions and encoded image files into one space.

    Attributes:
        record: what the embeddings file records about the model: ``path`` (absolute),
            ``format`` ("keras" or "saved_model"), ``fingerprint``, ``embedding_dim`` and
            ``tokenizer`` (``{"path", "sha256"}`` of a ``.keras`` model's tokenizer, None
            when there is none or it is inside the SavedModel).
    """

    record: dict[str, Any]

    @abc.abstractmethod
    def embed_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """``[len(texts), D]`` L2-normalised float32 embeddings of captions."""

    @abc.abstractmethod
    def embed_image_batch(self, images: Sequence[bytes]) -> np.ndarray:
        """``[len(images), D]`` L2-normalised embeddings of encoded image files.

        Raises:
            tensorflow.errors.InvalidArgumentError: a file of the batch fails to decode.
        """


class KerasEncoder(Encoder):
    """A ``.keras`` model saved by malign, and its tokenizer.

    Args:
        path: the ``.keras`` file.
        tokenizer: the tokenizer file; None looks beside the model as ``malign eval`` does
            (and fails only when captions are embedded and none is found).

    Example:
        >>> KerasEncoder("runs/demo/model.keras").record["format"]  # doctest: +SKIP
        'keras'
    """

    def __init__(self, path: str | os.PathLike, tokenizer: str | os.PathLike | None = None):
        from malign.data.preprocess import model_eval_resize
        from malign.evaluation.commands import find_tokenizer, load_model

        self.path = Path(path)
        self.model = load_model(str(self.path))
        self.eval_resize = model_eval_resize(self.model)
        self._tokenizer_layer = None
        self._tokenizer_error: Exception | None = None
        if tokenizer is not None:
            self.tokenizer_path: Path | None = Path(tokenizer).expanduser().resolve()
            if not self.tokenizer_path.is_file():
                raise FileNotFoundError(f"tokenizer not found: {tokenizer}")
        else:
            try:
                self.tokenizer_path = find_tokenizer(str(self.path))
            except FileNotFoundError as error:
                self.tokenizer_path, self._tokenizer_error = None, error
        self.record = {
            "path": str(self.path),
            "format": "keras",
            "fingerprint": model_fingerprint(self.path),
            "embedding_dim": int(self.model.embedding_dim),
            "tokenizer": None if self.tokenizer_path is None else {
                "path": str(self.tokenizer_path), "sha256": file_sha256(self.tokenizer_path)},
        }
        self._image_fn: Callable | None = None

    def _tokenizer(self):
        if self._tokenizer_layer is None:
            if self.tokenizer_path is None:
                raise self._tokenizer_error or FileNotFoundError("no tokenizer")
            from malign.evaluation.commands import load_tokenizer

            self._tokenizer_layer = load_tokenizer(self.tokenizer_path, self.model)
        return self._tokenizer_layer

    def embed_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        from malign.evaluation.embedding import embed_texts

        out = embed_texts(self.model, self._tokenizer(), list(texts), batch_size=batch_size,
                          verbose=False)
        return normalise(out, "text embeddings")

    def embed_image_batch(self, images: Sequence[bytes]) -> np.ndarray:
        import tensorflow as tf

        if self._image_fn is None:
            from malign.data.preprocess import decode_and_crop

            model, size, mode = self.model, int(self.model.image_size), self.eval_resize

            @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
            def embed(encoded):
                crops = tf.map_fn(
                    lambda b: decode_and_crop(b, size, training=False, eval_resize=mode),
                    encoded, fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))
                return tf.cast(model.embed_image(crops, training=False), tf.float32)

            self._image_fn = embed
        out = self._image_fn(tf.constant(list(images), tf.string)).numpy()
        return normalise(out, "image embeddings")


class SavedModelEncoder(Encoder):
    """A SavedModel version directory written by ``malign export``.

    Args:
        path: the version directory (``export/malign/1``).

    Example:
        >>> SavedModelEncoder("export/malign/1").record["format"]  # doctest: +SKIP
        'saved_model'
    """

    def __init__(self, path: str | os.PathLike):
        import tensorflow as tf
        import tensorflow_text  # noqa: F401  registers the tokenizer ops the graph uses

        from malign import export

        self.path = Path(path)
        self._export = export
        self.loaded = tf.saved_model.load(str(self.path))
        signatures = self.loaded.signatures
        self.towers = [t for t, name in (("text", export.EMBED_TEXT), ("image", export.EMBED_IMAGE))
                       if name in signatures]
        if not self.towers:
            raise ValueError(f"the SavedModel {self.path} has neither {export.EMBED_TEXT} nor "
                             f"{export.EMBED_IMAGE}: it is not an export of `malign export`")
        name = export.EMBED_TEXT if "text" in self.towers else export.EMBED_IMAGE
        dim = signatures[name].structured_outputs["embeddings"].shape[-1]
        self.record = {
            "path": str(self.path),
            "format": "saved_model",
            "fingerprint": model_fingerprint(self.path),
            "embedding_dim": int(dim),
            "tokenizer": None,
        }

    def _signature(self, tower: str):
        name = self._export.EMBED_TEXT if tower == "text" else self._export.EMBED_IMAGE
        if tower not in self.towers:
            raise ValueError(f"the SavedModel {self.path} has no {name} signature (it was "
                             f"exported with --towers {','.join(self.towers)}): it cannot embed "
                             f"{'captions' if tower == 'text' else 'images'}")
        return self.loaded.signatures[name]

    def embed_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        import tensorflow as tf

        signature = self._signature("text")
        texts = list(texts)
        chunks = [signature(**{self._export.TEXT_INPUT: tf.constant(texts[i:i + batch_size])})
                  ["embeddings"].numpy() for i in range(0, len(texts), batch_size)]
        return normalise(np.concatenate(chunks), "text embeddings")

    def embed_image_batch(self, images: Sequence[bytes]) -> np.ndarray:
        import tensorflow as tf

        signature = self._signature("image")
        out = signature(**{self._export.IMAGE_INPUT: tf.constant(list(images), tf.string)})
        return normalise(out["embeddings"].numpy(), "image embeddings")


def load_encoder(model: str | os.PathLike, tokenizer: str | os.PathLike | None = None) -> Encoder:
    """Opens a ``.keras`` model or a SavedModel export (a version or its base directory).

    Args:
        model: the ``--model`` value.
        tokenizer: a ``.keras`` model's tokenizer file (default: found beside it). A
            SavedModel holds its own; giving one is an error.

    Raises:
        FileNotFoundError: no model (or tokenizer) at that path.
        ValueError: not a model malign can embed with.

    Example:
        >>> load_encoder("export/malign").record["path"]  # doctest: +SKIP
        '/home/me/export/malign/1'
    """
    path = resolve_model_path(model)
    if model_format(path) == "saved_model":
        if tokenizer is not None:
            raise ValueError(f"--tokenizer is for .keras models: the SavedModel {path} holds its "
                             "own tokenizer")
        return SavedModelEncoder(path)
    return KerasEncoder(path, tokenizer)


@dataclasses.dataclass
class EmbeddedImages:
    """The result of :func:`embed_images`.

    Args:
        ids: the ids of the embedded images, in input order.
        embeddings: float32 ``[len(ids), D]``, L2-normalised.
        skipped: ``(id, reason)`` of every image left out, in input order.
        seconds: wall time.
    """

    ids: list[str]
    embeddings: np.ndarray
    skipped: list[tuple[str, str]]
    seconds: float


def _progress(target: int | None, verbose: bool):
    import keras

    return keras.utils.Progbar(target, verbose=1 if verbose else 0, unit_name="image")


def embed_images(
    encoder: Encoder,
    items: Iterable[tuple[str, bytes | Callable[[], bytes]]],
    batch_size: int = 64,
    max_image_pixels: int | None = None,
    total: int | None = None,
    verbose: bool = True,
) -> EmbeddedImages:
    """Embeds encoded image files in batches; files that cannot be embedded are skipped and named.

    Args:
        encoder: from :func:`load_encoder`.
        items: ``(id, bytes)`` pairs, or ``(id, function returning the bytes)`` so that a
            folder is read one batch at a time.
        batch_size: images per model call.
        max_image_pixels: images with more pixels (width x height, from the header) are
            skipped; None for no limit.
        total: the number of items, for the progress bar.
        verbose: show a progress bar (stderr).

    Returns:
        :class:`EmbeddedImages`.

    Example:
        >>> embed_images(load_encoder("runs/demo/model.keras"), [("a.png", b"...")])  # doctest: +SKIP
    """
    import tensorflow as tf

    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    started = time.time()
    ids: list[str] = []
    chunks: list[np.ndarray] = []
    skipped: list[tuple[int, str, str]] = []  # (position, id, reason)
    bar = _progress(total, verbose)
    seen = 0
    pending: list[tuple[int, str, bytes]] = []

    def flush() -> None:
        if not pending:
            return
        try:
            chunks.append(encoder.embed_image_batch([data for _, _, data in pending]))
            ids.extend(image_id for _, image_id, _ in pending)
        except (tf.errors.InvalidArgumentError, tf.errors.UnknownError):
            for position, image_id, data in pending:  # find the file(s) that failed
                try:
                    chunks.append(encoder.embed_image_batch([data]))
                    ids.append(image_id)
                except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as error:
                    skipped.append((position, image_id, describe_decode_error(error)))
        pending.clear()

    for position, (image_id, data) in enumerate(items):
        seen += 1
        try:
            raw = data() if callable(data) else data
        except OSError as error:
            skipped.append((position, image_id, f"unreadable: {error.strerror or error}"))
            continue
        reason = screen_image(raw, max_image_pixels)
        if reason is not None:
            skipped.append((position, image_id, reason))
        else:
            pending.append((position, image_id, raw))
        if len(pending) >= batch_size:
            flush()
            bar.update(seen)
    flush()
    bar.update(seen, finalize=True)
    dim = int(encoder.record["embedding_dim"])
    embeddings = np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32)
    skipped.sort()
    return EmbeddedImages(ids, embeddings, [(i, r) for _, i, r in skipped], time.time() - started)


def embed_texts(encoder: Encoder, texts: Sequence[str], batch_size: int = 256,
                verbose: bool = True) -> np.ndarray:
    """Embeds captions in batches of ``batch_size``, with a progress line per 10 batches.

    Args:
        encoder: from :func:`load_encoder`.
        texts: the captions.
        batch_size: captions per model call.
        verbose: print progress to stderr.

    Returns:
        float32 ``[len(texts), D]``, L2-normalised.

    Example:
        >>> embed_texts(load_encoder("runs/demo/model.keras"), ["a dog"]).shape  # doctest: +SKIP
        (1, 32)
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    texts = list(texts)
    step = batch_size * 10
    chunks = []
    for start in range(0, len(texts), step):
        chunks.append(encoder.embed_texts(texts[start:start + step], batch_size))
        if verbose and len(texts) > step:
            print(f"malign embed: {min(start + step, len(texts))}/{len(texts)} captions",
                  file=sys.stderr)
    return np.concatenate(chunks)
