"""A small progress reporter for long, countable steps (writing shards, vocabulary passes).

It prints one line at most every ``interval`` seconds to stderr, so it stays readable in
log files and CI output (no carriage-return tricks), and a final line when it closes.

Example:
    >>> from malign.data.progress import Progress
    >>> with Progress("writing", total=3, unit="images", interval=0) as progress:
    ...     for _ in range(3):
    ...         progress.update()
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Rate-limited progress lines: ``label: done/total unit (pct), rate, eta``.

    Args:
        label: what is being done, printed first on every line.
        total: the number of units expected, or None when unknown.
        unit: the name of one unit ("images", "lines").
        interval: seconds between lines; 0 prints on every update.
        stream: where to print; stderr by default.
        enabled: False makes every method a no-op (for quiet callers).

    Example:
        >>> p = Progress("counting", total=None, unit="lines", enabled=False)
        >>> p.update(10); p.done
        10
    """

    def __init__(
        self,
        label: str,
        total: int | None = None,
        unit: str = "items",
        interval: float = 2.0,
        stream: TextIO | None = None,
        enabled: bool = True,
    ) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.interval = interval
        self.stream = stream
        self.enabled = enabled
        self.done = 0
        self._start = time.monotonic()
        self._last = self._start
        self._closed = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        """Adds ``n`` finished units and prints a line if the interval has passed."""
        self.done += n
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._print(now)

    def close(self) -> None:
        """Prints the final line (once)."""
        if self._closed:
            return
        self._closed = True
        if self.enabled:
            self._print(time.monotonic(), final=True)

    def _print(self, now: float, final: bool = False) -> None:
        elapsed = max(now - self._start, 1e-9)
        rate = self.done / elapsed
        parts = [f"{self.label}: {self.done}"]
        if self.total:
            parts[0] += f"/{self.total} {self.unit} ({100.0 * self.done / self.total:.0f}%)"
        else:
            parts[0] += f" {self.unit}"
        parts.append(f"{rate:.0f} {self.unit}/s")
        if final:
            parts.append(f"done in {elapsed:.1f}s")
        elif self.total and rate > 0:
            parts.append(f"eta {max(self.total - self.done, 0) / rate:.0f}s")
        print(", ".join(parts), file=self.stream or sys.stderr, flush=True)
