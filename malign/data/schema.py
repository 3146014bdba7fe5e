"""The one TFRecord schema of malign: an image with one or more captions.

Every record is a ``tf.train.Example`` with these features:

==================  ===============  ====================================================
key                 type             meaning
==================  ===============  ====================================================
``image/encoded``   bytes            the encoded image file (JPEG or PNG)
``image/format``    bytes            ``"jpeg"`` or ``"png"``
``image/id``        bytes            a stable id (Multi30K: the Flickr30K file stem)
``caption/text``    bytes, VarLen    UTF-8 captions, one or more
``caption/lang``    bytes, VarLen    a language code per caption (same length)
==================  ===============  ====================================================

Shards are named ``{prefix}-{i:05d}-of-{n:05d}.tfrecord``; the writer also leaves
``{prefix}.summary.json`` (counts per language, skipped rows) beside them.

Example:
    >>> ex = ImageTextExample("img1", b"\\xff\\xd8...", "jpeg", ["a dog"], ["en"])
    >>> parsed = parse_record(ex.serialize())
    >>> parsed["caption/lang"].numpy().tolist()
    [b'en']
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import tensorflow as tf

IMAGE_ENCODED = "image/encoded"
IMAGE_FORMAT = "image/format"
IMAGE_ID = "image/id"
CAPTION_TEXT = "caption/text"
CAPTION_LANG = "caption/lang"

#: The feature spec for ``tf.io.parse_single_example`` / ``parse_example``.
FEATURES = {
    IMAGE_ENCODED: tf.io.FixedLenFeature([], tf.string, default_value=""),
    IMAGE_FORMAT: tf.io.FixedLenFeature([], tf.string, default_value=""),
    IMAGE_ID: tf.io.FixedLenFeature([], tf.string, default_value=""),
    CAPTION_TEXT: tf.io.VarLenFeature(tf.string),
    CAPTION_LANG: tf.io.VarLenFeature(tf.string),
}

IMAGE_FORMATS = ("jpeg", "png")


def shard_name(prefix: str, index: int, num_shards: int) -> str:
    """The file name of shard ``index`` of ``num_shards``.

    Args:
        prefix: the output prefix (``out/multi30k-train``).
        index: 0-based shard index.
        num_shards: the number of shards.

    Example:
        >>> shard_name("out/train", 3, 8)
        'out/train-00003-of-00008.tfrecord'
    """
    return f"{prefix}-{index:05d}-of-{num_shards:05d}.tfrecord"


def shard_pattern(prefix: str) -> str:
    """The glob matching every shard written with ``prefix``.

    Args:
        prefix: the output prefix.

    Example:
        >>> shard_pattern("out/train")
        'out/train-*-of-*.tfrecord'
    """
    return f"{prefix}-*-of-*.tfrecord"


@dataclasses.dataclass
class ImageTextExample:
    """One record: an encoded image and its captions.

    Args:
        image_id: a stable id, unique within a dataset.
        image_bytes: the encoded image file.
        image_format: ``"jpeg"`` or ``"png"``.
        captions: one or more UTF-8 captions.
        langs: a language code per caption.

    Example:
        >>> ImageTextExample("x", b"...", "png", ["ein Hund"], ["de"]).captions
        ['ein Hund']
    """

    image_id: str
    image_bytes: bytes
    image_format: str
    captions: Sequence[str]
    langs: Sequence[str]

    def __post_init__(self) -> None:
        if len(self.captions) != len(self.langs):
            raise ValueError(
                f"image {self.image_id!r}: {len(self.captions)} captions but "
                f"{len(self.langs)} languages"
            )

    def to_example(self) -> tf.train.Example:
        """Returns the ``tf.train.Example`` of this record."""

        def feature(values: Sequence[bytes]) -> tf.train.Feature:
            return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))

        return tf.train.Example(
            features=tf.train.Features(
                feature={
                    IMAGE_ENCODED: feature([self.image_bytes]),
                    IMAGE_FORMAT: feature([self.image_format.encode()]),
                    IMAGE_ID: feature([self.image_id.encode("utf-8")]),
                    CAPTION_TEXT: feature([c.encode("utf-8") for c in self.captions]),
                    CAPTION_LANG: feature([x.encode("utf-8") for x in self.langs]),
                }
            )
        )

    def serialize(self) -> bytes:
        """Returns the serialized ``tf.train.Example``."""
        return self.to_example().SerializeToString()


def parse_record(serialized: tf.Tensor | bytes) -> dict[str, tf.Tensor]:
    """Parses one serialized record into dense tensors (pure TF, usable in ``tf.data``).

    Args:
        serialized: a scalar string tensor.

    Returns:
        ``image/encoded``, ``image/format``, ``image/id`` scalars and ``caption/text``,
        ``caption/lang`` rank-1 string tensors. When the two caption lists differ in length
        (a malformed record) both are cut to the shorter one.

    Example:
        >>> ex = ImageTextExample("a", b"img", "png", ["x", "y"], ["en", "de"])
        >>> parse_record(ex.serialize())["caption/text"].shape.as_list()
        [2]
    """
    parsed = tf.io.parse_single_example(serialized, FEATURES)
    texts = tf.sparse.to_dense(parsed[CAPTION_TEXT], default_value="")
    langs = tf.sparse.to_dense(parsed[CAPTION_LANG], default_value="")
    n = tf.minimum(tf.shape(texts)[0], tf.shape(langs)[0])
    parsed[CAPTION_TEXT] = texts[:n]
    parsed[CAPTION_LANG] = langs[:n]
    return parsed
