"""Image–text records and the input pipeline.

- :mod:`malign.data.schema`: the TFRecord schema (image bytes, id, format, captions, langs).
- :mod:`malign.data.writer`: writing shards from caption rows, skipping and counting bad rows.
- :mod:`malign.data.multi30k`: Multi30K in its own layout (task1 and task2); `prepare_records`
  writes a root's training and evaluation records once.
- :mod:`malign.data.synthetic`: drawn scenes with en/de/fr/cs captions for the demo.
- :mod:`malign.data.image_header`: size and EXIF orientation from an image's header, in
  Python and as graph ops; the pixel limit :data:`DEFAULT_MAX_IMAGE_PIXELS`.
- :mod:`malign.data.preprocess`: decode (upright, any PNG mode to 8-bit RGB) and ALIGN crops,
  pure TF ops.
- :mod:`malign.data.pipeline`: :func:`make_dataset` and :func:`read_eval_split`; drops are
  counted by reason (:class:`DropCounter`), a source without a usable record raises
  :class:`NoUsableRecordsError`.
- :mod:`malign.data.framing` and :mod:`malign.data.record_reader`: shards read by record
  offsets, so a record whose checksum fails costs only itself (and is counted).

``malign data build|multi30k|synthetic|inspect`` are the command-line front ends.

Example:
    >>> import malign
    >>> malign.data.write_synthetic("/tmp/malign-demo/train", 64, verbose=False)
    ... # doctest: +SKIP
    >>> tok = malign.text.SentencePieceTokenizer(malign.text.test_vocab_path(), 16)
    >>> ds = malign.data.make_dataset("/tmp/malign-demo/train", tok, 64, 8)  # doctest: +SKIP
"""

from __future__ import annotations

from malign.data.image_header import DEFAULT_MAX_IMAGE_PIXELS
from malign.data.multi30k import multi30k_rows, prepare_records, write_multi30k
from malign.data.pipeline import (
    DEFAULT_SHUFFLE_BUFFER,
    DROP_REASONS,
    DropCounter,
    EvalSplit,
    NoUsableRecordsError,
    check_shard,
    list_files,
    make_dataset,
    read_eval_split,
)
from malign.data.preprocess import (
    EVAL_RESIZE_MODES,
    EVAL_RESIZE_RATIO,
    apply_orientation,
    decode_and_crop,
    decode_image,
    eval_crop,
    model_eval_resize,
    train_crop,
)
from malign.data.schema import FEATURES, ImageTextExample, parse_record, shard_pattern
from malign.data.synthetic import synthetic_examples, write_synthetic
from malign.data.writer import (
    CaptionRow,
    RecordWriter,
    WriteStats,
    read_rows,
    write_examples,
    write_rows,
)

__all__ = [
    "DEFAULT_MAX_IMAGE_PIXELS",
    "DEFAULT_SHUFFLE_BUFFER",
    "DROP_REASONS",
    "EVAL_RESIZE_MODES",
    "EVAL_RESIZE_RATIO",
    "FEATURES",
    "CaptionRow",
    "DropCounter",
    "EvalSplit",
    "ImageTextExample",
    "NoUsableRecordsError",
    "RecordWriter",
    "WriteStats",
    "apply_orientation",
    "check_shard",
    "decode_and_crop",
    "decode_image",
    "eval_crop",
    "list_files",
    "make_dataset",
    "model_eval_resize",
    "multi30k_rows",
    "parse_record",
    "prepare_records",
    "read_eval_split",
    "read_rows",
    "shard_pattern",
    "synthetic_examples",
    "train_crop",
    "write_examples",
    "write_multi30k",
    "write_rows",
    "write_synthetic",
]
