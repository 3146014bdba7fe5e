"""Embedding images and captions with a model, in batches, with a progress bar.

The thin model-facing part of evaluation: everything after it works on numpy
arrays. Both functions run the model in inference mode (``training=False``)
through one ``tf.function`` per model (kept while the model lives, so evaluating
the same model again during training does not retrace), and return float32 arrays.

Example:
    >>> import malign, numpy as np
    >>> model = malign.AlignModel.from_preset("tiny")
    >>> images = np.random.default_rng(0).random((5, 32, 32, 3), dtype="float32")
    >>> embed_images(model, images, batch_size=2, verbose=False).shape
    (5, 32)
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

__all__ = ["embed_images", "embed_texts"]

# model -> {"image": tf.function, "text": tf.function}; entries go with their model.
_FUNCTIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _inference_function(model: Any, kind: str) -> Callable:
    try:
        functions = _FUNCTIONS.setdefault(model, {})
        # A weak reference, or the cached function would keep its model alive.
        ref = weakref.ref(model)
    except TypeError:  # not weak-referenceable or not hashable: no caching
        functions, ref = {}, lambda: model
    if kind not in functions:
        if kind == "image":
            fn = lambda x: ref().embed_image(x, training=False)  # noqa: E731
        else:
            fn = lambda ids, mask: ref().embed_text(  # noqa: E731
                {"token_ids": ids, "padding_mask": mask}, training=False)
        functions[kind] = tf.function(fn, reduce_retracing=True)
    return functions[kind]


def _progress(target: int | None, unit: str, verbose: bool):
    import keras

    return keras.utils.Progbar(target, verbose=1 if verbose else 0, unit_name=unit)


def embed_images(
    model: Any,
    images: tf.data.Dataset | np.ndarray | Iterable,
    batch_size: int = 64,
    num_images: int | None = None,
    verbose: bool = True,
) -> np.ndarray:
    """Embeds images with ``model.embed_image``, batch by batch.

    Args:
        model: an ``AlignModel`` (anything with ``embed_image`` and ``embedding_dim``).
        images: a ``tf.data.Dataset`` (or iterable) of float32 ``[b, S, S, 3]``
            batches in [0, 1] (or dicts holding them under ``"image"``), such as
            ``EvalSplit.images``; or one ``[N, S, S, 3]`` array, cut into
            ``batch_size`` batches.
        batch_size: batch size for an array input.
        num_images: total count, for the progress bar when ``images`` is a dataset.
        verbose: show a progress bar.

    Returns:
        ``[N, D]`` float32 embeddings in input order.

    Example:
        >>> import malign, tensorflow as tf
        >>> model = malign.AlignModel.from_preset("tiny")
        >>> ds = tf.data.Dataset.from_tensor_slices(tf.zeros([3, 32, 32, 3])).batch(2)
        >>> embed_images(model, ds, num_images=3, verbose=False).shape
        (3, 32)
    """
    if isinstance(images, np.ndarray):
        if images.ndim != 4:
            raise ValueError(f"images must be [N, H, W, 3], got shape {images.shape}")
        num_images = images.shape[0]
        batches: Iterable = (images[i : i + batch_size] for i in range(0, num_images, batch_size))
    else:
        batches = images
    embed = _inference_function(model, "image")
    return _run(embed, batches, num_images, "image", model, verbose, _image_batch)


def _image_batch(batch):
    if isinstance(batch, dict):
        if "image" not in batch:
            raise ValueError(f"image batches given as dicts need an 'image' key, got {sorted(batch)}")
        batch = batch["image"]
    elif isinstance(batch, (tuple, list)):
        batch = batch[0]
    return tf.convert_to_tensor(batch, tf.float32)


def embed_texts(
    model: Any,
    tokenizer: Callable[[tf.Tensor], dict],
    captions: Sequence[str],
    batch_size: int = 256,
    verbose: bool = True,
) -> np.ndarray:
    """Tokenizes and embeds captions with ``model.embed_text``, batch by batch.

    Args:
        model: an ``AlignModel``.
        tokenizer: maps a rank-1 ``tf.string`` tensor to ``{"token_ids",
            "padding_mask"}`` (e.g. ``malign.text.SentencePieceTokenizer`` with the
            model's sequence length).
        captions: the texts.
        batch_size: captions per batch.
        verbose: show a progress bar.

    Returns:
        ``[len(captions), D]`` float32 embeddings in input order.

    Example:
        >>> import malign
        >>> model = malign.AlignModel.from_preset("tiny")
        >>> tok = malign.text.SentencePieceTokenizer(malign.text.test_vocab_path(), 16)
        >>> embed_texts(model, tok, ["a dog", "ein Hund", "un chien"], verbose=False).shape
        (3, 32)
    """
    if isinstance(captions, str):
        raise ValueError("captions must be a sequence of strings, not one string")
    captions = list(captions)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    embed = _inference_function(model, "text")

    def batches():
        for i in range(0, len(captions), batch_size):
            yield tokenizer(tf.constant(captions[i : i + batch_size], tf.string))

    def call(tokens):
        return embed(tokens["token_ids"], tokens["padding_mask"])

    return _run(call, batches(), len(captions), "caption", model, verbose, lambda b: b)


def _run(fn, batches, target, unit, model, verbose, prepare) -> np.ndarray:
    bar = _progress(target, unit, verbose)
    chunks, seen = [], 0
    for batch in batches:
        out = fn(prepare(batch))
        out = np.asarray(out.numpy() if hasattr(out, "numpy") else out, np.float32)
        chunks.append(out)
        seen += out.shape[0]
        bar.update(seen)
    if target is None:
        bar.update(seen, finalize=True)
    if not chunks:
        return np.zeros((0, int(model.embedding_dim)), np.float32)
    return np.concatenate(chunks)
