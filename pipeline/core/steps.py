"""Steps: a stage's work over all parts, as one or more phases of part tasks.

A step folder holds one subfolder per phase, and `_SUCCESS` plus `stats.json` when the step
is complete. A rerun skips a complete step, and inside an incomplete one every finished part.
Global steps (dedup, balancing) run two phases with a small merge on the driver in between.

The tasks of a global step follow data volume, not the number of parts: `run_grouped` hands
one task consecutive parts holding up to `task_rows` rows and writes one file per task with a
row group per part, so a step over 10x the parts of the same rows runs as many tasks, writes
as many files and reads each part once.

A map task may stop early and defer its last rows (the download stage does at its deadline,
when a slow host holds it): `run_continued` runs the rest as smaller tasks (`rest1`,
`rest2`, ... phases, each deferred remainder cut in SPREAD pieces, so one slow part spreads
over the cluster), and the step's output keeps the input's row order. The pieces are marked
`joined` to the task's own part: the next map step reads them as one part (`logical_parts`),
so it cuts the same tasks and batches as in a run without the deadline, and the result is
byte for byte the same (CLIP scores depend on the batch a row is encoded in).
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

from pipeline.core import parts, storage
from pipeline.core.engine import Engine
from pipeline.core.parts import PartRef
from pipeline.core.progress import PhaseProgress
from pipeline.core.stage import Resources, check_columns
from pipeline.core.tasks import (
    SOURCE_PART,
    PartTask,
    ReadParts,
    ReadSlice,
    StageOp,
    load_extras,
    part_path,
    peak_rss_bytes,
    run_part_task,
)

TASK_ROWS = 1_000_000   # default rows one task of a global step holds at most
SPREAD = 8              # pieces the deferred rest of one task is cut into
PROGRESS_INTERVAL = 30.0   # default seconds between a running phase's progress lines
PHASES_FILE = "phases.json"   # an unfinished step's phases: name, tasks, slots, start (`curate status`)
STEPS_FILE = "steps.json"     # in the run folder: the run's steps in order (`curate status`)


@dataclass
class StepContext:
    engine: Engine
    step_dir: str
    stage: str
    seed: int
    task_rows: int = TASK_ROWS
    phase_stats: list = field(default_factory=list)   # stats lists of the phases run so far
    dropped_files: list = field(default_factory=list)  # ledger parts with rows, of every phase
    results: dict = field(default_factory=dict)        # phase name -> its tasks' stats
    timings: dict = field(default_factory=dict)        # phase name -> (seconds, gpus, continues)
    record: dict = field(default_factory=dict)         # what a step adds to its stats record
    withheld: frozenset = frozenset()                  # drop reasons whose URL the ledger withholds
    progress_interval: float = PROGRESS_INTERVAL       # seconds between progress lines (core.progress)
    started_phases: list = field(default_factory=list)  # this attempt's phases so far (PHASES_FILE)

    @property
    def run_dir(self) -> str:
        return storage.parent(storage.parent(self.step_dir))

    def phase_dir(self, name: str) -> str:
        return storage.join(self.step_dir, name)

    def path(self, name: str) -> str:
        """A file of the step's own (beside its phases)."""
        return storage.join(self.step_dir, name)

    def run_phase(self, name: str, readers: list[Callable], op: Callable,
                  resources: Resources = Resources(), row_group_key: Optional[str] = None,
                  counted: bool = True, images: bool = False, continues: bool = False) -> list[dict]:
        """Run `op` over every reader's table as part tasks; returns their stats in order.
        `counted=False` phases (pure reshuffles) do not enter the step's row accounting;
        `continues=True` ones count as more tasks of the phase before (deferred rows);
        `images=True` hands the op the image bytes of its rows."""
        started = time.perf_counter()
        phase_dir = self.phase_dir(name)
        declared = op.declared_columns() if hasattr(op, "declared_columns") else None
        tasks = [PartTask(str(phase_dir), i, self.stage, reader, op, row_group_key, resources, images,
                          self.withheld, declared) for i, reader in enumerate(readers)]
        slots = self.engine.parallelism()
        self.started_phases.append({"name": name, "tasks": len(tasks), "slots": slots, "started": time.time(),
                                    "counted": counted, "continues": continues})
        storage.write_json({"phases": self.started_phases}, self.path(PHASES_FILE))
        stats = [storage.read_marker(t.path("done", ".json")) for t in tasks]
        pending = [i for i, s in enumerate(stats) if s is None]
        if pending:
            done = [s for s in stats if s is not None]
            with PhaseProgress(f"{self.stage}/{name}", len(tasks), done, slots, self.progress_interval) as progress:
                results = self.engine.map(run_part_task, [tasks[i] for i in pending], resources,
                                          on_result=progress.add)
            for i, result in zip(pending, results):
                stats[i] = result
        self.results[name] = stats
        self.timings[name] = (time.perf_counter() - started, resources.gpus, continues)
        if continues:
            self.phase_stats[-1] = self.phase_stats[-1] + stats
        elif counted:
            self.phase_stats.append(stats)
        self.dropped_files.extend(t.path("dropped") for t, s in zip(tasks, stats) if s["dropped"])
        return stats

    def run_continued(self, name: str, readers: list[Callable], op: Callable,
                      resources: Resources = Resources(), images: bool = False,
                      rest_op: Optional[Callable] = None) -> list[PartRef]:
        """`run_phase`, then the rows its tasks deferred, as smaller tasks (run by `rest_op`,
        default `op`), round after round until every row is reached; returns the output
        parts in the input's row order (each task's part, then those of its rest's pieces)."""
        stats = self.run_phase(name, readers, op, resources, images=images)
        op = rest_op or op
        nodes = [[ref] for ref in self.data_parts(name, len(readers))]   # a task's parts
        tree = list(nodes)
        for round_ in range(1, 1 << 30):
            pending = [(n, r, s) for n, r, s in zip(nodes, readers, stats) if s.get("deferred")]
            if not pending:
                break
            readers, nodes = [], []
            for node, reader, done in pending:
                for piece in rest_of(reader, done["rows_in"] - done["deferred"], done["deferred"]):
                    nodes.append([])
                    node.append(nodes[-1])
                    readers.append(piece)
            phase = f"rest{round_}"
            stats = self.run_phase(phase, readers, op, resources, images=images, continues=True)
            for i, node in enumerate(nodes):
                node.append(PartRef(self.data_path(phase, i)))
        return [ref if i == 0 else dataclasses.replace(ref, joined=True)
                for node in tree for i, ref in enumerate(flatten(node))]

    def extras(self, name: str) -> Iterator[dict]:
        """The numpy extras of a phase's tasks that wrote any, in task order."""
        for task, stats in enumerate(self.results[name]):
            if stats["extras"]:
                yield load_extras(self.phase_dir(name), task)

    def data_path(self, name: str, task: int) -> str:
        return part_path(self.phase_dir(name), "data", task)

    def data_parts(self, name: str, count: int) -> list[PartRef]:
        """The whole output files of a phase's `count` tasks, as parts."""
        return [PartRef(self.data_path(name, i)) for i in range(count)]

    def keyed_parts(self, name: str, stats: list[dict], keys: list[list[int]]) -> list[PartRef]:
        """The row groups of a phase written by key (`row_group_key`): task i's keys
        `keys[i]`, in order, skipping empty ones (at least one part is kept, for its schema)."""
        found = [PartRef(self.data_path(name, i), (s["row_groups"][str(k)],))
                 for i, (s, task_keys) in enumerate(zip(stats, keys))
                 for k in task_keys if str(k) in s["row_groups"]]
        return found or [PartRef(self.data_path(name, 0), ())]

    def mirrored_parts(self, name: str, stats: list[dict], groups: list[list[PartRef]]) -> list[PartRef]:
        """The parts of a phase that wrote one row group per input part (task i read the
        parts `groups[i]`), empty ones left out, each joined to the part before it where its
        input part was and that part's row group (or an earlier one of the same part) is kept."""
        found: list[PartRef] = []
        part, last = -1, None   # the input's logical part, and that of the last part found
        for i, (s, group) in enumerate(zip(stats, groups)):
            for k, ref in enumerate(group):
                part += 0 if ref.joined else 1
                if str(k) in s["row_groups"]:
                    found.append(PartRef(self.data_path(name, i), (s["row_groups"][str(k)],), last == part))
                    last = part
        return found or [PartRef(self.data_path(name, 0), ())]

    def run_grouped(self, name: str, refs: list[PartRef], op: Callable, **options) -> list[PartRef]:
        """Run `op` over groups of consecutive parts of up to `task_rows` rows; the output
        keeps the parts (one row group each, empty ones left out)."""
        groups = group_by_rows(refs, self.task_rows)
        readers = [ReadParts(group, tagged=True) for group in groups]
        stats = self.run_phase(name, readers, op, row_group_key=SOURCE_PART, **options)
        return self.mirrored_parts(name, stats, groups)


