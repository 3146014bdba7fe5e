"""The tf.data input pipeline: TFRecord shards in, model-ready batches out.

:func:`make_dataset` reads shards with a parallel interleave, shards them per input pipeline
(multi-worker, TPU hosts), decodes and crops images, picks one caption per image per epoch,
tokenizes in the graph, batches with static shapes and prefetches; it yields exactly the
dicts ``AlignModel.fit`` consumes. :func:`read_eval_split` prepares an evaluation set: images
once each, and every caption with the index of its image.

Bad records never stop a run and are never silent. Before decoding, each record is screened:
an image that is not a complete JPEG/PNG file is dropped ("undecodable image"), captions that
are empty or not valid UTF-8 are ignored, and a record left without a caption is dropped
("no usable caption", or "no caption in languages" when a language filter removed them all).
An image that passes the screen but still fails to decode is dropped too, and so is an image
whose header says it has more than ``max_image_pixels`` pixels ("image too large"; default
:data:`malign.data.image_header.DEFAULT_MAX_IMAGE_PIXELS`), before anything is decoded
(``malign data build`` stores nothing over the same limit). Each drop is
counted and logged to stderr with the running totals (every drop up to 10, then at powers of
two); pass a :class:`DropCounter` to read the totals from Python.

Damaged shards cost only what is damaged (:mod:`malign.data.record_reader`): a record whose
checksum fails (a flipped bit, a bad disk block) is dropped and counted ("corrupt record
(CRC)", with its shard, index and byte offset in the log) and the next record of the same
shard is read. Where a shard's framing is lost (a record length whose checksum fails, a file
cut short by an interrupted copy) the records before it are used and the bytes after it are
counted as "shard bytes lost"; local shards are scanned when the pipeline is built and a line
names each such shard (``malign data inspect`` reports them too).

A data source without a single usable record is an error, not a wait: when a whole pass over
the records (an epoch of the pipeline) yields nothing, iterating raises
``tf.errors.InvalidArgumentError`` with the counts by reason (``malign train`` turns it into
:class:`NoUsableRecordsError`), and :func:`read_eval_split` raises
:class:`NoUsableRecordsError`.

Example:
    >>> import malign
    >>> tok = malign.text.SentencePieceTokenizer(malign.text.test_vocab_path(), 16)
    >>> ds = make_dataset("records/train-*.tfrecord", tok, image_size=64,
    ...                   global_batch_size=32)  # doctest: +SKIP
    >>> batch = next(iter(ds))  # doctest: +SKIP
    >>> batch["image"].shape, batch["token_ids"].shape  # doctest: +SKIP
    (TensorShape([32, 64, 64, 3]), TensorShape([32, 16]))
"""

from __future__ import annotations

import dataclasses
import random
import sys
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from malign.data import record_reader, schema
from malign.data.framing import scan_shard
from malign.data.image_header import DEFAULT_MAX_IMAGE_PIXELS, image_pixels_tf
from malign.data.preprocess import (
    DEFAULT_EVAL_RESIZE,
    check_eval_resize,
    decode_and_crop,
    decode_image,
    image_bytes_ok,
)
from malign.data.record_reader import RecordStream, record_stream
from malign.data.teacher_inputs import TeacherInputs, crop_pair, teacher_caption

#: Records held for shuffling; memory is about this times the mean encoded image size.
DEFAULT_SHUFFLE_BUFFER = 4096
#: Why a record is dropped, in the order of :class:`DropCounter` slots 1..5.
DROP_REASONS = ("undecodable image", "no usable caption", "no caption in languages",
                "image too large", "corrupt record (CRC)")
_OK, _BAD_IMAGE, _NO_CAPTION, _NO_LANGUAGE, _TOO_LARGE, _CRC = 0, 1, 2, 3, 4, 5
# Stream elements that are not records: an unreadable shard tail, the end of a pass.
_LOST, _PASS_END = 6, 7
# The ``damage`` code of the marker that ends a pass (the reader's codes are 0..2).
_PASS_END_DAMAGE = 3
# Count slots: records read, the drop reasons, captions ignored inside kept records, bytes of
# shards whose framing is lost.
_SLOTS = ("records read",) + DROP_REASONS + ("captions ignored", "shard bytes lost")
# The start of the error a pass without a usable record raises (see NoUsableRecordsError).
_NO_USABLE = "malign.data: no usable record"
# The dataset functions below use explicit tf.cond/tf.case: AutoGraph has nothing to convert
# (and cannot parse some of the lambdas), so it is switched off for them.
_graph = tf.autograph.experimental.do_not_convert


