"""Describes the machine a benchmark ran on, for benchmarks/RESULTS.md."""

from __future__ import annotations

import os
import platform


def describe_machine() -> str:
    """One line: CPU model, cores, memory, Python/TensorFlow versions."""
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem_gb = float("nan")
    import tensorflow as tf

    return (f"{cpu}, {os.cpu_count()} cores, {mem_gb:.0f} GiB, Python {platform.python_version()}, "
            f"TensorFlow {tf.__version__}")


def append_result(section: str, body: str, path: str | None = None) -> None:
    """Appends a Markdown section to benchmarks/RESULTS.md."""
    path = path or os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")
    header = "" if os.path.exists(path) else "# Benchmark results\n\n"
    with open(path, "a") as f:
        f.write(f"{header}## {section}\n\n{body.rstrip()}\n\n")
