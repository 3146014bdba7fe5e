"""Reading TFRecord shards in the tf.data graph so that a damaged record costs only itself.

``tf.data.TFRecordDataset`` stops a file at its first bad checksum (with ``ignore_errors``
the rest of the file is skipped without a word). :func:`record_stream` reads each local
shard by the record offsets of :func:`malign.data.framing.scan_shard` instead: the records
of a chunk of :data:`CHUNK_RECORDS` are read with one TensorFlow reader from the chunk's
first offset (the fast path: the op behind ``TFRecordDataset``, with its ``byte_offsets``
input, and the same checksum checks) and handed on as one batch, so the bookkeeping runs once
per chunk; only when a chunk ends early is the rest of that chunk read record by record, so a
record whose data checksum fails is replaced by a marker and the next one is read. On intact
shards this reads within 5% of ``TFRecordDataset`` (``benchmarks/RESULTS.md``). Where the framing
itself is lost (a length checksum that fails, a file cut short) one marker says how many
bytes at the end of the shard cannot be read. Remote shards (``gs://...``) are not scanned
(a read per record header would be slow): they are read whole, and if the reader stops
before the end of the file a marker gives the unread bytes.

Every element is a dict:

- ``record``: string scalar, the serialized record ("" for a marker),
- ``damage``: int32, :data:`INTACT`, :data:`CORRUPT` (a checksum failed; this record is
  unreadable) or :data:`LOST` (the rest of the shard is unreadable),
- ``file``: int32, the shard's index in the file list,
- ``index``: int64, the record's index in its shard (for :data:`LOST`: records framed before),
- ``offset``: int64, the byte offset of the record (for :data:`LOST`: of the unread tail),
- ``lost``: int64, the unread bytes (only for :data:`LOST`, else 0).

Example:
    >>> ds = record_stream(["a-00000-of-00001.tfrecord"]).file_dataset(0)  # doctest: +SKIP
    >>> [int(e["damage"]) for e in ds]  # doctest: +SKIP
    [0, 0, 1, 0, 0, 0, 0, 0, 0, 0]
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from malign.data.framing import RECORD_OVERHEAD, scan_shard

#: Records read by one reader on the fast path, handed on in one batch; a damaged chunk is
#: re-read record by record. A chunk's records are held in memory together.
CHUNK_RECORDS = 64
#: ``damage`` values.
INTACT, CORRUPT, LOST = 0, 1, 2
_READ_BUFFER = 256 * 1024
_graph = tf.autograph.experimental.do_not_convert

def marker(damage: int, file: int = -1, index: int = -1, offset: int = -1,
           lost: int = 0) -> dict[str, tf.Tensor]:
    """An element that carries no record, shaped like the stream's elements.

    Args:
        damage: the ``damage`` value (or another code a caller gives its own meaning).
        file, index, offset, lost: as in the module docstring.
    """
    return {
        "record": tf.constant(""),
        "damage": tf.constant(damage, tf.int32),
        "file": tf.constant(file, tf.int32),
        "index": tf.constant(index, tf.int64),
        "offset": tf.constant(offset, tf.int64),
        "lost": tf.constant(lost, tf.int64),
    }


def _reader(path: tf.Tensor, offset: tf.Tensor) -> tf.data.Dataset:
    """TensorFlow's TFRecord reader from a byte offset (the op's ``byte_offsets`` input,
    which ``tf.data.TFRecordDataset`` does not expose). Build it only inside a dataset
    function: TF 2.21 cannot serialize this op at the top level of a pipeline."""
    variant = tf.raw_ops.TFRecordDatasetV2(
        filenames=tf.reshape(path, [1]),
        compression_type="",
        buffer_size=tf.constant(_READ_BUFFER, tf.int64),
        byte_offsets=tf.reshape(tf.cast(offset, tf.int64), [1]),
    )
    return tf.data.experimental.from_variant(variant, tf.TensorSpec([], tf.string))


class RecordStream:
    """The read plan of a list of shards: rows of up to :data:`CHUNK_RECORDS` records.

    Build it with :func:`record_stream`. Row kinds: a framed chunk (``count >= 1`` records
    at known offsets), an unscanned file (``count == -1``: read to the end, compare the
    bytes read with the file size) and a lost tail (``count == 0``: a :data:`LOST` marker).

    Args:
        files: the shard paths.
        rows: per row ``(file, first index, count, start byte, end byte)``, int64 ``[R, 5]``.
        offsets: int64 ``[R, CHUNK_RECORDS]``, each framed record's offset (-1 padding).
        file_rows: int64 ``[F, 2]``, each file's row range.
        problems: per file, None or where its framing is lost (see ``scan_shard``).
    """

    def __init__(self, files: list[str], rows: np.ndarray, offsets: np.ndarray,
                 file_rows: np.ndarray, problems: list[str | None]) -> None:
        self.files = files
        self.rows = rows
        self.offsets = offsets
        self.file_rows = file_rows
        self.problems = problems

    def file_dataset(self, file: tf.Tensor | int) -> tf.data.Dataset:
        """The elements of one shard, in file order (usable inside ``flat_map``/``interleave``).

        Args:
            file: the shard's index into ``files`` (int or int64 scalar tensor).

        Returns:
            A dataset of the dicts described in the module docstring.
        """
        files = tf.constant(self.files, tf.string)
        rows = tf.constant(self.rows, tf.int64)
        offsets = tf.constant(self.offsets, tf.int64)
        file_rows = tf.constant(self.file_rows, tf.int64)
        file = tf.cast(file, tf.int64)

        def read_row(row: tf.Tensor) -> tf.data.Dataset:
            # Slices, not tf.unstack: TF 2.21's noop_elimination rewrite crashes (segfault)
            # on a take() whose count is an Unpack output.
            file_index, first, count = rows[row, 0], rows[row, 1], rows[row, 2]
            start, end = rows[row, 3], rows[row, 4]
            path = files[file_index]
            file_i32 = tf.cast(file_index, tf.int32)
            # take(0) reads nothing (a lost tail), take(-1) reads to the end (unscanned).
            # Records go through in batches of up to CHUNK_RECORDS: the bookkeeping below
            # runs once per batch, not once per record.
            fast = _reader(path, start).take(count).ignore_errors().batch(CHUNK_RECORDS)
            ended = fast.map(lambda r: (r, tf.constant(False))).concatenate(
                tf.data.Dataset.from_tensors((tf.zeros([0], tf.string), tf.constant(True))))

            def elements(record, damage, index, offset, lost):
                return {"record": record, "damage": damage, "file": tf.fill(tf.shape(damage),
                        file_i32), "index": index, "offset": offset, "lost": lost}

            def reread(done: tf.Tensor):
                """Records ``done..count-1`` of the row, one reader each (a failing one
                becomes a CORRUPT marker)."""

                def read_one(j):
                    at = offsets[row, j]
                    got = _reader(path, at).take(1).ignore_errors().map(
                        lambda r: (r, tf.constant(INTACT)))
                    record, damage = got.concatenate(tf.data.Dataset.from_tensors(
                        (tf.constant(""), tf.constant(CORRUPT)))).take(1).get_single_element()
                    return record, damage, first + j, at

                batch = tf.data.Dataset.range(done, count).map(read_one).batch(
                    CHUNK_RECORDS).get_single_element()
                record, damage, index, offset = batch
                return elements(record, damage, index, offset, tf.zeros_like(index))

            def tail(done: tf.Tensor, consumed: tf.Tensor):
                """A LOST marker when the reader stopped short of the row's end, else none."""
                unread = end - start - consumed
                n = tf.cast(unread > 0, tf.int32)
                return elements(
                    tf.fill([n], ""), tf.fill([n], LOST), tf.fill([n], first + done),
                    tf.fill([n], start + consumed), tf.fill([n], unread))

            def step(state, element):
                done, consumed = state[0], state[1]
                records, is_end = element
                framed = RECORD_OVERHEAD + tf.cast(
                    tf.strings.length(records, unit="BYTE"), tf.int64)
                n = tf.size(records, out_type=tf.int64)

                def passed():
                    return elements(
                        records, tf.fill(tf.shape(records), INTACT),
                        first + done + tf.range(n), start + consumed
                        + tf.cumsum(framed, exclusive=True), tf.zeros([n], tf.int64))

                def finish():
                    return tf.cond((count > 0) & (done < count), lambda: reread(done),
                                   lambda: tail(done, consumed))

                out = tf.cond(is_end, finish, passed)
                return tf.stack([done + n, consumed + tf.reduce_sum(framed)]), out

            return ended.scan(tf.zeros([2], tf.int64), _graph(step)).unbatch()

        row_range = tf.data.Dataset.range(file_rows[file, 0], file_rows[file, 1])
        return row_range.flat_map(_graph(read_row))