class DropCounter:
    """Totals of what a pipeline read and dropped, readable from Python.

    The counts live in a ``tf.Variable`` that the pipeline increments; create the counter
    outside any ``strategy.scope()`` (a variable created inside would be distributed).

    Example:
        >>> counter = DropCounter()
        >>> counter.as_dict()["records read"]
        0
        >>> counter.summary()  # doctest: +ELLIPSIS
        'read 0 records; dropped 0: 0 undecodable image, 0 no usable caption, ...'
    """

    def __init__(self) -> None:
        with tf.init_scope():
            self.counts = tf.Variable(
                tf.zeros([len(_SLOTS)], tf.int64), trainable=False, name="malign_drop_counts"
            )

    def as_dict(self) -> dict[str, int]:
        """``{"records read": n, "undecodable image": k, ..., "captions ignored": e}``."""
        return dict(zip(_SLOTS, (int(v) for v in self.counts.numpy())))

    @property
    def dropped(self) -> int:
        """Records dropped for any reason."""
        counts = self.as_dict()
        return sum(counts[r] for r in DROP_REASONS)

    def summary(self) -> str:
        """One line: records read, dropped by reason, captions ignored, shard bytes lost."""
        return _summary(self.as_dict())

    def __repr__(self) -> str:
        return f"DropCounter({self.summary()})"


def _summary(counts: dict[str, int]) -> str:
    reasons = ", ".join(f"{counts.get(r, 0)} {r}" for r in DROP_REASONS)
    dropped = sum(counts.get(r, 0) for r in DROP_REASONS)
    return (
        f"read {counts.get('records read', 0)} records; dropped {dropped}: {reasons}; "
        f"{counts.get('captions ignored', 0)} empty or invalid captions ignored; "
        f"{counts.get('shard bytes lost', 0)} shard bytes lost"
    )


class NoUsableRecordsError(ValueError):
    """A data source yielded no usable record in a whole pass; the message gives the counts.

    Args:
        message: what was read and dropped, and the remedy.
        counts: the totals (the keys of :meth:`DropCounter.as_dict`), when known.
    """

    def __init__(self, message: str, counts: dict[str, int] | None = None) -> None:
        super().__init__(message)
        self.counts = counts or {}

    @classmethod
    def from_op_error(cls, error: BaseException) -> NoUsableRecordsError | None:
        """The error a pipeline raised for a pass without a usable record, as this class
        (None for any other error).

        Args:
            error: an exception from iterating a :func:`make_dataset` pipeline.
        """
        text = str(getattr(error, "message", "") or error)
        start = text.find(_NO_USABLE)
        if start < 0:
            return None
        end = text.find("`.", start)
        return cls(text[start:] if end < 0 else text[start:end + 2])


def list_files(file_pattern: str | Sequence[str]) -> list[str]:
    """Expands glob patterns (any ``tf.io.gfile`` file system) into a sorted file list.

    Args:
        file_pattern: a pattern, a list of patterns/files, or a shard prefix written by
            malign (``out/train`` means ``out/train-*-of-*.tfrecord``).

    Raises:
        FileNotFoundError: when nothing matches.

    Example:
        >>> list_files("/nonexistent/*.tfrecord")  # doctest: +SKIP
        Traceback (most recent call last):
        FileNotFoundError: no TFRecord files match /nonexistent/*.tfrecord
    """
    patterns = [file_pattern] if isinstance(file_pattern, str) else list(file_pattern)
    files: set[str] = set()
    for pattern in patterns:
        pattern = str(pattern)
        matched = tf.io.gfile.glob(pattern)
        if not matched and not any(ch in pattern for ch in "*?["):
            matched = tf.io.gfile.glob(schema.shard_pattern(pattern))
        files.update(m for m in matched if not tf.io.gfile.isdir(m))
    if not files:
        raise FileNotFoundError(f"no TFRecord files match {file_pattern}")
    return sorted(files)


def check_shard(path: str) -> tuple[int, str | None]:
    """Walks the record headers of a local TFRecord file and checks their length checksums.

    TFRecord files are ``[length: u64][crc: u32][data][crc: u32]`` repeated. This reads 12
    bytes per record (:func:`malign.data.framing.scan_shard`), so it is fast for local files;
    the data checksums are checked when records are read (the input pipeline, ``malign data
    inspect``).

    Args:
        path: a local TFRecord file.

    Returns:
        ``(records, problem)``: the number of framed records and None, or the number of
        records before the framing is lost (a length checksum that fails, a file cut short)
        and a description of it with the unreadable byte count.

    Example:
        >>> check_shard("records/train-00000-of-00008.tfrecord")  # doctest: +SKIP
        (512, None)
    """
    framing = scan_shard(path)
    return framing.records, framing.problem


def _warn_damaged_shards(stream: RecordStream) -> None:
    """Prints one line per local shard whose framing is lost; the records before the damage
    are still used, and the pipeline counts the lost bytes when it reaches them."""
    for path, problem in zip(stream.files, stream.problems):
        if problem:
            print(
                f"malign.data: shard {path} is damaged ({problem}); the records before the "
                "damage are used, the rest is counted as shard bytes lost",
                file=sys.stderr,
            )


