"""The unit of work every engine runs: read one part, transform it, write it atomically.

A `PartTask` names a reader (where its rows come from), an op (a picklable transformation
that returns the table with a `_reason` column and optional numpy extras; one whose
`summarizes` is true returns only extras, a summary of its rows, in a phase that is not
counted), and a phase folder.
Outputs, each renamed into place when complete:

    <phase>/data/part-00007.parquet      rows that go on
    <phase>/dropped/part-00007.parquet   uid, url, stage, reason of the rows dropped here (if any;
                                         url null for a reason in the task's `withheld`)
    <phase>/done/part-00007.json         stats, written last: the part is done when it exists
    <phase>/done/part-00007.npz          numpy extras (e.g. per-entry counts), if any

A rerun finds the done file and returns its stats without doing the work again.
"""
from __future__ import annotations

import io
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core import images, parts, storage
from pipeline.core.stage import DEFERRED, DETAIL, REASON, Resources, set_column

SOURCE_STATS = b"curate.source"   # table metadata a reader may set: what it read (JSON)
LEDGER_SCHEMA = pa.schema([("uid", pa.string()), ("url", pa.string()),
                           ("stage", pa.string()), ("reason", pa.string()), ("detail", pa.string())])


@dataclass
class PartTask:
    phase_dir: str
    part: int
    stage: str                      # the stage name written to the ledger
    reader: Callable[[], pa.Table]  # picklable
    op: Callable[[pa.Table], Any]   # returns a table, or (table, {name: ndarray})
    row_group_key: Optional[str] = None
    resources: Resources = field(default_factory=Resources)
    images: bool = False            # the op reads image bytes (`jpg`)
    withheld: frozenset = frozenset()   # drop reasons whose URL the ledger must not hold
    declared: Optional[tuple] = None    # the public columns the op adds (checked), if it says

    def path(self, kind: str, suffix: str = ".parquet") -> str:
        return part_path(self.phase_dir, kind, self.part, suffix)


def part_path(phase_dir: str, kind: str, part: int, suffix: str = ".parquet") -> str:
    return storage.join(phase_dir, kind, f"part-{part:05d}{suffix}")


def run_part_task(task: PartTask) -> dict:
    """Run one task (idempotent): returns its stats dict, which is also its marker
    (`done/part-N.json`, written last, naming the part's objects and their sizes). A task
    that fails leaves `failed/part-N.json` (`record_failure`) for `curate status`."""
    done = task.path("done", ".json")
    finished = storage.read_marker(done)
    if finished is not None:
        return finished
    try:
        return _run_part_task(task, done)
    except Exception as exc:
        record_failure(task, exc)
        raise


FAILURE_LINES = 12   # the last lines of a failed task's traceback kept in its failure record


def record_failure(task: PartTask, exc: BaseException) -> None:
    """Write `failed/part-N.json`: the part's latest failure (the last lines of its traceback,
    where and when) and how many attempts failed so far. Never raises: the task's own error
    is what the engine must see."""
    import socket
    import traceback

    path = task.path("failed", ".json")
    try:
        previous = storage.read_marker(path) or {}
        lines = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip().splitlines()
        storage.write_json({"part": task.part, "stage": task.stage, "failures": int(previous.get("failures", 0)) + 1,
                            "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:500],
                            "lines": lines[-FAILURE_LINES:], "host": socket.gethostname(), "pid": os.getpid(),
                            "time": time.time()}, path)
    except Exception:  # noqa: BLE001 - the record is a courtesy
        pass