def record_stream(files: list[str]) -> RecordStream:
    """Plans the reading of ``files``: scans each local shard's framing (cached per file).

    Args:
        files: TFRecord shard paths (``tf.io.gfile`` paths; ``://`` ones are not scanned).

    Returns:
        A :class:`RecordStream`; ``stream.file_dataset(i)`` reads shard ``i``.

    Raises:
        OSError: a local shard cannot be read.

    Example:
        >>> stream = record_stream(["records/train-00000-of-00001.tfrecord"])  # doctest: +SKIP
        >>> stream.problems  # doctest: +SKIP
        [None]
    """
    rows: list[tuple[int, int, int, int, int]] = []
    offsets: list[np.ndarray] = []
    file_rows = np.zeros([len(files), 2], np.int64)
    problems: list[str | None] = []
    pad = np.full([CHUNK_RECORDS], -1, np.int64)
    for f, path in enumerate(files):
        file_rows[f, 0] = len(rows)
        if "://" in path:
            rows.append((f, 0, -1, 0, int(tf.io.gfile.stat(path).length)))
            offsets.append(pad)
            problems.append(None)
        else:
            framing = scan_shard(path)
            problems.append(framing.problem)
            for a in range(0, framing.records, CHUNK_RECORDS):
                b = min(a + CHUNK_RECORDS, framing.records)
                end = int(framing.offsets[b - 1] + RECORD_OVERHEAD + framing.lengths[b - 1])
                rows.append((f, a, b - a, int(framing.offsets[a]), end))
                row_offsets = pad.copy()
                row_offsets[: b - a] = framing.offsets[a:b]
                offsets.append(row_offsets)
            if framing.lost_bytes:
                rows.append((f, framing.records, 0, framing.framed_bytes, framing.size))
                offsets.append(pad)
        file_rows[f, 1] = len(rows)
    return RecordStream(
        list(files),
        np.asarray(rows, np.int64).reshape(-1, 5),
        np.stack(offsets) if offsets else np.zeros([0, CHUNK_RECORDS], np.int64),
        file_rows,
        problems,
    )