def _screen_element(element: dict[str, tf.Tensor], languages: tf.Tensor | None,
                    paths: tf.Tensor) -> dict[str, tf.Tensor]:
    """:func:`_screen` for a stream element: markers get their reason without parsing."""
    damage = element["damage"]
    item = _screen(element["record"], languages)
    item["reason"] = tf.case(
        [
            (tf.equal(damage, record_reader.CORRUPT), lambda: tf.constant(_CRC)),
            (tf.equal(damage, record_reader.LOST), lambda: tf.constant(_LOST)),
            (tf.equal(damage, _PASS_END_DAMAGE), lambda: tf.constant(_PASS_END)),
        ],
        default=lambda: item["reason"],
    )
    intact = tf.equal(damage, record_reader.INTACT)
    item["ignored"] = tf.where(intact, item["ignored"], tf.zeros_like(item["ignored"]))
    item["where"] = tf.cond(intact, lambda: tf.constant(""), lambda: _where(element, paths))
    item["lost"] = element["lost"]
    return item


def _where(element: dict[str, tf.Tensor], paths: tf.Tensor) -> tf.Tensor:
    """Names the place of a marker: "record 3 of shard PATH (byte 1234)" / "shard PATH"."""
    return tf.strings.join([
        tf.where(tf.equal(element["damage"], record_reader.CORRUPT),
                 tf.strings.join(["record ", tf.strings.as_string(element["index"]), " of "]),
                 ""),
        "shard ", tf.gather(paths, tf.maximum(element["file"], 0)),
        " (byte ", tf.strings.as_string(element["offset"]), ")",
    ])


def _screen(serialized: tf.Tensor, languages: tf.Tensor | None) -> dict[str, tf.Tensor]:
    """Parses a record and decides, without decoding the image, whether it is usable."""
    ex = schema.parse_record(serialized)
    texts, langs = ex[schema.CAPTION_TEXT], ex[schema.CAPTION_LANG]
    nonempty = tf.strings.length(tf.strings.strip(texts)) > 0
    utf8 = tf.equal(
        tf.strings.unicode_transcode(
            texts, "UTF-8", "UTF-8", errors="replace", replacement_char=0xFFFD
        ),
        texts,
    )
    valid = nonempty & utf8
    if languages is None:
        wanted = tf.ones_like(valid)
    else:
        wanted = tf.reduce_any(tf.equal(langs[:, None], languages[None, :]), axis=1)
    usable = valid & wanted
    image_ok = image_bytes_ok(ex[schema.IMAGE_ENCODED])
    reason = tf.case(
        [
            (tf.logical_not(image_ok), lambda: tf.constant(_BAD_IMAGE)),
            (tf.logical_not(tf.reduce_any(valid)), lambda: tf.constant(_NO_CAPTION)),
            (tf.logical_not(tf.reduce_any(usable)), lambda: tf.constant(_NO_LANGUAGE)),
        ],
        default=lambda: tf.constant(_OK),
    )
    return {
        "encoded": ex[schema.IMAGE_ENCODED],
        "id": ex[schema.IMAGE_ID],
        "texts": texts,
        "langs": langs,
        "valid": valid,
        "usable": usable,
        "reason": reason,
        # Invalid captions among the wanted languages of a record that is kept.
        "ignored": tf.where(
            tf.equal(reason, _OK),
            tf.reduce_sum(tf.cast(wanted & tf.logical_not(valid), tf.int64)),
            tf.constant(0, tf.int64),
        ),
    }


def _should_log(n: tf.Tensor) -> tf.Tensor:
    return (n <= 10) | (tf.bitwise.bitwise_and(n, n - 1) == 0)


def _counts_text(counts: tf.Tensor, lang_note: str) -> tf.Tensor:
    """The totals in the words of :meth:`DropCounter.summary`, as a graph string."""
    drops = tf.reduce_sum(counts[1:len(DROP_REASONS) + 1])
    parts: list = []
    for i, name in enumerate(DROP_REASONS, start=1):
        note = lang_note if name == "no caption in languages" else ""
        parts += [", " if parts else "", tf.strings.as_string(counts[i]), f" {name}{note}"]
    return tf.strings.join([
        "read ", tf.strings.as_string(counts[0]), " records; dropped ",
        tf.strings.as_string(drops), ": ", *parts, "; ",
        tf.strings.as_string(counts[_SLOTS.index("captions ignored")]),
        " empty or invalid captions ignored; ",
        tf.strings.as_string(counts[_SLOTS.index("shard bytes lost")]), " shard bytes lost",
    ])