def _run_part_task(task: PartTask, done: str) -> dict:
    storage.remove_stale_temporaries(*(task.path(kind, suffix) for kind, suffix in (
        ("data", ".parquet"), ("dropped", ".parquet"), ("done", ".json"), ("done", ".npz"))))
    started = time.perf_counter()
    _SETUP_SECONDS[0] = 0.0
    table = task.reader()
    source = (table.schema.metadata or {}).get(SOURCE_STATS)
    rows_in = table.num_rows
    if task.images:
        table = images.attach_images(table)
    table_bytes = table.nbytes
    columns_in = set(table.column_names)
    result = task.op(table)
    table, extras = result if isinstance(result, tuple) else (result, {})
    if task.declared is not None:
        check_declared(task, columns_in, table)
    table, deferred = without_deferred(table, task)
    kept, dropped = split_by_reason(table, task.stage, task.withheld)
    kept = images.without_stored_images(kept)
    groups = parts.write_parquet(kept, task.path("data"), task.row_group_key,
                                 images.image_row_groups(kept))
    written = [task.path("data")]
    if dropped.num_rows:   # no ledger part when nothing was dropped (the marker says so)
        parts.write_parquet(dropped, task.path("dropped"))
        written.append(task.path("dropped"))
    if extras:
        _write_npz(extras, task.path("done", ".npz"))
        written.append(task.path("done", ".npz"))
    stats = {
        "part": task.part,
        "rows_in": rows_in,
        "rows_out": kept.num_rows,
        "dropped": _reason_counts(dropped),
        "deferred": deferred,                           # last rows not reached: run again
        "seconds": round(time.perf_counter() - started, 4),
        "finished": round(time.time(), 3),              # when (epoch seconds): rows/s in `curate status`
        "row_groups": {str(k): v for k, v in groups.items()},
        "extras": bool(extras),
        "setup_seconds": round(_SETUP_SECONDS[0], 4),   # loading models and the like (once per worker)
        "cold": not _TASKS_DONE[0],                     # the worker's first task (imports, warm-up)
        "table_bytes": table_bytes,                     # the rows it held in memory (Arrow)
        "peak_rss_bytes": peak_rss_bytes(),             # the worker's high-water mark so far
        "objects": {p[len(task.phase_dir) + 1:]: storage.size(p) for p in written},
    }
    if source is not None:
        stats["source"] = json.loads(source)
    if getattr(task.op, "summarizes", False):   # an op that only reads: its extras stand for its rows
        stats["summarized"] = rows_in - stats["rows_out"]
    if rows_in != stats["rows_out"] + sum(stats["dropped"].values()) + deferred + stats.get("summarized", 0):
        raise RuntimeError(f"{task.stage}: part {task.part} lost rows ({rows_in} in, "
                           f"{stats['rows_out']} out, {stats['dropped']} dropped, {deferred} deferred)")
    storage.write_json(stats, done)
    _TASKS_DONE[0] += 1
    return stats


def check_declared(task: PartTask, columns_in: set, table: pa.Table) -> None:
    """A stage adds exactly the public columns it declared (an empty table: no more than
    those): a column it did not declare would reach the result unplanned."""
    added = {c for c in table.column_names if c not in columns_in and not c.startswith(parts.INTERNAL_PREFIX)}
    declared = set(task.declared)
    missing = declared - set(table.column_names) if table.num_rows else set()
    if added - declared or missing:
        raise RuntimeError(f"{task.stage}: part {task.part}: added columns {sorted(added - declared)} it did "
                           f"not declare, and lacks declared {sorted(missing)}")


def without_deferred(table: pa.Table, task: PartTask) -> tuple[pa.Table, int]:
    """The rows the op reached, and how many it deferred (the last ones, so that the rest
    of the task is a slice of its input; at least one row must be reached)."""
    if REASON not in table.column_names or table.num_rows == 0:
        return table, 0
    is_deferred = pc.fill_null(pc.equal(table[REASON], DEFERRED), False)
    deferred = pc.sum(is_deferred).as_py() or 0
    if not deferred:
        return table, 0
    reached = table.num_rows - deferred
    if reached == 0 or pc.any(is_deferred.slice(0, reached)).as_py():
        raise RuntimeError(f"{task.stage}: part {task.part} deferred rows that are not its last "
                           f"ones, or all of them ({deferred} of {table.num_rows})")
    return table.slice(0, reached), deferred


