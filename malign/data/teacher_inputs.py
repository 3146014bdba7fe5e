"""What the input pipeline adds to a batch for distillation: the teacher's view of each pair.

For each training pair (an image and the caption drawn for the student) the teacher gets:

- the same crop of the same image, at the teacher's image size (the crop is cut once at the
  larger of the two sizes and resized, with antialiasing, to the smaller);
- its caption: the student's caption when that is in ``pivot_language`` (or no pivot is
  set), else the record's first caption in ``pivot_language``, the translation source in
  Multi30K task1 and in the synthetic data (each record holds one caption per language,
  translations of one another). A record without a caption in the pivot language gives the
  teacher the student's caption;
- tokenized by the teacher's own tokenizer (it may differ from the student's: align-base's
  WordPiece against the student's SentencePiece).

With a :class:`malign.data.teacher_cache.TeacherCache`, the pipeline looks the teacher's
embeddings up by image id and (image id, caption) instead, and the teacher does not run.

Example:
    >>> texts = tf.constant(["a dog", "ein Hund", "un chien"])
    >>> langs = tf.constant(["en", "de", "fr"])
    >>> valid = tf.constant([True, True, True])
    >>> teacher_caption(texts, langs, valid, tf.constant("ein Hund"), tf.constant("de"),
    ...                 "en").numpy()
    b'a dog'
"""

from __future__ import annotations

import dataclasses
from typing import Any

import tensorflow as tf

__all__ = ["TeacherInputs", "teacher_caption", "crop_pair", "TEACHER_KEYS", "CACHED_KEYS"]

#: Keys a batch gets when the teacher runs in the model.
TEACHER_KEYS = ("teacher_image", "teacher_token_ids", "teacher_padding_mask")
#: Keys a batch gets when the teacher's embeddings come from a cache.
CACHED_KEYS = ("teacher_image_embeddings", "teacher_text_embeddings")


@dataclasses.dataclass(frozen=True)
class TeacherInputs:
    """The teacher's side of a distillation batch.

    Args:
        image_size: the teacher's image side (pixels).
        tokenizer: the teacher's tokenizer layer (strings -> ``token_ids``/``padding_mask``);
            unused with a cache.
        pivot_language: the language the teacher reads ("" = the student's caption).
        cache: a ``TeacherCache`` to look the teacher's embeddings up instead of running it.
    """

    image_size: int
    tokenizer: Any = None
    pivot_language: str = "en"
    cache: Any = None

    def __post_init__(self) -> None:
        if self.image_size < 1:
            raise ValueError(f"teacher image_size must be >= 1, got {self.image_size}")
        if self.cache is None and self.tokenizer is None:
            raise ValueError("TeacherInputs needs the teacher's tokenizer or a teacher cache")


def teacher_caption(texts: tf.Tensor, langs: tf.Tensor, valid: tf.Tensor, caption: tf.Tensor,
                    lang: tf.Tensor, pivot_language: str) -> tf.Tensor:
    """The caption the teacher reads for the student's ``caption`` (see the module docstring).

    Args:
        texts: string [n], every caption of the record.
        langs: string [n], their languages.
        valid: bool [n], which captions are usable (non-empty, valid UTF-8).
        caption: scalar string, the student's caption.
        lang: scalar string, its language.
        pivot_language: the teacher's language; "" returns ``caption``.

    Returns:
        A scalar string tensor.
    """
    if not pivot_language:
        return caption
    pivots = tf.boolean_mask(texts, valid & tf.equal(langs, pivot_language))
    use_own = tf.equal(lang, pivot_language) | tf.equal(tf.size(pivots), 0)
    return tf.where(use_own, caption, tf.concat([pivots, [""]], axis=0)[0])


def crop_pair(crop_at: Any, student_size: int, teacher_size: int) -> tuple[tf.Tensor, tf.Tensor]:
    """One crop, at the student's and the teacher's sizes.

    Args:
        crop_at: a function ``size -> float32 [size, size, 3]`` (the pipeline's decode and
            crop, with its seed fixed).
        student_size: the student's image side.
        teacher_size: the teacher's image side.

    Returns:
        ``(student_image, teacher_image)``; the crop is made at the larger size and resized
        (bilinear, antialiased) to the smaller one.
    """
    big = max(student_size, teacher_size)
    image = crop_at(big)

    def at(size: int) -> tf.Tensor:
        if size == big:
            return image
        return tf.image.resize(image, [size, size], antialias=True)

    return at(student_size), at(teacher_size)
