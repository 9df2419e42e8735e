"""How far a running phase is, from the stats its part tasks return (no extra pass over the data).

While a phase's tasks run, the driver reports every `interval` seconds (`progress_interval`,
default 30) one line: the step and phase, parts done of total, rows in and out so far, rows/s
over the last interval, the most frequent drop reasons so far and an ETA from the parts' median
time. The line goes to the log (logger `pipeline.progress`, INFO: the run's `run.log`) and,
when stderr is not a terminal (a batch job's log: `ray job submit`, `spark-submit`, a
Kubernetes pod), to stderr too; a terminal gets a live bar instead. A phase that reported at
least one line reports a last one when it ends, with its totals.

`curate status` adds up the done markers with the same `Tally`.
"""
from __future__ import annotations

import logging
import math
import re
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, TextIO

LOGGER = logging.getLogger("pipeline.progress")
TOP_REASONS = 3      # drop reasons a line names
BAR_MIN_TASKS = 4    # fewer pending tasks get no bar on a terminal


@dataclass
class Tally:
    """What the finished parts of a phase add up to."""
    parts: int = 0
    rows_in: int = 0      # rows the parts reached (rows a part deferred to later tasks are not counted)
    rows_out: int = 0
    deferred: int = 0
    dropped: dict = field(default_factory=dict)
    seconds: list = field(default_factory=list)   # each part's time
    warm_seconds: list = field(default_factory=list)   # that of parts not first on their worker

    def add(self, stats: dict) -> int:
        """Count one part's stats (its done marker); returns the rows it reached."""
        reached = int(stats["rows_in"]) - int(stats.get("deferred") or 0)
        self.parts += 1
        self.rows_in += reached
        self.rows_out += int(stats["rows_out"])
        self.deferred += int(stats.get("deferred") or 0)
        for reason, count in (stats.get("dropped") or {}).items():
            self.dropped[reason] = self.dropped.get(reason, 0) + int(count)
        self.seconds.append(float(stats.get("seconds") or 0.0))
        if not stats.get("cold"):
            self.warm_seconds.append(self.seconds[-1])
        return reached

    def top_drops(self, count: int = TOP_REASONS) -> list[tuple[str, int]]:
        """The most frequent drop reasons, most first (ties by name)."""
        return sorted(self.dropped.items(), key=lambda rc: (-rc[1], rc[0]))[:count]

    def median_seconds(self) -> Optional[float]:
        """The parts' median time; once some worker ran a second part, of such parts only (a
        worker's first part also pays its imports and model loads)."""
        seconds = self.warm_seconds or self.seconds
        return statistics.median(seconds) if seconds else None

    def eta(self, total: int, slots: int) -> Optional[float]:
        """Seconds until the phase's `total` parts are done, `slots` at a time, each taking
        the parts' median time so far; None before any part is done."""
        remaining = total - self.parts
        if remaining <= 0:
            return 0.0
        median = self.median_seconds()
        if median is None:
            return None
        return remaining * median / max(1, min(slots, remaining))


def tally(stats: Iterable[dict]) -> Tally:
    found = Tally()
    for item in stats:
        found.add(item)
    return found


def format_duration(seconds: Optional[float]) -> str:
    """`42s`, `3m05s`, `2h05m`, `1d03h`; `?` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(max(seconds, 0.0)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def format_drops(pairs: list[tuple[str, int]]) -> str:
    return ", ".join(f"{reason} {count:,}" for reason, count in pairs) or "none"


def format_line(label: str, done: Tally, total: int, rate: Optional[float], eta: Optional[float]) -> str:
    """`progress download/map: 5/12 parts | rows in 40, out 37 | 12.3 rows/s | top drops:
    not_found 2, timeout 1 | eta 8s`"""
    rate_text = "?" if rate is None else f"{rate:,.1f}"
    return (f"progress {label}: {done.parts:,}/{total:,} parts | rows in {done.rows_in:,}, out {done.rows_out:,}"
            f" | {rate_text} rows/s | top drops: {format_drops(done.top_drops())} | eta {format_duration(eta)}")


LINE = re.compile(r"progress (?P<label>\S+): (?P<parts>[\d,]+)/(?P<total>[\d,]+) parts \| "
                  r"rows in (?P<rows_in>[\d,]+), out (?P<rows_out>[\d,]+) \| (?P<rate>[\d,.]+|\?) rows/s \| "
                  r"top drops: (?P<drops>.*?) \| eta (?P<eta>\S+)$")


def parse_line(text: str) -> Optional[dict]:
    """The numbers of a progress line (found anywhere in `text`, e.g. a log line with a
    timestamp before it), for scripts that read logs; None when it holds none."""
    match = LINE.search(text.rstrip())
    if match is None:
        return None
    found = match.groupdict()
    numbers = {k: int(found[k].replace(",", "")) for k in ("parts", "total", "rows_in", "rows_out")}
    rate = None if found["rate"] == "?" else float(found["rate"].replace(",", ""))
    drops = {} if found["drops"] == "none" else {
        reason: int(count.replace(",", "")) for reason, count in
        (item.rsplit(" ", 1) for item in found["drops"].split(", "))}
    return {"label": found["label"], **numbers, "rate": rate, "drops": drops, "eta": found["eta"]}


class PhaseProgress:
    """The progress of one phase while the engine runs its tasks: `add(index, stats)` as each
    task finishes (from any thread); as a context manager, the periodic lines (or the bar on
    a terminal) between its start and its end."""

    def __init__(self, label: str, total: int, done: Iterable[dict] = (), slots: int = 1,
                 interval: float = 30.0, stream: Optional[TextIO] = None,
                 clock: Callable[[], float] = time.monotonic):
        self.label, self.total, self.slots, self.interval = label, total, max(1, slots), interval
        self.stream = sys.stderr if stream is None else stream
        self.clock = clock
        self.done = tally(done)
        self.pending = total - self.done.parts
        self.lines = 0                      # lines reported so far
        self._lock = threading.Lock()
        self._window_rows, self._window_start = 0, clock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._bar = None

    @property
    def terminal(self) -> bool:
        isatty = getattr(self.stream, "isatty", None)
        return bool(isatty and isatty())

    def add(self, index: int, stats: dict) -> None:
        """A task finished (`index`: its place among the pending tasks; unused but for callers)."""
        with self._lock:
            self._window_rows += self.done.add(stats)
            if self._bar is not None:
                self._bar.update(1)

    def line(self) -> str:
        """The line for now; starts the next rate window."""
        with self._lock:
            now = self.clock()
            elapsed = now - self._window_start
            rate = self._window_rows / elapsed if elapsed > 0 else None
            self._window_rows, self._window_start = 0, now
            return format_line(self.label, self.done, self.total, rate, self.done.eta(self.total, self.slots))

    def report(self) -> str:
        text = self.line()
        LOGGER.info(text)
        if not self.terminal:
            print(text, file=self.stream, flush=True)
        self.lines += 1
        return text

    def __enter__(self) -> "PhaseProgress":
        if self.terminal and self.pending >= BAR_MIN_TASKS:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, initial=self.done.parts, unit="part", leave=False,
                             file=self.stream, desc=self.label)
        self._thread = threading.Thread(target=self._beat, daemon=True, name="curate-progress")
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.report()
            except Exception:  # noqa: BLE001 - a progress line must never stop a run
                pass

    def __exit__(self, exc_type, exc, traceback) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if exc_type is None and self.lines:
            self.report()   # the last line: the phase's totals
