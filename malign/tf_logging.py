"""Quiet start-up of TensorFlow for the command line: no C++ log lines unless asked.

TensorFlow writes informational lines to the process's stderr when its libraries load
(``I0000 ... port.cc] oneDNN custom operations are on``, ``cudart_stub.cc] Could not find
cuda drivers``) and when devices are set up (``E0000 ... failed call to cuInit`` on a
machine without a GPU, which reads like a real error). Those printed before
``absl::InitializeLog()`` ignore ``TF_CPP_MIN_LOG_LEVEL``, so the command line imports
TensorFlow with the process's stderr (file descriptor 2) redirected and passes on only
the lines that are not TensorFlow's own log lines. ``malign --verbose`` (or
``MALIGN_VERBOSE=1``) shows everything.

This module imports nothing heavy: the launcher uses it before TensorFlow is loaded.

Example:
    >>> with quiet_tensorflow():  # doctest: +SKIP
    ...     import tensorflow
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator

__all__ = ["VERBOSE_ENV", "verbose", "set_verbose", "quiet_tensorflow", "is_tensorflow_log_line"]

VERBOSE_ENV = "MALIGN_VERBOSE"

# TensorFlow's (absl/glog style) C++ log lines and the continuation lines they come with.
_TF_LOG_LINE = re.compile(
    r"^(?:[IWEF]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ \S+:\d+\]"
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|To enable the following instructions: .*rebuild TensorFlow with the appropriate"
    r")"
)


def verbose() -> bool:
    """Whether the user asked for TensorFlow's and SentencePiece's own log output."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def set_verbose(on: bool) -> None:
    """Sets the verbosity for this process and the processes it starts (an env variable)."""
    if on:
        os.environ[VERBOSE_ENV] = "1"
    else:
        os.environ.pop(VERBOSE_ENV, None)


def is_tensorflow_log_line(line: str) -> bool:
    """True for a C++ log line of TensorFlow (``I0000 00:00:... file.cc:12] ...``).

    Example:
        >>> is_tensorflow_log_line("E0000 00:00:1796.1 4915 cuda_platform.cc:52] failed call to cuInit")
        True
        >>> is_tensorflow_log_line("malign train: done")
        False
    """
    return bool(_TF_LOG_LINE.match(line))


@contextlib.contextmanager
def _stderr_filtered() -> Iterator[None]:
    """Redirects fd 2 to a file for the block, then writes back the lines that are not TF logs."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode("utf-8", "replace")
            kept = [line for line in text.splitlines(keepends=True)
                    if not is_tensorflow_log_line(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


@contextlib.contextmanager
def quiet_tensorflow() -> Iterator[None]:
    """Imports done in this block show no TensorFlow log lines, unless :func:`verbose`.

    Sets ``TF_CPP_MIN_LOG_LEVEL=3`` (errors that matter surface as Python exceptions),
    filters TensorFlow's pre-initialisation lines from the process's stderr while the
    block runs, and afterwards lowers TensorFlow's, absl's and Keras' Python loggers to
    errors and hides their deprecation warnings.
    """
    if verbose():
        yield
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    with _stderr_filtered():
        yield
    for name in ("tensorflow", "absl", "keras", "h5py"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for module in ("tensorflow", "keras", "keras_hub", "tensorflow_text", "absl"):
        warnings.filterwarnings("ignore", module=module)
    if "absl.logging" in sys.modules:
        sys.modules["absl.logging"].set_verbosity("error")
