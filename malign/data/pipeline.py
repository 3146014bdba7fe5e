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
two); pass a :class:`DropCounter` to read the totals from Python. A damaged shard file (cut
short by an interrupted copy) is read up to the damage: local shards are checked when the
pipeline is built and a line names each damaged one (``malign data inspect`` reports them too).

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

from malign.data import schema
from malign.data.image_header import DEFAULT_MAX_IMAGE_PIXELS, image_pixels_tf
from malign.data.preprocess import (
    DEFAULT_EVAL_RESIZE,
    check_eval_resize,
    decode_and_crop,
    decode_image,
    image_bytes_ok,
)
from malign.data.teacher_inputs import TeacherInputs, crop_pair, teacher_caption

#: Records held for shuffling; memory is about this times the mean encoded image size.
DEFAULT_SHUFFLE_BUFFER = 4096
#: Why a record is dropped, in the order of :class:`DropCounter` slots 1..4.
DROP_REASONS = ("undecodable image", "no usable caption", "no caption in languages",
                "image too large")
_OK, _BAD_IMAGE, _NO_CAPTION, _NO_LANGUAGE, _TOO_LARGE = 0, 1, 2, 3, 4
# Count slots: records read, the drop reasons, captions ignored inside kept records.
_SLOTS = ("records read",) + DROP_REASONS + ("captions ignored",)
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
        """One line: records read, dropped by reason, captions ignored."""
        c = self.as_dict()
        reasons = ", ".join(f"{c[r]} {r}" for r in DROP_REASONS)
        return (
            f"read {c['records read']} records; dropped {self.dropped}: {reasons}; "
            f"{c['captions ignored']} empty or invalid captions ignored"
        )

    def __repr__(self) -> str:
        return f"DropCounter({self.summary()})"


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
    """Walks the record headers of a local TFRecord file without reading the records.

    TFRecord files are ``[length: u64][crc: u32][data][crc: u32]`` repeated; a file cut short
    (an interrupted copy) does not end on a record boundary. This reads 12 bytes per record,
    so it is fast for local files; it does not verify the checksums.

    Args:
        path: a local TFRecord file.

    Returns:
        ``(records, problem)``: the number of complete records and None, or the number of
        complete records before the damage and a description of it.

    Example:
        >>> check_shard("records/train-00000-of-00008.tfrecord")  # doctest: +SKIP
        (512, None)
    """
    import os
    import struct

    size = os.path.getsize(path)
    records = offset = 0
    with open(path, "rb") as handle:
        while offset < size:
            header = handle.read(12)
            if len(header) < 12:
                return records, f"truncated record header at byte {offset} of {size}"
            (length,) = struct.unpack("<Q", header[:8])
            end = offset + 12 + length + 4
            if end > size:
                return records, f"truncated record at byte {offset} of {size}"
            handle.seek(end)
            offset = end
            records += 1
    return records, None


def _warn_damaged_shards(files: list[str]) -> None:
    """Prints one line per damaged local shard; their readable records are still used."""
    for path in files:
        if "://" in path:
            continue  # remote file systems: a seek per record would be slow
        records, problem = check_shard(path)
        if problem:
            print(
                f"malign.data: shard {path} is damaged ({problem}); its first {records} "
                "records are used, the rest is skipped",
                file=sys.stderr,
            )


def _read_file(path: tf.Tensor) -> tf.data.Dataset:
    # A damaged file ends at the damage instead of stopping the run (see check_shard).
    return tf.data.TFRecordDataset(path).ignore_errors()


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


def _count_and_log(counter: DropCounter | None, languages: Sequence[str] | None) -> Callable:
    """A ``Dataset.scan`` function that counts drops (incl. elements removed by
    ``ignore_errors``, seen as gaps in the enumeration) and logs them."""
    lang_note = f" {list(languages)}" if languages else ""

    def step(state, element):
        index, item = element
        counts, next_index = state[:-1], state[-1]
        failed = index - next_index  # records that raised while decoding
        reason = item["reason"]
        delta = tf.stack(
            [failed + 1, failed + tf.cast(tf.equal(reason, _BAD_IMAGE), tf.int64)]
            + [tf.cast(tf.equal(reason, r), tf.int64) for r in range(2, len(DROP_REASONS) + 1)]
            + [item["ignored"]]
        )
        new_counts = counts + delta
        drops = slice(1, len(DROP_REASONS) + 1)
        before, after = tf.reduce_sum(counts[drops]), tf.reduce_sum(new_counts[drops])

        def log() -> tf.Tensor:
            what = tf.cond(
                failed > 0,
                lambda: tf.strings.join(
                    [tf.strings.as_string(failed), " record(s) failed to decode"]
                ),
                lambda: tf.strings.join(
                    [
                        "dropped record '",
                        item["id"],
                        "' (",
                        tf.gather(tf.constant(("",) + DROP_REASONS), reason),
                        ")",
                    ]
                ),
            )
            parts = []
            for i, name in enumerate(DROP_REASONS, start=1):
                note = lang_note if name == "no caption in languages" else ""
                parts += [", " if parts else "", tf.strings.as_string(new_counts[i]),
                          f" {name}{note}"]
            message = tf.strings.join(
                [
                    "malign.data: ", what, " | so far: read ",
                    tf.strings.as_string(new_counts[0]), " records, dropped ",
                    tf.strings.as_string(after), " (", *parts, ")",
                ]
            )
            tf.print(message, output_stream=sys.stderr)
            return tf.constant(True)

        tf.cond((after > before) & _should_log(after), log, lambda: tf.constant(False))
        if counter is not None:
            counter.counts.assign_add(delta)
        new_state = tf.concat([new_counts, tf.reshape(index + 1, [1])], axis=0)
        return new_state, (item, tf.equal(reason, _OK))

    return step