def _count_and_log(counter: DropCounter | None, languages: Sequence[str] | None,
                   source: str) -> Callable:
    """A ``Dataset.scan`` function that counts drops (incl. elements removed by
    ``ignore_errors``, seen as gaps in the enumeration), logs them, and raises at the end of
    a pass that kept no record.

    State: the counts (``_SLOTS``), the next expected index, records kept in this pass.
    """
    lang_note = f" {list(languages)}" if languages else ""
    remedy = (f"; nothing to train or evaluate on. Check the shards with "
              f"`malign data inspect --strict {source}`.")

    def step(state, element):
        index, item = element
        counts, next_index, kept = state[:len(_SLOTS)], state[-2], state[-1]
        failed = index - next_index  # records that raised while decoding
        reason = item["reason"]
        is_record = tf.cast(reason < _LOST, tf.int64)
        delta = tf.stack(
            [failed + is_record, failed + tf.cast(tf.equal(reason, _BAD_IMAGE), tf.int64)]
            + [tf.cast(tf.equal(reason, r), tf.int64) for r in range(2, len(DROP_REASONS) + 1)]
            + [item["ignored"], item["lost"]]
        )
        new_counts = counts + delta
        drops = slice(1, len(DROP_REASONS) + 1)
        before, after = tf.reduce_sum(counts[drops]), tf.reduce_sum(new_counts[drops])

        def log() -> tf.Tensor:
            reason_name = tf.gather(tf.constant(("",) + DROP_REASONS), tf.minimum(reason, _CRC))
            what = tf.case(
                [
                    (failed > 0, lambda: tf.strings.join(
                        [tf.strings.as_string(failed), " record(s) failed to decode"])),
                    (tf.equal(reason, _LOST), lambda: tf.strings.join(
                        [item["where"], ": record framing lost, ",
                         tf.strings.as_string(item["lost"]), " bytes unreadable"])),
                    (tf.equal(reason, _CRC), lambda: tf.strings.join(
                        ["dropped ", item["where"], " (", reason_name, ")"])),
                ],
                default=lambda: tf.strings.join(
                    ["dropped record '", item["id"], "' (", reason_name, ")"]),
            )
            tf.print(tf.strings.join(["malign.data: ", what, " | so far: ",
                                      _counts_text(new_counts, lang_note)]),
                     output_stream=sys.stderr)
            return tf.constant(True)

        tf.cond(((after > before) & _should_log(after)) | tf.equal(reason, _LOST), log,
                lambda: tf.constant(False))
        kept = kept + tf.cast(tf.equal(reason, _OK), tf.int64)
        pass_end = tf.equal(reason, _PASS_END)
        # A pass that kept nothing would make every later pass keep nothing too: the
        # consumer would wait forever for its first batch.
        def fail() -> tf.Tensor:
            # Built only here: the message costs a dozen string ops.
            message = tf.strings.join([_NO_USABLE, f" in a whole pass over {source} (",
                                       _counts_text(new_counts, lang_note), ")", remedy])
            with tf.control_dependencies([tf.debugging.Assert(False, [message])]):
                return tf.constant(False)

        check = tf.cond(pass_end & tf.equal(kept, 0), fail, lambda: tf.constant(True))
        with tf.control_dependencies([check]):
            kept = tf.where(pass_end, tf.zeros_like(kept), kept)
        if counter is not None:
            counter.counts.assign_add(delta)
        new_state = tf.concat([new_counts, tf.reshape(index + 1, [1]), tf.reshape(kept, [1])],
                              axis=0)
        return new_state, (item, tf.equal(reason, _OK))

    return step


def _read_files_in_order(stream: RecordStream) -> tf.data.Dataset:
    files = tf.data.Dataset.range(len(stream.files))
    return files.flat_map(_graph(stream.file_dataset))


def _record_stream(
    stream: RecordStream,
    training: bool,
    input_context: tf.distribute.InputContext | None,
    seed: int | None,
    deterministic: bool,
) -> tf.data.Dataset:
    num_pipelines = input_context.num_input_pipelines if input_context else 1
    pipeline_id = input_context.input_pipeline_id if input_context else 0
    indices = list(range(len(stream.files)))
    if num_pipelines > 1 and len(indices) >= num_pipelines:
        indices = indices[pipeline_id::num_pipelines]
    elif num_pipelines > 1:
        # Fewer files than pipelines: every pipeline reads all files in the same order and
        # keeps every num_pipelines-th record, so the pipelines see disjoint records.
        return _read_files_in_order(stream).shard(num_pipelines, pipeline_id)
    if not training:
        # Evaluation reads the files one after the other: elements come in record order.
        return tf.data.Dataset.from_tensor_slices(tf.constant(indices, tf.int64)).flat_map(
            _graph(stream.file_dataset))
    file_ds = tf.data.Dataset.from_tensor_slices(tf.constant(indices, tf.int64))
    file_ds = file_ds.shuffle(len(indices), seed=seed, reshuffle_each_iteration=True)
    return file_ds.interleave(
        _graph(stream.file_dataset),
        cycle_length=min(len(indices), 16),
        block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic,
    )


