"""Progress on stderr: a status line redrawn in place on a terminal, log lines above it."""

from __future__ import annotations

import shutil
import sys
import time
from typing import TextIO

CLEAR_LINE = "\r\x1b[K"


class StatusLine:
    """One line of status at the bottom of a terminal. `update` redraws it (at most every
    `interval` seconds unless forced); `log` prints a line above it. The status line shows
    only on a terminal (`enabled` by default when `stream` is a TTY): piped or redirected
    output gets the log lines alone, with no carriage returns in it."""

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        enabled: bool | None = None,
        quiet: bool = False,
        interval: float = 0.1,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.quiet = quiet  # no log lines either
        isatty = getattr(self.stream, "isatty", lambda: False)()
        self.enabled = (isatty if enabled is None else enabled) and not quiet
        self.interval = interval
        self._text = ""  # what the status line shows now
        self._drawn_at = 0.0

    def update(self, text: str, *, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._drawn_at < self.interval:
            return
        self._drawn_at = now
        width = shutil.get_terminal_size().columns - 1
        self._text = text[:width]
        self.stream.write(CLEAR_LINE + self._text)
        self.stream.flush()

    def log(self, line: str, *, always: bool = False) -> None:
        """A line above the status line (when quiet, only an `always` one: an error)."""
        if self.quiet and not always:
            return
        if self._text:
            self.stream.write(CLEAR_LINE)
        self.stream.write(line + "\n")
        if self._text:
            self.stream.write(self._text)
        self.stream.flush()

    def clear(self) -> None:
        if self._text:
            self.stream.write(CLEAR_LINE)
            self.stream.flush()
            self._text = ""


_STARTED = time.monotonic()


def note(message: str, stream: TextIO | None = None) -> None:
    """A progress line on stderr, stamped with the seconds since the process started: stdout
    keeps only results (the benchmarks print their JSON as its last line)."""
    elapsed = time.monotonic() - _STARTED
    print(f"[{elapsed:7.1f} s] {message}", file=stream or sys.stderr, flush=True)


def bar(done: int, total: int, width: int = 24) -> str:
    """`[#########...............] 12/32 sentences  38%`: a share as a bar, for a status line."""
    share = min(max(done / total, 0.0), 1.0) if total > 0 else 0.0
    filled = int(share * width)
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} sentences {share:4.0%}"
