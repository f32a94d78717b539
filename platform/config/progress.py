"""Progress of the long work before a model serves: joining a split file, converting a checkpoint, reading weights.

On a terminal it is a bar redrawn in place; anywhere else (a log file, a pipe, a test) it is a few plain lines, at
the start, at each quarter and at the end, so that a log stays short::

    ember: joining qwen2.5-coder-1.5b-instruct-q4_k_m.gguf: 0/22 parts
    ember: joining qwen2.5-coder-1.5b-instruct-q4_k_m.gguf: 6/22 parts (27%)
    ...
    ember: joining qwen2.5-coder-1.5b-instruct-q4_k_m.gguf: 22/22 parts, done in 4.1s

It writes to stderr, which `ember serve`'s workers share with it: their loading shows on its terminal.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TextIO, TypeVar

T = TypeVar("T")

# A terminal's bar is redrawn at most this often.
REDRAW_S = 0.1
BAR_WIDTH = 30


class Progress:
    """``done`` of ``total`` steps of one piece of work; ``advance()`` as it goes, ``close()`` at the end."""

    def __init__(self, what: str, total: int, unit: str, *, stream: TextIO | None = None) -> None:
        self.what = what
        self.total = max(total, 0)
        self.unit = unit
        self.done = 0
        self._stream = stream if stream is not None else sys.stderr
        self._tty = self._stream.isatty()
        self._started = time.monotonic()
        self._drawn = 0.0
        self._quarter = 0
        self._closed = False
        self._draw(force=True)

    def advance(self, n: int = 1) -> None:
        self.done = min(self.done + n, self.total)
        self._draw()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        took = time.monotonic() - self._started
        line = f"{self._counts()}, done in {took:.1f}s"
        self._stream.write(f"\r{line}\x1b[K\n" if self._tty else f"{line}\n")
        self._stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is None:
            self.close()
        elif self._tty:  # the error's own message follows on a line of its own
            self._closed = True
            self._stream.write("\n")

    def _counts(self) -> str:
        return f"ember: {self.what}: {self.done}/{self.total} {self.unit}"

    def _draw(self, force: bool = False) -> None:
        if self._tty:
            now = time.monotonic()
            if not force and now - self._drawn < REDRAW_S:
                return
            self._drawn = now
            filled = BAR_WIDTH * self.done // self.total if self.total else BAR_WIDTH
            bar = "#" * filled + "." * (BAR_WIDTH - filled)
            self._stream.write(f"\r{self._counts()} [{bar}]\x1b[K")
        else:
            quarter = 4 * self.done // self.total if self.total else 4
            if not force and (quarter == self._quarter or self.done == self.total):
                return  # the last step is close()'s line
            self._quarter = quarter
            percent = f" ({100 * self.done // self.total}%)" if not force else ""
            self._stream.write(f"{self._counts()}{percent}\n")
        self._stream.flush()


def track(items: Iterable[T], what: str, total: int, unit: str, *, stream: TextIO | None = None) -> Iterator[T]:
    """``items``, one step of a ``Progress`` each; its last line once they are all taken."""
    with Progress(what, total, unit, stream=stream) as p:
        for item in items:
            yield item
            p.advance()
