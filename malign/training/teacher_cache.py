"""The teacher's embeddings, computed once and looked up by example id during distillation.

A distillation epoch runs the (large, frozen) teacher on every batch; the cache runs it
once over the training records and stores its embeddings keyed by example:

- one image embedding per record (the teacher's centre crop at its own size and resize
  mode, as ``malign eval`` embeds it), keyed by ``image/id``;
- one text embedding per caption the teacher reads (the captions in the pivot language;
  every caption of a record that has none, or of every record when no pivot is set),
  keyed by ``image/id`` + U+001F + the caption. A caption repeated for one image (Multi30K's
  task1 and task2 share some, and one record may hold a caption twice) is embedded and
  stored once: the teacher gives the same text the same embedding.

Files, in ``<directory>/``: ``embeddings.npz`` (``image_ids``, ``image_embeddings`` float32
[N, D], ``text_keys``, ``text_embeddings`` float32 [M, D]) and ``manifest.json`` (the
fingerprint below, the counts and the teacher's temperature), both written to temporary
names and renamed, the manifest last, so a cache is either complete or absent.

A cache is refused (``StaleCacheError``, naming what changed) unless its fingerprint
matches: the SHA-256 of the teacher's config and weight values (not of its file, whose
bytes change when the same weights are saved again), the teacher tokenizer's SHA-256, the names, sizes and
SHA-256 of the record shards, the pivot language, and the teacher's image size and resize.

The training crops are random and the cached image embedding is the centre crop's: the
student's image is distilled towards the teacher's view of the whole image, the usual
trade of offline distillation (the teacher runs 0 times per epoch instead of once per
batch). The embeddings live in the input pipeline's graph as constants: fine for data sets
up to a few hundred thousand examples at 640 dims; beyond that, run the teacher online.

Example:
    >>> fp = {"teacher_sha256": "ab", "pivot_language": "en"}
    >>> try:
    ...     check_fingerprint({"fingerprint": fp}, dict(fp, pivot_language="de"), "cache")
    ... except StaleCacheError as error:
    ...     print(str(error).split(";")[0])
    cache was made with another pivot_language ('en', now 'de')
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from malign import atomic_files

__all__ = ["TeacherCache", "StaleCacheError", "fingerprint", "check_fingerprint",
           "build_teacher_cache", "KEY_SEPARATOR"]

#: Separates the image id from the caption in a text key.
KEY_SEPARATOR = "\x1f"
MANIFEST = "manifest.json"
EMBEDDINGS = "embeddings.npz"


class StaleCacheError(ValueError):
    """A teacher cache made by another teacher, tokenizer or from other data."""


def _sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_sha256(model: Any) -> str:
    """SHA-256 of a model's config and of every weight's name, shape, dtype and values."""
    digest = hashlib.sha256(json.dumps(model.get_config(), sort_keys=True,
                                       default=str).encode())
    for weight in model.weights:
        value = np.ascontiguousarray(np.asarray(weight.numpy()))
        digest.update(f"{weight.path.split('/', 1)[-1]}:{value.shape}:{value.dtype}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def fingerprint(teacher: Any, tokenizer_path: str | os.PathLike | None,
                record_files: list[str], pivot_language: str, image_size: int,
                eval_resize: str) -> dict[str, Any]:
    """What a cache depends on (see the module docstring); JSON types only.

    Args:
        teacher: the teacher model (its config and weights are hashed).
        tokenizer_path: the teacher's tokenizer file.
        record_files: the training shards.
        pivot_language: the language the teacher reads.
        image_size: the teacher's image side.
        eval_resize: the teacher's evaluation resize.
    """
    return {
        "teacher_sha256": weights_sha256(teacher),
        "tokenizer_sha256": _sha256(tokenizer_path) if tokenizer_path else "",
        "records": [{"name": os.path.basename(f), "bytes": os.path.getsize(f),
                     "sha256": _sha256(f)} for f in sorted(record_files)],
        "pivot_language": pivot_language,
        "image_size": int(image_size),
        "eval_resize": eval_resize,
    }


def check_fingerprint(manifest: dict[str, Any], want: dict[str, Any], where: str) -> None:
    """Raises ``StaleCacheError`` naming the first part of ``want`` the manifest differs in."""
    have = manifest.get("fingerprint", {})
    for key, value in want.items():
        if have.get(key) != value:
            what = {"teacher_sha256": "teacher model", "tokenizer_sha256": "teacher tokenizer",
                    "records": "data (record shards)"}.get(key, key)
            shown = "" if key in ("teacher_sha256", "tokenizer_sha256", "records") else \
                f" ({have.get(key)!r}, now {value!r})"
            raise StaleCacheError(
                f"{where} was made with another {what}{shown}; delete it or use "
                "distillation.cache_teacher=false")


class TeacherCache:
    """A complete cache, loaded: lookup tables from example keys to embedding rows.

    Args:
        directory: the cache directory.
        want: the fingerprint the run expects (``fingerprint(...)``); None skips the check.

    Raises:
        FileNotFoundError: no complete cache in ``directory``.
        StaleCacheError: the fingerprint differs.
    """

    def __init__(self, directory: str | os.PathLike, want: dict[str, Any] | None = None):
        self.directory = Path(directory)
        manifest_path = self.directory / MANIFEST
        if not manifest_path.is_file():
            raise FileNotFoundError(f"no teacher cache in {self.directory} ({MANIFEST} missing)")
        self.manifest = json.loads(manifest_path.read_text())
        if want is not None:
            check_fingerprint(self.manifest, want, f"teacher cache {self.directory}")
        with np.load(self.directory / EMBEDDINGS, allow_pickle=False) as data:
            self.image_ids = [str(x) for x in data["image_ids"]]
            self.image_embeddings = data["image_embeddings"].astype(np.float32)
            self.text_keys = [str(x) for x in data["text_keys"]]
            self.text_embeddings = data["text_embeddings"].astype(np.float32)
        self.teacher_temperature = float(self.manifest["teacher_temperature"])
        self._tables = None

    @property
    def embedding_dim(self) -> int:
        return int(self.image_embeddings.shape[1])

    def tables(self):
        """The lookup tables and embedding constants (made once, eagerly, before a pipeline uses them)."""
        if self._tables is None:
            def table(keys: list[str]) -> tf.lookup.StaticHashTable:
                init = tf.lookup.KeyValueTensorInitializer(
                    tf.constant(keys, tf.string), tf.range(len(keys), dtype=tf.int64))
                return tf.lookup.StaticHashTable(init, default_value=-1)

            self._tables = (table(self.image_ids), tf.constant(self.image_embeddings),
                            table(self.text_keys), tf.constant(self.text_embeddings))
        return self._tables

    def lookup(self, image_ids: tf.Tensor, captions: tf.Tensor) -> dict[str, tf.Tensor]:
        """The cached embeddings of a batch: ``{"teacher_image_embeddings": [b, D],
        "teacher_text_embeddings": [b, D]}`` (float32).

        Raises (when the graph runs):
            tf.errors.InvalidArgumentError: an id or (id, caption) not in the cache, which
                means the cache does not cover the data.
        """
        image_table, images, text_table, texts = self.tables()
        image_rows = image_table.lookup(image_ids)
        text_rows = text_table.lookup(tf.strings.join([image_ids, captions], KEY_SEPARATOR))
        checks = [
            tf.debugging.assert_non_negative(
                image_rows, message=f"teacher cache {self.directory}: an image id of the "
                                    "data is not in the cache (stale cache)"),
            tf.debugging.assert_non_negative(
                text_rows, message=f"teacher cache {self.directory}: a caption of the data "
                                   "is not in the cache (stale cache)"),
        ]
        with tf.control_dependencies(checks):
            return {"teacher_image_embeddings": tf.gather(images, image_rows),
                    "teacher_text_embeddings": tf.gather(texts, text_rows)}


def _teacher_reads(split: Any, pivot_language: str) -> list[int]:
    """Indices of the split's captions the teacher reads (see the module docstring)."""
    if not pivot_language:
        return list(range(len(split.captions)))
    has_pivot = set()
    for j, lang in enumerate(split.caption_langs):
        if lang == pivot_language:
            has_pivot.add(int(split.text_to_image[j]))
    return [j for j, lang in enumerate(split.caption_langs)
            if lang == pivot_language or int(split.text_to_image[j]) not in has_pivot]


