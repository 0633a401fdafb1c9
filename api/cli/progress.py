"""The CLI's one progress display: tqdm bars for the projections' progress hook.

Long library calls (``projections.replay``, ``projections.audit``) take a plain
callback ``(label, done, total | None) -> None`` and know nothing of terminals;
``ProgressBars`` renders it. One bar at a time: a new label closes the previous
bar, whose line is cleared (``leave=False``). tqdm writes plain ``\\r`` updates at
most ~10 a second, so a forced display (``--progress`` into a file) stays readable.
Shown only when stderr is a terminal or with ``--progress``.
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Never, TextIO

from tqdm import tqdm

tqdm.monitor_interval = 0
"""No monitor thread: every update happens on the caller's thread."""


class ProgressBars:
    """A ``(label, done, total | None)`` callback drawing tqdm bars on ``stream``."""

    def __init__(
        self, stream: TextIO | None = None, *, enabled: bool = True, interval: float = 0.1
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.interval = interval
        self._bar: tqdm[Never] | None = None
        self._label = ""

    def __call__(self, label: str, done: int, total: int | None = None) -> None:
        if not self.enabled:
            return
        bar = self._bar
        if bar is None or label != self._label:
            self.close()
            bar = tqdm(
                desc=label,
                total=total,
                file=self.stream,
                leave=False,
                mininterval=self.interval,
                dynamic_ncols=self.stream.isatty(),
            )
            self._bar, self._label = bar, label
        if total is not None and bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    def close(self) -> None:
        """Clear the bar's line (called when a phase or the command ends)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> ProgressBars:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def progress_bars(forced: bool, stream: TextIO | None = None) -> ProgressBars:
    """Bars on stderr, drawn when it is a terminal or when ``forced`` (``--progress``)."""
    out = stream if stream is not None else sys.stderr
    return ProgressBars(out, enabled=forced or out.isatty())


__all__ = ["ProgressBars", "progress_bars"]