def _source(file_pattern: str | Sequence[str]) -> str:
    """The pattern(s) as a user typed them, for messages."""
    if isinstance(file_pattern, str):
        return file_pattern
    return " ".join(str(p) for p in file_pattern)


def _check_max_pixels(max_image_pixels: int | None) -> None:
    if max_image_pixels is not None and (isinstance(max_image_pixels, bool)
                                         or int(max_image_pixels) < 1):
        raise ValueError(f"max_image_pixels must be a positive number of pixels (or None), "
                         f"got {max_image_pixels!r}")


def _size_check(encoded: tf.Tensor, reason: tf.Tensor, max_image_pixels: int | None) -> tf.Tensor:
    """``reason``, or "image too large" for a usable record whose header says more pixels
    than the limit. A JPEG header libjpeg cannot read fails here (counted as undecodable)."""
    if max_image_pixels is None:
        return reason
    too_large = tf.cond(
        tf.equal(reason, _OK),
        lambda: image_pixels_tf(encoded) > max_image_pixels,
        lambda: tf.constant(False),
    )
    return tf.where(too_large, tf.constant(_TOO_LARGE), reason)


def make_dataset(
    file_pattern: str | Sequence[str],
    tokenizer: Callable[[tf.Tensor], dict[str, tf.Tensor]],
    image_size: int,
    global_batch_size: int,
    training: bool = True,
    input_context: tf.distribute.InputContext | None = None,
    languages: Sequence[str] | None = None,
    seed: int | None = None,
    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
    repeat: bool | None = None,
    counter: DropCounter | None = None,
    eval_resize: str = DEFAULT_EVAL_RESIZE,
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    teacher: TeacherInputs | None = None,
) -> tf.data.Dataset:
    """Builds the input pipeline over malign TFRecord shards.

    Training (``training=True``) yields ``{"image": float32 [b, S, S, 3] in [0, 1],
    "token_ids": int32 [b, L], "padding_mask": int32 [b, L]}`` with fully static shapes
    (``drop_remainder=True``): each time an image comes round (once per epoch) one of its
    captions is drawn at random, the image gets ALIGN's random crop and flip. It repeats
    forever unless ``repeat=False``.

    Evaluation (``training=False``) yields the same keys, one element per (image, caption)
    pair, centre-cropped (resized as ``eval_resize`` says), in record order, without
    dropping the last partial batch and without repeating.

    Args:
        file_pattern: glob(s) of TFRecord shards, or a shard prefix.
        tokenizer: maps a rank-1 string tensor to ``{"token_ids", "padding_mask"}`` with a
            static sequence length, e.g. :class:`malign.text.SentencePieceTokenizer`.
        image_size: side ``S`` of the square images.
        global_batch_size: the batch over all replicas. With ``input_context`` each
            pipeline yields ``input_context.get_per_replica_batch_size(global_batch_size)``.
        training: training or evaluation behaviour (see above).
        input_context: from ``strategy.distribute_datasets_from_function``; files are split
            between input pipelines by ``input_pipeline_id`` (records, when there are fewer
            files than pipelines).
        languages: keep only captions in these languages (None keeps all).
        seed: makes shuffling, caption choice and crops reproducible (and the element
            order deterministic); None draws a fresh seed.
        shuffle_buffer: records held for shuffling in training.
        repeat: repeat forever; defaults to ``training``.
        counter: a :class:`DropCounter` to accumulate the read/drop totals in.
        eval_resize: the evaluation resize, "shorter_side" or "square" (see
            ``malign.data.preprocess.eval_crop``); pass the model's,
            ``malign.data.preprocess.model_eval_resize(model)``. Training ignores it.
        max_image_pixels: records whose image header says more pixels (width x height)
            are dropped before decoding ("image too large"); None for no limit.
        teacher: for distillation (training only), the teacher's side of each pair
            (``malign.data.teacher_inputs``): batches also get ``teacher_image``,
            ``teacher_token_ids`` and ``teacher_padding_mask``, or, with a teacher cache,
            ``teacher_image_embeddings`` and ``teacher_text_embeddings``.

    Returns:
        A ``tf.data.Dataset`` of dicts as described. Iterating it raises
        ``tf.errors.InvalidArgumentError`` (message starting "malign.data: no usable record",
        with the counts by reason; :meth:`NoUsableRecordsError.from_op_error` reads it) when
        a whole pass over the records kept none, instead of waiting forever.

    Raises:
        FileNotFoundError: no file matches ``file_pattern``.
        ValueError: a size, ``eval_resize`` or ``max_image_pixels`` is invalid, or
            ``teacher`` is given for evaluation.
        OSError: a local shard cannot be read (its framing is scanned here).

    Example:
        >>> import malign
        >>> tok = malign.text.SentencePieceTokenizer(malign.text.test_vocab_path(), 32)
        >>> ds = make_dataset("demo/train", tok, image_size=64,
        ...                   global_batch_size=64)  # doctest: +SKIP
        >>> strategy = tf.distribute.MirroredStrategy()  # doctest: +SKIP
        >>> dist = strategy.distribute_datasets_from_function(
        ...     lambda ctx: make_dataset("demo/train", tok, 64, 64, input_context=ctx)
        ... )  # doctest: +SKIP
    """
    check_eval_resize(eval_resize)
    _check_max_pixels(max_image_pixels)
    if teacher is not None and not training:
        raise ValueError("teacher inputs are for training batches (training=True)")
    files = list_files(file_pattern)
    stream = record_stream(files)
    _warn_damaged_shards(stream)
    if image_size < 1 or global_batch_size < 1:
        raise ValueError(
            f"image_size and global_batch_size must be positive, got {image_size}, "
            f"{global_batch_size}"
        )
    batch_size = (
        input_context.get_per_replica_batch_size(global_batch_size)
        if input_context
        else global_batch_size
    )
    repeat = training if repeat is None else repeat
    deterministic = seed is not None or not training
    pipeline_id = input_context.input_pipeline_id if input_context else 0
    base_seed = random.SystemRandom().randrange(1 << 62) if seed is None else int(seed)
    base_seed = (base_seed + 1_000_003 * pipeline_id) % (1 << 62)
    shuffle_seed = None if seed is None else base_seed
    lang_tensor = tf.constant(list(languages), tf.string) if languages else None

    ds = _record_stream(stream, training, input_context, shuffle_seed, deterministic)
    if training and shuffle_buffer > 1:
        ds = ds.shuffle(shuffle_buffer, seed=shuffle_seed, reshuffle_each_iteration=True)
    # Each pass ends with a marker: a pass that kept no record raises (see _count_and_log).
    ds = ds.concatenate(tf.data.Dataset.from_tensors(record_reader.marker(_PASS_END_DAMAGE)))
    # Repeat after shuffling: epochs stay apart, so each image comes once per epoch (and a
    # small dataset does not fill the buffer with many copies of itself).
    if repeat:
        ds = ds.repeat()
    paths = tf.constant(stream.files, tf.string)
    ds = ds.map(
        _graph(lambda e: _screen_element(e, lang_tensor, paths)),
        num_parallel_calls=tf.data.AUTOTUNE,
        # In order, so that no record of a pass comes after its end marker (the screen only
        # parses, so holding a fast element for a slow one costs little).
        deterministic=True,
    )
    ds = ds.enumerate()

    def decode(index: tf.Tensor, item: dict[str, tf.Tensor]):
        element_seed = tf.stack([tf.constant(base_seed, tf.int64), index])
        reason = _size_check(item["encoded"], item["reason"], max_image_pixels)

        def crop_at(size: int) -> tf.Tensor:
            return decode_and_crop(item["encoded"], size, training, element_seed,
                                   eval_resize=eval_resize)

        ok = tf.equal(reason, _OK)
        out = {
            "id": item["id"],
            "reason": reason,
            "ignored": tf.where(ok, item["ignored"], tf.zeros_like(item["ignored"])),
            "where": item["where"],
            "lost": item["lost"],
        }
        if teacher is None:
            out["image"] = tf.cond(ok, lambda: crop_at(image_size),
                                   lambda: tf.zeros([image_size, image_size, 3], tf.float32))
        else:
            out["image"], out["teacher_image"] = tf.cond(
                ok, lambda: crop_pair(crop_at, image_size, teacher.image_size),
                lambda: (tf.zeros([image_size, image_size, 3], tf.float32),
                         tf.zeros([teacher.image_size, teacher.image_size, 3], tf.float32)))
        candidates = tf.boolean_mask(item["texts"], item["usable"])
        if training:
            pick_seed = tf.random.experimental.stateless_fold_in(element_seed, 11)
            count = tf.maximum(tf.size(candidates), 1)
            k = tf.random.stateless_uniform([], pick_seed, 0, count, dtype=tf.int32)
            out["caption"] = tf.concat([candidates, [""]], axis=0)[k]
            if teacher is not None:
                langs = tf.boolean_mask(item["langs"], item["usable"])
                lang = tf.concat([langs, [""]], axis=0)[k]
                out["teacher_caption"] = teacher_caption(
                    item["texts"], item["langs"], item["valid"], out["caption"], lang,
                    teacher.pivot_language)
        else:
            out["captions"] = candidates
        return index, out

    # Ordered, so that records removed by ignore_errors show up as gaps in the enumeration.
    ds = ds.map(_graph(decode), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.ignore_errors()
    initial = tf.zeros([len(_SLOTS) + 2], tf.int64)
    ds = ds.scan(initial, _graph(_count_and_log(counter, languages, _source(file_pattern))))
    ds = ds.filter(_graph(lambda item, keep: keep))
    if training:

        def pair(item, keep):
            keys = ("image", "caption") if teacher is None else (
                "image", "caption", "id", "teacher_image", "teacher_caption")
            return {key: item[key] for key in keys}

        ds = ds.map(_graph(pair))
    else:

        def pairs(item, keep):
            n = tf.size(item["captions"])
            images = tf.repeat(item["image"][None], n, axis=0)
            return tf.data.Dataset.from_tensor_slices({"image": images,
                                                       "caption": item["captions"]})

        ds = ds.flat_map(_graph(pairs))
    ds = ds.batch(batch_size, drop_remainder=training)

    def tokenize(batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        tokens = tokenizer(batch["caption"])
        out = {
            "image": batch["image"],
            "token_ids": tf.cast(tokens["token_ids"], tf.int32),
            "padding_mask": tf.cast(tokens["padding_mask"], tf.int32),
        }
        if teacher is not None and teacher.cache is not None:
            out.update(teacher.cache.lookup(batch["id"], batch["teacher_caption"]))
        elif teacher is not None:
            teacher_tokens = teacher.tokenizer(batch["teacher_caption"])
            out["teacher_image"] = batch["teacher_image"]
            out["teacher_token_ids"] = tf.cast(teacher_tokens["token_ids"], tf.int32)
            out["teacher_padding_mask"] = tf.cast(teacher_tokens["padding_mask"], tf.int32)
        return out

    ds = ds.map(_graph(tokenize), num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    if input_context is not None:
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.OFF
        )
        ds = ds.with_options(options)
    return ds.prefetch(tf.data.AUTOTUNE)


@dataclasses.dataclass
class EvalSplit:
    """An evaluation set: each image once, each caption once with its image's index.

    Args:
        images: float32 ``[b, S, S, 3]`` batches in record order (centre crop).
        eval_resize: how ``images`` were resized before the centre crop ("shorter_side"
            or "square", see ``malign.data.preprocess.eval_crop``).
        image_ids: the id of each image, in the same order.
        captions: every usable caption.
        caption_langs: the language of each caption.
        text_to_image: ``text_to_image[j]`` is the index of the image of caption ``j``.
        dropped: records dropped (for any of :data:`DROP_REASONS`).
        drop_reasons: records dropped per reason, captions ignored, shard bytes lost.
        damage: one line per damaged place in the shards (a record whose checksum fails,
            a shard tail whose framing is lost), naming the shard and the byte offset.
    """

    images: tf.data.Dataset
    image_ids: list[str]
    captions: list[str]
    caption_langs: list[str]
    text_to_image: np.ndarray
    dropped: int
    drop_reasons: dict[str, int]
    eval_resize: str = DEFAULT_EVAL_RESIZE
    damage: list[str] = dataclasses.field(default_factory=list)

    @property
    def num_images(self) -> int:
        """Number of images kept."""
        return len(self.image_ids)

    def summary(self) -> str:
        """One line: images, captions per language, what was dropped."""
        langs: dict[str, int] = {}
        for lang in self.caption_langs:
            langs[lang] = langs.get(lang, 0) + 1
        per_lang = ", ".join(f"{k} {v}" for k, v in sorted(langs.items()))
        reasons = ", ".join(f"{self.drop_reasons.get(r, 0)} {r}" for r in DROP_REASONS)
        return (
            f"{self.num_images} images, {len(self.captions)} captions ({per_lang}); "
            f"dropped {self.dropped} records: {reasons}; "
            f"{self.drop_reasons.get('captions ignored', 0)} empty or invalid captions ignored; "
            f"{self.drop_reasons.get('shard bytes lost', 0)} shard bytes lost"
        )


def read_eval_split(
    file_pattern: str | Sequence[str],
    image_size: int,
    batch_size: int,
    languages: Sequence[str] | None = None,
    verbose: bool = True,
    eval_resize: str = DEFAULT_EVAL_RESIZE,
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
) -> EvalSplit:
    """Reads an evaluation split for embedding images once and captions once.

    Records are read in file order; a first pass decodes every image once to find the
    usable records (so the image batches and the caption list always line up), the returned
    ``images`` dataset decodes them again, centre-cropped, when iterated.

    Pass the model's ``eval_resize`` (``malign.data.preprocess.model_eval_resize(model)``):
    ``malign eval``, zero-shot, the training callback and the exported SavedModel all crop
    as the model's config says, so a converted ``kakaobrain/align-base`` sees its
    processor's pixels.

    Args:
        file_pattern: glob(s) of TFRecord shards, or a shard prefix.
        image_size: side of the square images.
        batch_size: images per batch.
        languages: keep only captions in these languages; images left without captions
            are dropped.
        verbose: print the summary line.
        eval_resize: "shorter_side" or "square" (see ``malign.data.preprocess.eval_crop``).
        max_image_pixels: records whose image has more pixels (from the header) are
            dropped without decoding ("image too large"); None for no limit.

    Returns:
        An :class:`EvalSplit`; records whose checksum fails are dropped and listed in
        ``damage``, the readable records of a damaged shard are used.

    Raises:
        NoUsableRecordsError: no record is usable (the message gives the counts by reason).
        FileNotFoundError: no file matches ``file_pattern``.

    Example:
        >>> split = read_eval_split("records/m30k-val", 289, 32, languages=["de"])
        ... # doctest: +SKIP
        >>> split.text_to_image[:3]  # doctest: +SKIP
        array([0, 1, 2])
    """
    check_eval_resize(eval_resize)
    _check_max_pixels(max_image_pixels)
    files = list_files(file_pattern)
    stream = record_stream(files)
    _warn_damaged_shards(stream)
    lang_tensor = tf.constant(list(languages), tf.string) if languages else None
    paths = tf.constant(stream.files, tf.string)

    def check(index: tf.Tensor, element: dict[str, tf.Tensor]):
        item = _screen_element(element, lang_tensor, paths)
        reason = _size_check(item["encoded"], item["reason"], max_image_pixels)
        size = tf.cond(
            tf.equal(reason, _OK),
            lambda: tf.shape(decode_image(item["encoded"]))[:2],
            lambda: tf.zeros([2], tf.int32),
        )
        return index, item["id"], item["texts"], item["langs"], item["usable"], \
            reason, item["ignored"], item["where"], item["lost"], size

    scan = _read_files_in_order(stream).enumerate()
    scan = scan.map(_graph(check), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    scan = scan.ignore_errors()
    reasons = dict.fromkeys(_SLOTS[1:], 0)
    damage: list[str] = []
    keep: list[int] = []
    image_ids: list[str] = []
    captions: list[str] = []
    caption_langs: list[str] = []
    text_to_image: list[int] = []
    expected = records = 0
    for (index, image_id, texts, langs, usable, reason, ignored, where, lost,
         _) in scan.as_numpy_iterator():
        reasons["undecodable image"] += int(index) - expected  # failed to decode
        records += int(index) - expected + (1 if reason < _LOST else 0)
        expected = int(index) + 1
        if reason == _LOST:
            reasons["shard bytes lost"] += int(lost)
            damage.append(f"{where.decode()}: record framing lost, {int(lost)} bytes "
                          "unreadable")
            continue
        if reason == _CRC:
            damage.append(f"{where.decode()}: {DROP_REASONS[_CRC - 1]}")
        if reason != _OK:
            reasons[DROP_REASONS[int(reason) - 1]] += 1
            continue
        reasons["captions ignored"] += int(ignored)
        keep.append(int(index))
        image_ids.append(image_id.decode("utf-8", "replace"))
        for text, lang, ok in zip(texts, langs, usable):
            if ok:
                captions.append(text.decode("utf-8"))
                caption_langs.append(lang.decode("utf-8", "replace"))
                text_to_image.append(len(image_ids) - 1)
    total = _read_files_in_order(stream).reduce(tf.constant(0, tf.int64), lambda n, _: n + 1)
    reasons["undecodable image"] += int(total) - expected  # trailing decode failures
    records += int(total) - expected
    if not keep:
        counts = {"records read": records, **reasons}
        raise NoUsableRecordsError(
            f"{_NO_USABLE} in {_source(file_pattern)}"
            f"{' for languages ' + ','.join(languages) if languages else ''} "
            f"({_summary(counts)}); nothing to evaluate on. Check the shards with "
            f"`malign data inspect --strict {_source(file_pattern)}`.", counts)

    keep_mask = np.zeros(int(total), dtype=bool)
    keep_mask[keep] = True
    keep_table = tf.constant(keep_mask)
    images = _read_files_in_order(stream).enumerate()
    images = images.filter(_graph(lambda i, e: tf.gather(keep_table, i)))
    images = images.map(
        _graph(lambda i, e: decode_and_crop(
            schema.parse_record(e["record"])[schema.IMAGE_ENCODED], image_size, training=False,
            eval_resize=eval_resize,
        )),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    images = images.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    split = EvalSplit(
        images=images,
        image_ids=image_ids,
        captions=captions,
        caption_langs=caption_langs,
        text_to_image=np.asarray(text_to_image, dtype=np.int64),
        dropped=sum(reasons[r] for r in DROP_REASONS),
        drop_reasons=reasons,
        eval_resize=eval_resize,
        damage=damage,
    )
    if verbose:
        print(f"malign.data: eval split {file_pattern}: {split.summary()}", file=sys.stderr)
    return split
