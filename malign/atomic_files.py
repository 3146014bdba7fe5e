"""Files written beside their final name and renamed into place; write failures named.

Every file malign writes (shards, summaries, reports, embeddings, exports, checkpoints,
tokenizer copies) is first written under a hidden temporary name in the same directory
(``.tmp-<pid>-<name>``), synced, and renamed over its final name in one ``os.replace``.
A reader therefore sees the old file or the new one, never a part; a killed writer leaves
at most a ``.tmp-*`` file, never a truncated file under a final name.

When the disk is full, read-only or not writable, the operating system's error (``OSError``
with ``ENOSPC``, ``EROFS``, ``EACCES``, ``EFBIG``..., or the same failure reported by
TensorFlow's file system layer or h5py as a message) becomes one :class:`WriteFailedError`
that names the final path, says what to do, and says that the previous file is unchanged;
the temporary file is removed. ``malign``'s command line prints it as one line and exits 2.

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "metrics.json"
    >>> _ = write_text(path, "{}\\n")
    >>> with replacing(path) as tmp:
    ...     _ = tmp.write_text('{"a": 1}\\n')
    >>> path.read_text(), sorted(p.name for p in path.parent.iterdir())
    ('{"a": 1}\\n', ['metrics.json'])
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

TEMP_PREFIX = ".tmp-"

# Errors that mean "this location cannot take the bytes", whatever was being written.
WRITE_ERRNOS = frozenset((errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES,
                          errno.EPERM, errno.EIO))

_REMEDIES = {
    errno.ENOSPC: "free some space on that disk (or write elsewhere) and run the command again",
    errno.EDQUOT: "free some space within your quota (or write elsewhere) and run the command "
                  "again",
    errno.EFBIG: "the file exceeds the file size limit (ulimit -f) or the file system's: raise "
                 "the limit or write elsewhere",
    errno.EROFS: "the file system is read-only: write to a writable location",
    errno.EACCES: "you may not write there: fix the directory's permissions or write elsewhere",
    errno.EPERM: "you may not write there: fix the directory's permissions or write elsewhere",
}


class WriteFailedError(OSError):
    """A file could not be written (full or read-only disk, no permission); nothing changed.

    Attributes:
        path: the final path that was being written.
        errno: the operating system's error number when known (e.g. ``errno.ENOSPC``), else
            None.
    """

    def __init__(self, path: str | os.PathLike, cause: BaseException):
        code = _errno_of(cause)
        reason = os.strerror(code) if code is not None else _first_line(cause)
        remedy = _REMEDIES.get(code, "check the disk and the directory's permissions")
        self.path = os.fspath(path)
        self.message = (f"could not write {self.path}: {reason}; {remedy}. Nothing was written "
                        "under that name (a previous version of it, if any, is unchanged)")
        super().__init__(code, self.message, self.path)

    def __str__(self) -> str:
        return self.message


def is_write_failure(error: BaseException) -> bool:
    """Whether ``error`` says that a location cannot take bytes (full, read-only, no permission).

    Args:
        error: any exception (``OSError``, ``tf.errors.OpError``, h5py's ``OSError``...).

    Example:
        >>> is_write_failure(OSError(errno.ENOSPC, "No space left on device"))
        True
        >>> is_write_failure(ValueError("bad shape"))
        False
    """
    if isinstance(error, WriteFailedError):
        return False
    return _errno_of(error) is not None


def _errno_of(error: BaseException) -> int | None:
    code = getattr(error, "errno", None)
    if isinstance(code, int) and code in WRITE_ERRNOS:
        return code
    if not isinstance(error, OSError) and not type(error).__module__.startswith("tensorflow"):
        return None
    # The same failures when a library reports them only as text (TensorFlow's file system
    # layer: "<path>; No space left on device"; h5py: "errno = 28, error message = ...").
    text = str(error).lower()
    for code in sorted(WRITE_ERRNOS):
        if os.strerror(code).lower() in text:
            return code
    return None


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def temp_name(path: str | os.PathLike) -> str:
    """The hidden temporary name beside ``path`` that this process writes before renaming.

    Works on URLs too (``gs://bucket/dir/x`` -> ``gs://bucket/dir/.tmp-<pid>-x``).

    Example:
        >>> os.path.basename(temp_name("/runs/a/metrics.json")).startswith(".tmp-")
        True
    """
    directory, name = os.path.split(os.fspath(path))
    return os.path.join(directory, f"{TEMP_PREFIX}{os.getpid()}-{name}")


def temp_path(path: str | os.PathLike) -> Path:
    """:func:`temp_name` of a local path, as a ``Path``."""
    return Path(temp_name(path))


@contextlib.contextmanager
def naming_write_failures(path: str | os.PathLike) -> Iterator[None]:
    """Turns a write failure inside the block into a :class:`WriteFailedError` naming ``path``.

    For writers that already stage and rename on their own (the SavedModel export).

    Args:
        path: what the block writes, as the user knows it.

    Raises:
        WriteFailedError: the block failed with a full/read-only/permission error.
    """
    try:
        yield
    except BaseException as error:
        if is_write_failure(error):
            raise WriteFailedError(path, error) from error
        raise


@contextlib.contextmanager
def replacing(path: str | os.PathLike, *, sync: bool = True) -> Iterator[Path]:
    """Yields a temporary path beside ``path``; renames it over ``path`` when the block succeeds.

    The block writes a file (or a directory) at the yielded path. On success it is synced
    and replaces ``path`` in one rename (a directory that exists is first moved aside and
    removed after). On any error the temporary path is removed and ``path`` is left as it
    was; a write failure is raised as :class:`WriteFailedError` naming ``path``.

    Args:
        path: the final local path; its parent directory is created if missing.
        sync: fsync the file(s) and the directory (the rename survives a power loss).

    Raises:
        WriteFailedError: the disk is full or read-only, or the directory not writable.

    Example:
        >>> import tempfile, pathlib, numpy as np
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "ids.npy"
        >>> with replacing(path) as tmp:
        ...     np.save(tmp, np.arange(3))  # np.save appends .npy to names without it
        >>> np.load(path).tolist()
        [0, 1, 2]
    """
    path = Path(path)
    tmp = temp_path(path)
    with naming_write_failures(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove(tmp)
        try:
            yield tmp
            if sync:
                _sync_tree(tmp)
            _rename_into_place(tmp, path)
            if sync:
                _sync_directory(path.parent)
        except BaseException:
            _remove(tmp)
            raise


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Writes ``data`` to ``path`` atomically (see :func:`replacing`); returns ``path``."""
    with replacing(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Writes ``text`` to ``path`` atomically (see :func:`replacing`); returns ``path``."""
    return write_bytes(path, text.encode(encoding))


def copy_file(source: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Copies ``source`` to ``path`` atomically (see :func:`replacing`); returns ``path``."""
    with replacing(path) as tmp:
        shutil.copyfile(source, tmp)
    return Path(path)


def remove_dead_temps(directory: str | os.PathLike, pattern: str = "*") -> list[Path]:
    """Removes temporary files (``.tmp-<pid>-<pattern>``) of writers that no longer run.

    A writer killed between writing and renaming leaves its temporary file; the next
    writer of the same names calls this. Files of live processes (and names that do not
    carry a pid) are kept.

    Args:
        directory: where to look.
        pattern: a glob for the final names (e.g. ``"train-*"``).

    Returns:
        The removed paths.
    """
    removed = []
    for path in sorted(Path(directory).glob(f"{TEMP_PREFIX}*-{pattern}")):
        pid = path.name[len(TEMP_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or pid_alive(int(pid)):
            continue
        _remove(path)
        removed.append(path)
    return removed


def pid_alive(pid: object) -> bool:
    """Whether a process with this id runs on this host (False for anything not a pid)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _rename_into_place(tmp: Path, path: Path) -> None:
    if tmp.is_dir() and not tmp.is_symlink() and path.is_dir():
        aside = path.with_name(f"{TEMP_PREFIX}{os.getpid()}-old-{path.name}")
        _remove(aside)
        os.replace(path, aside)
        os.replace(tmp, path)
        _remove(aside)
    else:
        os.replace(tmp, path)


def _sync_tree(path: Path) -> None:
    if path.is_dir():
        for root, _, files in os.walk(path):
            for name in files:
                _sync_file(Path(root) / name)
            _sync_directory(Path(root))
    elif path.exists():
        _sync_file(path)


def _sync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_directory(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync a directory; the rename itself is still atomic
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