def _text_key(split: Any, j: int) -> str:
    return split.image_ids[int(split.text_to_image[j])] + KEY_SEPARATOR + split.captions[j]


def _unique_keys(split: Any, reads: list[int]) -> list[int]:
    """``reads`` without the captions whose (image id, caption) key came before."""
    seen, unique = set(), []
    for j in reads:
        key = _text_key(split, j)
        if key not in seen:
            seen.add(key)
            unique.append(j)
    return unique


def _write_atomically(path: Path, write: Any) -> None:
    with atomic_files.replacing(path) as tmp, open(tmp, "wb") as f:
        write(f)


def build_teacher_cache(teacher: Any, tokenizer: Any, file_pattern: str,
                        directory: str | os.PathLike, want: dict[str, Any],
                        pivot_language: str, batch_size: int = 64,
                        log: Any = print) -> TeacherCache:
    """Embeds the records with the teacher once and writes the cache (see the module docstring).

    Args:
        teacher: the teacher ``AlignModel``.
        tokenizer: the teacher's tokenizer layer.
        file_pattern: the training records.
        directory: where the cache goes (created).
        want: the fingerprint to record.
        pivot_language: the language the teacher reads ("" = every caption).
        batch_size: images / captions per teacher call.
        log: where progress lines go.

    Returns:
        The loaded ``TeacherCache``.

    Raises:
        ValueError: two records with the same id (the cache is keyed by id).
    """
    from malign.data import read_eval_split
    from malign.data.preprocess import model_eval_resize
    from malign.evaluation.embedding import embed_images, embed_texts

    directory = Path(directory)
    split = read_eval_split(file_pattern, teacher.image_size, batch_size,
                            eval_resize=model_eval_resize(teacher), verbose=False)
    if len(set(split.image_ids)) != len(split.image_ids):
        seen, dupes = set(), []
        for image_id in split.image_ids:
            if image_id in seen:
                dupes.append(image_id)
            seen.add(image_id)
        raise ValueError(f"{file_pattern}: {len(dupes)} records share an image/id (e.g. "
                         f"{dupes[0]!r}); the teacher cache is keyed by id: give every record "
                         "its own id, or set distillation.cache_teacher=false")
    reads = _unique_keys(split, _teacher_reads(split, pivot_language))
    log(f"teacher cache: embedding {split.num_images} images and {len(reads)} captions "
        f"with the teacher ({split.summary()})")
    image_emb = embed_images(teacher, split.images, num_images=split.num_images, verbose=False)
    text_emb = embed_texts(teacher, tokenizer, [split.captions[j] for j in reads], batch_size,
                           verbose=False)
    keys = [_text_key(split, j) for j in reads]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MANIFEST).unlink(missing_ok=True)  # the old cache is invalid from here on
    _write_atomically(directory / EMBEDDINGS, lambda f: np.savez(
        f, image_ids=np.asarray(split.image_ids, dtype=str), image_embeddings=image_emb,
        text_keys=np.asarray(keys, dtype=str), text_embeddings=text_emb))
    manifest = {"fingerprint": want, "images": split.num_images, "captions": len(keys),
                "embedding_dim": int(image_emb.shape[1]),
                "teacher_temperature": float(np.asarray(teacher.temperature))}
    _write_atomically(directory / MANIFEST,
                      lambda f: f.write((json.dumps(manifest, indent=1) + "\n").encode()))
    return TeacherCache(directory, want)
