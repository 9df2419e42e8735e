"""Steps: a stage's work over all parts, as one or more phases of part tasks.

A step folder holds one subfolder per phase, and `_SUCCESS` plus `stats.json` when the step
is complete. A rerun skips a complete step, and inside an incomplete one every finished part.
Global steps (dedup, balancing) run two phases with a small merge on the driver in between.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from pipeline.core import parts
from pipeline.core.stage import Resources
import pyarrow.parquet as pq

from pipeline.core.tasks import PartTask, ReadParts, ReadRows, StageOp, run_part_task
from pipeline.engines.base import Engine


@dataclass
class StepContext:
    engine: Engine
    step_dir: Path
    stage: str
    seed: int
    phase_stats: list = field(default_factory=list)   # stats lists of the phases run so far
    phase_dirs: list = field(default_factory=list)

    def phase_dir(self, name: str) -> Path:
        return self.step_dir / name

    def run_phase(self, name: str, readers: list[Callable], op: Callable,
                  resources: Resources = Resources(), row_group_key: Optional[str] = None,
                  counted: bool = True) -> list[dict]:
        """Run `op` over every reader's table as part tasks; returns their stats in order.
        `counted=False` phases (pure reshuffles) do not enter the step's row accounting."""
        phase_dir = self.phase_dir(name)
        tasks = [PartTask(str(phase_dir), i, self.stage, reader, op, row_group_key, resources)
                 for i, reader in enumerate(readers)]
        pending = [t for t in tasks if not t.path("done", ".json").exists()]
        if pending:
            self.engine.map(run_part_task, pending, resources)
        stats = [parts.read_json(t.path("done", ".json")) for t in tasks]
        if counted:
            self.phase_stats.append(stats)
        self.phase_dirs.append(phase_dir)
        return stats

    def data_paths(self, name: str, count: int) -> list[str]:
        return [str(self.phase_dir(name) / "data" / f"part-{i:05d}.parquet") for i in range(count)]


class Step:
    """Base: a plain stage applied part by part (override `run` for global steps).
    With `rows_per_task`, input parts are cut into tasks of at most that many rows (for
    stages whose rows are heavy, such as downloaded images)."""
    name = ""

    def __init__(self, stage_cls: type, settings: Any, rows_per_task: Optional[int] = None):
        self.stage_cls = stage_cls
        self.settings = settings
        self.name = stage_cls.name
        self.rows_per_task = rows_per_task

    def run(self, ctx: StepContext, inputs: list[str]) -> list[str]:
        op = StageOp(self.stage_cls, self.settings, ctx.seed)
        readers = split_readers(inputs, self.rows_per_task)
        resources = self.stage_cls(self.settings, seed=ctx.seed).resources  # may depend on settings
        ctx.run_phase("map", readers, op, resources)
        return ctx.data_paths("map", len(readers))


def split_readers(inputs: list[str], rows_per_task: Optional[int]) -> list[Callable]:
    if not rows_per_task:
        return [ReadParts([p]) for p in inputs]
    readers: list[Callable] = []
    for path in inputs:
        rows = pq.read_metadata(path).num_rows
        if rows <= rows_per_task:
            readers.append(ReadParts([path]))
            continue
        readers.extend(ReadRows(path, start, min(rows_per_task, rows - start))
                       for start in range(0, rows, rows_per_task))
    return readers


def execute_step(step: Step, engine: Engine, run_dir: Path, index: int, seed: int,
                 inputs: list) -> dict:
    """Run (or skip, when complete) one step; returns its record for stats/summary."""
    step_dir = run_dir / "steps" / f"{index:02d}_{step.name}"
    success = step_dir / "_SUCCESS"
    if success.exists():
        return parts.read_json(step_dir / "stats.json")
    started = time.perf_counter()
    ctx = StepContext(engine, step_dir, step.name, seed)
    outputs = step.run(ctx, inputs)
    record = summarize(step.name, ctx.phase_stats)
    record["seconds"] = round(time.perf_counter() - started, 3)
    record["parts"] = outputs
    record["dropped_files"] = sorted(
        str(p) for d in ctx.phase_dirs for p in (d / "dropped").glob("part-*.parquet"))
    parts.write_json(record, step_dir / "stats.json")
    success.write_text("")
    return record


def summarize(name: str, phase_stats: list[list[dict]]) -> dict:
    """Rows in (first phase), rows out (last phase) and drops (all phases) of a step."""
    dropped: dict[str, int] = {}
    for stats in phase_stats:
        for part in stats:
            for reason, count in part["dropped"].items():
                dropped[reason] = dropped.get(reason, 0) + count
    rows_in = sum(p["rows_in"] for p in phase_stats[0]) if phase_stats else 0
    rows_out = sum(p["rows_out"] for p in phase_stats[-1]) if phase_stats else 0
    return {"name": name, "rows_in": rows_in, "rows_out": rows_out,
            "dropped": dict(sorted(dropped.items()))}
