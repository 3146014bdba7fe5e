"""The record framing of TFRecord shards: where each record starts, read off the headers.

A TFRecord file is ``[length: u64][masked crc32c of length: u32][data][masked crc32c of
data: u32]`` repeated (little-endian). :func:`scan_shard` walks the 12-byte headers of a
local file (one small read per record, no data read), checks every length checksum, and
returns the byte offset and length of each record up to the first place where the framing
is lost: a length header whose checksum fails (its length cannot be trusted, so nothing
after it can be found) or a file cut short. The input pipeline reads records by these
offsets, so a record whose *data* checksum fails costs only that record
(:mod:`malign.data.record_reader`); the data checksums are verified by TensorFlow's reader
as it reads each record.

Scans are cached per file (path, size, modification time).

Example:
    >>> framing = scan_shard("records/train-00000-of-00008.tfrecord")  # doctest: +SKIP
    >>> framing.records, framing.problem, framing.lost_bytes  # doctest: +SKIP
    (512, None, 0)
    >>> masked_crc32c(b"123456789") == mask_crc(0xE3069283)
    True
"""

from __future__ import annotations

import dataclasses
import os
import struct

import numpy as np

#: TFRecord framing overhead per record: the 12-byte header and the 4-byte data checksum.
RECORD_OVERHEAD = 16
_CRC32C_POLY = 0x82F63B78  # Castagnoli, reflected
_MASK_DELTA = 0xA282EAD8


def _crc32c_table() -> np.ndarray:
    table = np.zeros(256, dtype=np.uint32)
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ (_CRC32C_POLY if crc & 1 else 0)
        table[i] = crc
    return table


_TABLE = _crc32c_table()


def crc32c_rows(rows: np.ndarray) -> np.ndarray:
    """The CRC-32C (Castagnoli) of each row of a byte matrix, vectorised over the rows.

    Args:
        rows: uint8 ``[n, k]``; each row is one message of ``k`` bytes.

    Returns:
        uint32 ``[n]`` checksums.

    Example:
        >>> hex(int(crc32c_rows(np.frombuffer(b"123456789", np.uint8)[None])[0]))
        '0xe3069283'
    """
    rows = np.asarray(rows, dtype=np.uint8)
    crc = np.full(rows.shape[0], 0xFFFFFFFF, dtype=np.uint32)
    for j in range(rows.shape[1]):
        crc = _TABLE[(crc ^ rows[:, j]) & 0xFF] ^ (crc >> np.uint32(8))
    return crc ^ np.uint32(0xFFFFFFFF)


def mask_crc(crc: int | np.ndarray) -> int | np.ndarray:
    """TFRecord's masked checksum: ``((crc >> 15) | (crc << 17)) + 0xa282ead8`` mod 2**32.

    Args:
        crc: an unmasked CRC-32C, or a uint32 array of them.

    Example:
        >>> hex(mask_crc(0))
        '0xa282ead8'
    """
    if isinstance(crc, np.ndarray):
        wide = crc.astype(np.uint64)
        return ((((wide >> 15) | (wide << 17)) + _MASK_DELTA) & 0xFFFFFFFF).astype(np.uint32)
    crc = int(crc)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """The masked CRC-32C of ``data``, as TFRecord stores it (NumPy, for short messages).

    Args:
        data: the bytes (a length field, or a small record).

    Example:
        >>> masked_crc32c(struct.pack("<Q", 0)) == mask_crc(int(crc32c_rows(
        ...     np.zeros((1, 8), np.uint8))[0]))
        True
    """
    return int(mask_crc(int(crc32c_rows(np.frombuffer(data, np.uint8)[None])[0])))


@dataclasses.dataclass(frozen=True)
class ShardFraming:
    """Where the records of one shard are.

    Args:
        path: the shard file.
        size: its size in bytes.
        offsets: int64 ``[n]``, the byte offset of each record's header, in file order.
        lengths: int64 ``[n]``, each record's data length in bytes.
        problem: None for an intact framing, else where and why it is lost (a length
            checksum that fails, a record or header cut short).
    """

    path: str
    size: int
    offsets: np.ndarray
    lengths: np.ndarray
    problem: str | None = None

    @property
    def records(self) -> int:
        """Records whose header is intact (their data checksums are not checked here)."""
        return int(self.offsets.shape[0])

    @property
    def framed_bytes(self) -> int:
        """Bytes from the start of the file to the end of the last framed record."""
        if not self.records:
            return 0
        return int(self.offsets[-1] + RECORD_OVERHEAD + self.lengths[-1])

    @property
    def lost_bytes(self) -> int:
        """Bytes after the last framed record that no reader can use (0 when intact)."""
        return self.size - self.framed_bytes


_CACHE: dict[tuple[str, int, int], ShardFraming] = {}


def scan_shard(path: str) -> ShardFraming:
    """Reads the record headers of a local TFRecord file and checks their length checksums.

    Args:
        path: a local TFRecord file (uncompressed).

    Returns:
        A :class:`ShardFraming`; cached while the file's size and modification time stay
        the same.

    Raises:
        OSError: the file cannot be read.

    Example:
        >>> scan_shard("records/train-00000-of-00001.tfrecord").problem  # doctest: +SKIP
        "length checksum fails at record 3 (byte 60123): 1234 bytes unreadable"
    """
    info = os.stat(path)
    key = (os.path.abspath(path), info.st_size, info.st_mtime_ns)
    cached = _CACHE.get(key)
    if cached is None:
        cached = _scan(path, info.st_size)
        _CACHE[key] = cached
    return cached


def _scan(path: str, size: int) -> ShardFraming:
    offsets: list[int] = []
    headers: list[bytes] = []
    problem = None
    offset = 0
    with open(path, "rb") as handle:
        while offset < size:
            header = handle.read(12)
            if len(header) < 12:
                problem = f"truncated record header at byte {offset}"
                break
            (length,) = struct.unpack("<Q", header[:8])
            end = offset + 12 + length + 4
            # Kept even when cut short: a length that runs past the end may be a bad length.
            offsets.append(offset)
            headers.append(header)
            if end > size:
                problem = f"truncated record at byte {offset}"
                break
            handle.seek(end)
            offset = end
    header_rows = np.frombuffer(b"".join(headers), np.uint8).reshape(-1, 12)
    lengths = header_rows[:, :8].copy().view("<u8").reshape(-1).astype(np.int64)
    stored = header_rows[:, 8:].copy().view("<u4").reshape(-1)
    bad = np.flatnonzero(mask_crc(crc32c_rows(header_rows[:, :8])) != stored)
    offsets_array = np.asarray(offsets, dtype=np.int64)
    if problem is not None and problem.startswith("truncated record at"):
        # The last header's record is cut short: not a record, unless its length is bad.
        last = len(offsets) - 1
        if last not in bad:
            offsets_array, lengths = offsets_array[:last], lengths[:last]
    if bad.size:
        # The first bad length hides where every later record starts: everything from it
        # on is lost, whatever the walk above made of it.
        first = int(bad[0])
        problem = (f"length checksum fails at record {first} (byte {offsets_array[first]})")
        offsets_array, lengths = offsets_array[:first], lengths[:first]
    framing = ShardFraming(path, size, offsets_array, lengths, None)
    if problem is not None:
        problem = f"{problem}: {framing.lost_bytes} bytes unreadable"
    return dataclasses.replace(framing, problem=problem)
