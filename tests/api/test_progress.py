"""The CLI's progress display: tqdm bars for the projections' ``(label, done, total)`` hook."""

from __future__ import annotations

import io
import threading

from tqdm._monitor import TMonitor

from api.cli.progress import ProgressBars, progress_bars


def test_bars_are_plain_text_one_at_a_time_and_cleared() -> None:
    out = io.StringIO()
    with ProgressBars(out, interval=0) as show:
        show("replay: reading the log", 500, None)
        show("replay: balances", 5, 10)
        show("replay: balances", 10, 10)
        # tqdm's monitor thread is off (other tests' threads may come and go meanwhile)
        assert not [t for t in threading.enumerate() if isinstance(t, TMonitor)]
    text = out.getvalue()
    assert "\rreplay: reading the log: 500" in text
    assert "\rreplay: balances:  50%" in text and "10/10" in text
    assert text.endswith("\r"), "the last bar's line is cleared"
    assert "\n" not in text


def test_hidden_unless_a_terminal_or_forced() -> None:
    quiet = io.StringIO()
    with ProgressBars(quiet, enabled=False) as hidden:
        hidden("x", 1, 2)
    assert quiet.getvalue() == ""
    assert not progress_bars(False, io.StringIO()).enabled  # not a terminal
    assert progress_bars(True, io.StringIO()).enabled  # --progress
