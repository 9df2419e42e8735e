"""Progress lines from the stats part tasks return: counts, rates, drop reasons, ETA; lines
at an interval while a phase runs, numbers that only grow and end at the phase's totals."""
import io
import logging
import time

import pytest

from pipeline.core.progress import PhaseProgress, Tally, format_duration, format_line, parse_line


def parse(line: str) -> dict:
    found = parse_line(line)
    assert found, line
    return found


def stats(rows_in, rows_out, dropped=None, seconds=1.0, deferred=0):
    return {"rows_in": rows_in, "rows_out": rows_out, "dropped": dropped or {}, "seconds": seconds,
            "deferred": deferred}


def test_tally_counts_reached_rows_and_ranks_drop_reasons():
    tally = Tally()
    assert tally.add(stats(10, 6, {"timeout": 3, "not_found": 1})) == 10
    assert tally.add(stats(8, 2, {"not_found": 3}, deferred=3)) == 5   # 3 rows left for later tasks
    assert (tally.parts, tally.rows_in, tally.rows_out, tally.deferred) == (2, 15, 8, 3)
    assert tally.top_drops() == [("not_found", 4), ("timeout", 3)]
    assert tally.top_drops(1) == [("not_found", 4)]


def test_eta_from_the_median_part_time_and_the_slots():
    tally = Tally()
    assert tally.eta(10, 2) is None   # nothing done: unknown
    for seconds in (1.0, 2.0, 30.0):   # the median ignores one straggler
        tally.add(stats(1, 1, seconds=seconds))
    assert tally.eta(10, 2) == pytest.approx(7 * 2.0 / 2)
    assert tally.eta(4, 8) == pytest.approx(2.0)   # the last wave: one part's time
    assert tally.eta(3, 2) == 0.0
    cold = Tally()   # a worker's first part pays its set-up: once warm parts exist, they decide
    cold.add({**stats(1, 1, seconds=20.0), "cold": True})
    assert cold.median_seconds() == 20.0
    cold.add({**stats(1, 1, seconds=20.0), "cold": True})
    cold.add(stats(1, 1, seconds=1.0))
    assert cold.median_seconds() == 1.0 and cold.eta(5, 2) == pytest.approx(1.0)


def test_durations_and_a_whole_line():
    assert [format_duration(s) for s in (None, 0, 42.4, 185, 7500, 97200)] == ["?", "0s", "42s", "3m05s", "2h05m",
                                                                              "1d03h"]
    tally = Tally()
    tally.add(stats(40, 37, {"not_found": 2, "timeout": 1}, seconds=2.0))
    line = format_line("download/map", tally, 12, 12.34, 8.2)
    assert line == ("progress download/map: 1/12 parts | rows in 40, out 37 | 12.3 rows/s | "
                    "top drops: not_found 2, timeout 1 | eta 8s")
    assert parse(f"2024-01-01 12:00:00 INFO pipeline.progress: {line}") == {
        "label": "download/map", "parts": 1, "total": 12, "rows_in": 40, "rows_out": 37, "rate": 12.3,
        "drops": {"not_found": 2, "timeout": 1}, "eta": "8s"}
    assert parse_line("dedup: 10 -> 9 rows") is None


def wait_for(condition, timeout=30.0):
    """Readiness, polled: the condition, not a clock, decides (the timeout only ends a hang)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_lines_at_an_interval_grow_and_end_at_the_totals(caplog):
    stream = io.StringIO()   # not a terminal: lines, no bar
    earlier = [stats(5, 5)]   # a part an earlier attempt finished
    parts = [stats(10, 10 - i % 3, {"short": i % 3} if i % 3 else {}, seconds=0.5) for i in range(9)]
    with caplog.at_level(logging.INFO, logger="pipeline.progress"):
        with PhaseProgress("toy/map", 10, earlier, slots=2, interval=0.02, stream=stream) as progress:
            for index, part in enumerate(parts[:4]):
                progress.add(index, part)
            wait_for(lambda: progress.lines >= 1)
            for index, part in enumerate(parts[4:], 4):
                progress.add(index, part)
                wait_for(lambda n=index: progress.lines >= n)   # lines keep coming while the phase runs
    printed = stream.getvalue().splitlines()
    logged = [r.getMessage() for r in caplog.records if r.name == "pipeline.progress"]
    assert printed == logged and len(printed) >= 2, "the same lines go to the log and to stderr"
    numbers = [parse(line) for line in printed]
    for before, after in zip(numbers, numbers[1:]):
        assert all(after[k] >= before[k] for k in ("parts", "rows_in", "rows_out")), (before, after)
    last = numbers[-1]
    assert (last["parts"], last["total"], last["rows_in"]) == (10, 10, 95)
    assert last["rows_out"] == 5 + sum(p["rows_out"] for p in parts)
    assert last["drops"] == {"short": sum(i % 3 for i in range(9))} and last["eta"] == "0s"


def test_a_short_phase_prints_nothing_and_a_terminal_gets_no_lines(caplog):
    stream = io.StringIO()
    with PhaseProgress("toy/map", 2, interval=3600, stream=stream) as progress:
        progress.add(0, stats(1, 1))
        progress.add(1, stats(1, 1))
    assert stream.getvalue() == ""

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    with caplog.at_level(logging.INFO, logger="pipeline.progress"):
        with PhaseProgress("toy/map", 2, interval=0.01, stream=terminal) as progress:
            wait_for(lambda: progress.lines >= 2)
            progress.add(0, stats(1, 1))
            progress.add(1, stats(1, 1))
    assert "progress toy/map" not in terminal.getvalue(), "a terminal keeps its bar"
    assert any("progress toy/map: 2/2 parts" in r.getMessage() for r in caplog.records), "the log gets them"