def peak_rss_bytes() -> int:
    """This process's peak resident memory (Linux reports KiB)."""
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def split_by_reason(table: pa.Table, stage: str, withheld: frozenset = frozenset()) -> tuple[pa.Table, pa.Table]:
    """Kept rows (without `_reason`, `_detail`) and ledger rows for the dropped ones (`detail`
    from `_detail`, else null); a row dropped for a reason in `withheld` keeps its uid and
    reason in the ledger, its url is null."""
    if REASON not in table.column_names:
        return table.drop_columns([c for c in (DETAIL,) if c in table.column_names]), LEDGER_SCHEMA.empty_table()
    reasons = table[REASON]
    is_dropped = pc.is_valid(reasons)
    kept = table.filter(pc.invert(is_dropped)).drop_columns([c for c in (REASON, DETAIL) if c in table.column_names])
    dropped = table.filter(is_dropped)
    hidden = pc.is_in(dropped[REASON].cast(pa.string()), pa.array(sorted(withheld), pa.string()))
    ledger = pa.table({
        "uid": dropped["uid"].cast(pa.string()),
        "url": pc.if_else(hidden, pa.scalar(None, pa.string()), dropped["url"].cast(pa.string())),
        "stage": pa.array([stage] * dropped.num_rows, pa.string()),
        "reason": dropped[REASON].cast(pa.string()),
        "detail": (dropped[DETAIL].cast(pa.string()) if DETAIL in dropped.column_names
                   else pa.nulls(dropped.num_rows, pa.string())),
    }, schema=LEDGER_SCHEMA)
    return kept, ledger


def _reason_counts(ledger: pa.Table) -> dict[str, int]:
    if ledger.num_rows == 0:
        return {}
    counts = pc.value_counts(ledger["reason"]).to_pylist()
    return {c["values"]: c["counts"] for c in sorted(counts, key=lambda c: c["values"])}


def _write_npz(extras: dict[str, np.ndarray], path: str) -> None:
    with storage.committing(path) as tmp, open(tmp, "wb") as stream:
        np.savez(stream, **extras)


def load_extras(phase_dir: str, part: int) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(storage.read_bytes(part_path(phase_dir, "done", part, ".npz")))) as data:
        return {k: data[k] for k in data.files}


SOURCE_PART = "_source_part"   # a row's part within a grouped task's input


@dataclass
class ReadParts:
    """Reader: the concatenation of parts, image bytes replaced by references. With
    `tagged`, each row gets `_source_part`, the index of its part in `refs` (so a task
    over several parts can write one row group per part)."""
    refs: list
    columns: Optional[list[str]] = None
    tagged: bool = False

    def __call__(self) -> pa.Table:
        tables = []
        for index, ref in enumerate(parts.as_refs(self.refs)):
            table = images.read_detached(ref, self.columns)
            if self.tagged:
                table = set_column(table, SOURCE_PART, pa.array(np.full(table.num_rows, index, np.int32)))
            tables.append(table)
        return parts.concat(tables)


@dataclass
class ReadSlice:
    """Reader: rows [offset, offset + length) of one part (or of another reader's table)."""
    ref: Any
    offset: int
    length: int

    def __call__(self) -> pa.Table:
        table = self.ref() if callable(self.ref) else images.read_detached(parts.as_ref(self.ref))
        return table.slice(self.offset, self.length)


_STAGES: dict = {}
_SETUP_SECONDS = [0.0]   # spent on one-time set-up (models, matchers) during the current task
_BUILT: dict = {}
_TASKS_DONE = [0]        # tasks this process has finished


def built_once(key: Any, build: Callable[[], Any]) -> Any:
    """`build()`'s result, made once per worker process and kept; the time it takes is
    counted as the task's set-up (one-time, not per row), which `curate plan` relies on."""
    if key not in _BUILT:
        started = time.perf_counter()
        _BUILT[key] = build()
        _SETUP_SECONDS[0] += time.perf_counter() - started
    return _BUILT[key]


@dataclass
class StageOp:
    """Op: a stage's `process`, with the stage built and `setup()` once per worker process."""
    stage_cls: type
    settings: Any
    seed: int = 0

    def __call__(self, table: pa.Table) -> pa.Table:
        key = (self.stage_cls.__module__, self.stage_cls.__qualname__, repr(self.settings), self.seed)
        return built_once(key, self._build).process(table)

    def declared_columns(self) -> tuple:
        return self.stage_cls.output_columns(self.settings)

    def _build(self):
        stage = self.stage_cls(self.settings, seed=self.seed)
        stage.setup()
        return stage