def bucket_refs(files: list[PartRef], stats: list[dict], keys: range) -> list[PartRef]:
    """The row groups of keys `keys` in each file written by key (one contiguous run per
    file, since row groups are in key order); an empty selection keeps the schema."""
    refs = []
    for file, part in zip(files, stats):
        groups = [part["row_groups"][str(k)] for k in keys if str(k) in part["row_groups"]]
        if groups:
            refs.append(PartRef(file.path, tuple(groups)))
    return refs or [PartRef(files[0].path, ())]


def bucket_ranges(buckets: int, tasks: int) -> list[range]:
    """`buckets` cut into `tasks` (at most `buckets`) consecutive ranges of about equal size."""
    tasks = max(1, min(tasks, buckets))
    bounds = [buckets * i // tasks for i in range(tasks + 1)]
    return [range(a, b) for a, b in zip(bounds, bounds[1:])]


def rest_of(reader: Callable, reached: int, deferred: int) -> list[ReadSlice]:
    """The `deferred` rows after the first `reached` of a reader, in SPREAD pieces."""
    if isinstance(reader, ReadSlice):
        source, start = reader.ref, reader.offset + reached
    elif isinstance(reader, ReadParts) and len(reader.refs) == 1 and not reader.tagged:
        source, start = reader.refs[0], reached
    else:
        source, start = reader, reached
    size = math.ceil(deferred / SPREAD)
    return [ReadSlice(source, start + offset, min(size, deferred - offset))
            for offset in range(0, deferred, size)]


def flatten(tree: list) -> Iterator[PartRef]:
    for item in tree:
        if isinstance(item, list):
            yield from flatten(item)
        else:
            yield item


def rows_of(refs: list[PartRef]) -> list[int]:
    """Row count of each part, from the parquet footers (one read per file)."""
    return [parts.num_rows(ref) for ref in refs]


def logical_parts(refs: list[PartRef]) -> list[list[PartRef]]:
    """The input's parts as a run without deadlines cut them: each part with the `joined`
    ones after it (the rows its task deferred)."""
    found: list[list[PartRef]] = []
    for ref in refs:
        if ref.joined and found:
            found[-1].append(ref)
        else:
            found.append([ref])
    return found


def part_readers(refs: list[PartRef]) -> list[ReadParts]:
    """One reader per logical part (a map step's tasks)."""
    return [ReadParts(group) for group in logical_parts(refs)]


def group_by_rows(refs: list[PartRef], task_rows: int, counts: Optional[list[int]] = None) -> list[list[PartRef]]:
    """Consecutive parts in groups of at most `task_rows` rows (a larger part alone; a
    joined part stays with the part before it)."""
    counts = rows_of(refs) if counts is None else counts
    groups: list[list[PartRef]] = []
    total = 0
    for ref, rows in zip(refs, counts):
        if not groups or (total + rows > task_rows and not ref.joined):
            groups.append([])
            total = 0
        groups[-1].append(ref)
        total += rows
    return groups or [[]]


class Step:
    """Base: a plain stage applied part by part (override `run` for global steps).
    With `rows_per_task`, input parts are cut into tasks of at most that many rows (for
    stages whose rows are heavy, such as downloaded images).

    What a step needs from the rest of the run comes through these hooks, which the app
    calls from the declarations, never naming a stage:
    - `want(columns)`: optional outputs a later stage reads (the stage's `wants`);
    - `writes_images` (its stage's) / `image_transforms`: a step that writes the images out
      applies the run's image transforms (`ImageTransform`, e.g. blurring faces) as it does;
    - `drops_earlier_uids`: it drops the uids of excluded runs itself (else ingest does);
    - `check_inputs(fields)`: checks what earlier steps declare, before any work."""
    name = ""
    drops_earlier_uids = False

    def __init__(self, stage_cls: type, settings: Any, rows_per_task: Optional[int] = None):
        self.stage_cls = stage_cls
        self.settings = settings
        self.name = stage_cls.name
        self.rows_per_task = rows_per_task
        self.image_transforms: tuple = ()

    @property
    def writes_images(self) -> bool:
        return self.stage_cls.writes_images

    def want(self, columns: frozenset) -> None:
        """Add the optional outputs `columns` (a later stage reads them)."""
        self.settings = self.stage_cls.wants(self.settings, columns)

    def reads(self) -> tuple:
        """The columns its stage reads."""
        return self.stage_cls.input_columns(self.settings)

    def check_inputs(self, fields: dict) -> None:
        """Before any work: check what the steps before it declare they add (`fields`:
        column -> (Arrow type, step name)); raise `UserError` for what cannot work."""

    def run(self, ctx: StepContext, inputs: list[PartRef]) -> list[PartRef]:
        op = StageOp(self.stage_cls, self.settings, ctx.seed)
        rest_op = StageOp(self.stage_cls, self.stage_cls.rest_settings(self.settings), ctx.seed)
        readers = split_readers(inputs, self.rows_per_task)
        stage = self.stage_cls(self.settings, seed=ctx.seed)
        return ctx.run_continued("map", readers, op, stage.resources, images=stage.reads_images,
                                 rest_op=rest_op)


def split_readers(inputs: list[PartRef], rows_per_task: Optional[int]) -> list[Callable]:
    """One reader per logical part, or with `rows_per_task`, per slice of that many rows."""
    readers: list[Callable] = part_readers(inputs)
    if not rows_per_task:
        return readers
    cut: list[Callable] = []
    for reader, rows in zip(readers, [sum(rows_of(r.refs)) for r in readers]):
        if rows <= rows_per_task:
            cut.append(reader)
            continue
        source = reader.refs[0] if len(reader.refs) == 1 else reader
        cut.extend(ReadSlice(source, start, min(rows_per_task, rows - start))
                   for start in range(0, rows, rows_per_task))
    return cut


def execute_step(step: Step, engine: Engine, run_dir: str, index: int, seed: int,
                 inputs: list, task_rows: int = TASK_ROWS, progress_interval: float = PROGRESS_INTERVAL) -> dict:
    """Run (or skip, when complete) one step; returns its record for stats/summary
    (`parts`: the output parts, in their JSON form)."""
    step_dir = storage.join(run_dir, "steps", f"{index:02d}_{step.name}")
    success = storage.join(step_dir, storage.SUCCESS)
    if storage.marker_exists(success):
        return storage.read_json(storage.join(step_dir, "stats.json"))
    started = time.perf_counter()
    ctx = StepContext(engine, step_dir, step.name, seed, task_rows, withheld=step.stage_cls.withheld_reasons,
                      progress_interval=progress_interval)
    inputs = parts.as_refs(inputs)
    if inputs:
        check_columns(step.name, step.reads(), parts.read_schema(inputs[0]).names, step.stage_cls.inputs_from)
    outputs = step.run(ctx, inputs)
    record = summarize(step.name, ctx.phase_stats)
    record["seconds"] = round(time.perf_counter() - started, 3)
    record["parts"] = [ref.to_json() for ref in outputs]
    record["dropped_files"] = ctx.dropped_files
    record["phases"] = [phase_record(name, stats, *ctx.timings[name]) for name, stats in ctx.results.items()]
    record["parts_in"] = len(inputs)
    record["slots"] = engine.parallelism()
    record["driver_peak_bytes"] = peak_rss_bytes()
    record.update(ctx.record)
    storage.write_json(record, storage.join(step_dir, "stats.json"))
    storage.write_text(success, "")
    return record


def phase_record(name: str, stats: list[dict], seconds: float, gpus: float, continues: bool) -> dict:
    """What `curate plan` calibrates on: a phase's tasks, rows, time, bytes and memory."""
    cold = [s for s in stats if s.get("cold")]
    return {"name": name, "tasks": len(stats), "seconds": round(seconds, 4), "gpus": gpus,
            "continues": continues,
            "rows_in": sum(s["rows_in"] for s in stats),
            "deferred": sum(s.get("deferred", 0) for s in stats),
            "task_seconds": round(sum(s["seconds"] for s in stats), 4),
            "setup_seconds": round(sum(s.get("setup_seconds", 0.0) for s in stats), 4),
            "workers_set_up": sum(1 for s in stats if s.get("setup_seconds", 0.0) > 0),
            "cold_tasks": len(cold), "cold_rows": sum(s["rows_in"] for s in cold),
            "cold_seconds": round(sum(s["seconds"] - s.get("setup_seconds", 0.0) for s in cold), 4),
            "bytes_written": sum(sum((s.get("objects") or {}).values()) for s in stats),
            "objects": sum(len(s.get("objects") or {}) + 1 for s in stats),   # + the marker
            "max_task_rows": max((s["rows_in"] for s in stats), default=0),
            "max_table_bytes": max((s.get("table_bytes", 0) for s in stats), default=0),
            "worker_peak_bytes": max((s.get("peak_rss_bytes", 0) for s in stats), default=0)}


def summarize(name: str, phase_stats: list[list[dict]]) -> dict:
    """Rows in (first phase), rows out (last phase) and drops (all phases) of a step."""
    dropped: dict[str, int] = {}
    for stats in phase_stats:
        for part in stats:
            for reason, count in part["dropped"].items():
                dropped[reason] = dropped.get(reason, 0) + count
    rows_in = sum(p["rows_in"] - p.get("deferred", 0) for p in phase_stats[0]) if phase_stats else 0
    rows_out = sum(p["rows_out"] for p in phase_stats[-1]) if phase_stats else 0
    return {"name": name, "rows_in": rows_in, "rows_out": rows_out,
            "dropped": dict(sorted(dropped.items()))}
