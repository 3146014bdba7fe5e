"""One writer per work directory: an exclusive lock on ``<workdir>/.lock``.

``malign train`` and ``malign distill`` take it before they write anything; a second run
on the same work directory is refused at once with a :class:`WorkdirBusyError` naming the
holder (pid, host, command, start time), and the first run goes on unharmed.

The lock is ``fcntl.flock`` on the file ``.lock``, which holds the holder as JSON
(``{"pid", "host", "command", "started"}``). The kernel drops a ``flock`` when its process
ends, however it ends (SIGKILL, power loss of a local disk), so a lock file left by a dead
process is free: the next run takes it over and says whose it was. On a file system
without ``flock`` (some network and FUSE mounts) the file's pid is checked instead: a lock
of a process that is gone on this host is taken over; one of another host is honoured.

Example:
    >>> import tempfile
    >>> workdir = tempfile.mkdtemp()
    >>> lock = lock_workdir(workdir, "malign train")
    >>> sorted(json.loads(lock.path.read_text()))
    ['command', 'host', 'pid', 'started']
    >>> lock.release()                    # another process now gets the lock
    >>> lock.path.exists()
    False
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

from malign.atomic_files import pid_alive

LOCK_NAME = ".lock"

# Locks this process holds, by resolved work directory: train() called inside distill(), or
# a test calling train() twice, must not refuse itself.
_HELD: dict[str, WorkdirLock] = {}


class WorkdirBusyError(RuntimeError):
    """Another live run holds the work directory's lock.

    Attributes:
        holder: the holder's record (``pid``, ``host``, ``command``, ``started``).
    """

    def __init__(self, workdir: Path, holder: dict[str, Any]):
        self.holder = holder
        super().__init__(
            f"work directory {workdir} is in use by another run: pid {holder.get('pid', '?')} "
            f"on {holder.get('host', '?')}, `{holder.get('command', '?')}`, since "
            f"{holder.get('started', '?')}. Wait for it to finish (or stop it), or use another "
            f"--workdir; if that process is gone, delete {workdir / LOCK_NAME}"
        )


class WorkdirLock:
    """A held lock on a work directory (see :func:`lock_workdir`); ``release()`` frees it.

    Attributes:
        path: the lock file.
        taken_over: the record of a dead holder whose lock this one replaced, else None.
    """

    def __init__(self, workdir: Path, fd: int, created_workdir: bool,
                 taken_over: dict[str, Any] | None):
        self.workdir = workdir
        self.path = workdir / LOCK_NAME
        self.taken_over = taken_over
        self._fd: int | None = fd
        self._created_workdir = created_workdir
        self._depth = 1

    def release(self) -> None:
        """Frees the lock and removes the lock file (and the work directory, if the lock
        created it and nothing else was written); a no-op once released."""
        self._depth -= 1
        if self._depth > 0 or self._fd is None:
            return
        _HELD.pop(str(self.workdir), None)
        with contextlib.suppress(OSError):
            # Unlinked while still held, so no other process can lock this file afterwards
            # (a waiter re-checks that the path is still the file it locked).
            self.path.unlink()
        os.close(self._fd)
        self._fd = None
        if self._created_workdir:
            with contextlib.suppress(OSError):
                self.workdir.rmdir()  # only succeeds when empty

    def __enter__(self) -> WorkdirLock:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def lock_workdir(workdir: str | os.PathLike, command: str | None = None) -> WorkdirLock:
    """Takes the work directory's lock, creating the directory if needed.

    Args:
        workdir: the work directory (local).
        command: what the holder is, for the refusal message (default: this process's
            command line).

    Returns:
        The held :class:`WorkdirLock`; call ``release()`` (or use it as a context manager)
        when the run ends. Taking a lock this process already holds nests.

    Raises:
        WorkdirBusyError: another live process holds the lock.
        OSError: the directory cannot be created or the lock file written.
    """
    workdir = Path(workdir)
    key = str(workdir.resolve())
    held = _HELD.get(key)
    if held is not None and held._fd is not None:
        held._depth += 1
        return held
    created = not workdir.exists()
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / LOCK_NAME
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command or _command_line(),
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            previous = _read_record(fd)
            if not _try_flock(fd, previous):
                raise WorkdirBusyError(workdir, previous or {})
            # The holder may have released (and unlinked) the file between our open and our
            # lock: then we hold a lock on a name nobody sees; start again.
            if not _same_file(fd, path):
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(record) + "\n").encode("utf-8"), 0)
            os.fsync(fd)
        except BaseException as error:
            with contextlib.suppress(OSError):
                os.close(fd)
            if created and not isinstance(error, WorkdirBusyError):
                with contextlib.suppress(OSError):
                    path.unlink()
                    workdir.rmdir()
            raise
        break
    taken_over = previous if previous and previous.get("pid") else None
    if taken_over is not None:
        print(f"note: took over the lock of {workdir} left by pid {taken_over.get('pid')} on "
              f"{taken_over.get('host', '?')} (`{taken_over.get('command', '?')}`, since "
              f"{taken_over.get('started', '?')}), which is no longer running",
              file=sys.stderr, flush=True)
    lock = WorkdirLock(workdir, fd, created, taken_over)
    _HELD[key] = lock
    return lock


def _command_line() -> str:
    """This process's command as typed (``python -m malign.cli train`` shows as ``malign``)."""
    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    if program in ("cli.py", "__main__.py"):
        program = "malign"
    return " ".join([program, *sys.argv[1:]])


def _try_flock(fd: int, previous: dict[str, Any] | None) -> bool:
    """Locks ``fd`` without waiting; False when another process holds it."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as error:
        if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise
    # No flock on this file system: judge by the recorded holder. A pid is only meaningful
    # on its own host, so another host's lock is honoured until someone deletes it.
    if not previous:
        return True
    if previous.get("host") != socket.gethostname():
        return False
    return not pid_alive(previous.get("pid"))


def _read_record(fd: int) -> dict[str, Any] | None:
    try:
        data = os.pread(fd, 4096, 0)
        record = json.loads(data.decode("utf-8")) if data.strip() else None
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (on_disk.st_dev, on_disk.st_ino)