def _read_files_in_order(files: list[str]) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices(files).flat_map(_graph(_read_file))


def _record_stream(
    files: list[str],
    training: bool,
    input_context: tf.distribute.InputContext | None,
    seed: int | None,
    deterministic: bool,
) -> tf.data.Dataset:
    num_pipelines = input_context.num_input_pipelines if input_context else 1
    pipeline_id = input_context.input_pipeline_id if input_context else 0
    if num_pipelines > 1 and len(files) >= num_pipelines:
        files = files[pipeline_id::num_pipelines]
    elif num_pipelines > 1:
        # Fewer files than pipelines: every pipeline reads all files in the same order and
        # keeps every num_pipelines-th record, so the pipelines see disjoint records.
        return _read_files_in_order(files).shard(num_pipelines, pipeline_id)
    if not training:
        # Evaluation reads the files one after the other: elements come in record order.
        return _read_files_in_order(files)
    file_ds = tf.data.Dataset.from_tensor_slices(files)
    file_ds = file_ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    return file_ds.interleave(
        _graph(_read_file),
        cycle_length=min(len(files), 16),
        block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic,
    )


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
        A ``tf.data.Dataset`` of dicts as described.

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
    _warn_damaged_shards(files)
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

    ds = _record_stream(files, training, input_context, shuffle_seed, deterministic)
    if training and shuffle_buffer > 1:
        ds = ds.shuffle(shuffle_buffer, seed=shuffle_seed, reshuffle_each_iteration=True)
    # Repeat after shuffling: epochs stay apart, so each image comes once per epoch (and a
    # small dataset does not fill the buffer with many copies of itself).
    if repeat:
        ds = ds.repeat()
    ds = ds.map(
        _graph(lambda r: _screen(r, lang_tensor)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic,
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
    initial = tf.zeros([len(_SLOTS) + 1], tf.int64)
    ds = ds.scan(initial, _graph(_count_and_log(counter, languages)))
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
        dropped: records dropped (undecodable image, no usable caption).
        drop_reasons: records dropped per reason, and captions ignored.
    """

    images: tf.data.Dataset
    image_ids: list[str]
    captions: list[str]
    caption_langs: list[str]
    text_to_image: np.ndarray
    dropped: int
    drop_reasons: dict[str, int]
    eval_resize: str = DEFAULT_EVAL_RESIZE

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
            f"{self.drop_reasons.get('captions ignored', 0)} empty or invalid captions ignored"
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
        An :class:`EvalSplit`.

    Example:
        >>> split = read_eval_split("records/m30k-val", 289, 32, languages=["de"])
        ... # doctest: +SKIP
        >>> split.text_to_image[:3]  # doctest: +SKIP
        array([0, 1, 2])
    """
    check_eval_resize(eval_resize)
    _check_max_pixels(max_image_pixels)
    files = list_files(file_pattern)
    _warn_damaged_shards(files)
    lang_tensor = tf.constant(list(languages), tf.string) if languages else None

    def check(index: tf.Tensor, serialized: tf.Tensor):
        item = _screen(serialized, lang_tensor)
        reason = _size_check(item["encoded"], item["reason"], max_image_pixels)
        size = tf.cond(
            tf.equal(reason, _OK),
            lambda: tf.shape(decode_image(item["encoded"]))[:2],
            lambda: tf.zeros([2], tf.int32),
        )
        return index, item["id"], item["texts"], item["langs"], item["usable"], \
            reason, item["ignored"], size

    scan = _read_files_in_order(files).enumerate()
    scan = scan.map(_graph(check), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    scan = scan.ignore_errors()
    reasons = dict.fromkeys(DROP_REASONS + ("captions ignored",), 0)
    keep: list[int] = []
    image_ids: list[str] = []
    captions: list[str] = []
    caption_langs: list[str] = []
    text_to_image: list[int] = []
    expected = 0
    for index, image_id, texts, langs, usable, reason, ignored, _ in scan.as_numpy_iterator():
        reasons["undecodable image"] += int(index) - expected  # failed to decode
        expected = int(index) + 1
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
    total = _read_files_in_order(files).reduce(tf.constant(0, tf.int64), lambda n, _: n + 1)
    reasons["undecodable image"] += int(total) - expected  # trailing decode failures

    keep_mask = np.zeros(int(total), dtype=bool)
    keep_mask[keep] = True
    keep_table = tf.constant(keep_mask)
    images = _read_files_in_order(files).enumerate()
    images = images.filter(_graph(lambda i, r: tf.gather(keep_table, i)))
    images = images.map(
        _graph(lambda i, r: decode_and_crop(
            schema.parse_record(r)[schema.IMAGE_ENCODED], image_size, training=False,
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
    )
    if verbose:
        print(f"malign.data: eval split {file_pattern}: {split.summary()}", file=sys.stderr)
    return split
