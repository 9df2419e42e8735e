"""`curate plan`: what a run of N input rows will cost, from a finished small run of the same
stages (the calibration run).

Every run records what this needs: each step's `stats.json` has, per phase, its tasks, rows,
wall and task seconds, model set-up seconds, bytes and objects written and the workers' peak
memory, plus the driver's peak memory; `timing.json` has the run's wall time, finalize time and
slots. The model, step by step, phase by phase:

- rows: each step's rows scale with N (the calibration's funnel ratios);
- tasks: a phase of one task per part follows the parts (ingest makes N / input.part_rows,
  download cuts them to download.part_rows); a grouped phase has one task per `task_rows`
  rows (per `part_rows` for ingest and download);
- core seconds: the calibration's seconds per row (set-up taken out) times the rows, plus the
  set-up once per worker; on GPU phases these are GPU seconds;
- wall seconds: waves of tasks (tasks / slots, rounded up) times the task time at the new
  rows per task, plus set-up, plus what the calibration spent outside tasks (driver merges,
  scheduling), which does not grow with rows;
- bytes written and stored: per row, as measured; requests: the objects each task writes
  (+ its marker), two marker checks, and HEAD + GET per input file it reads;
- worker memory: the process baseline (a worker with its imports) plus three times the
  Arrow bytes of the largest task's rows (input, output and a copy), scaled to the rows per
  task at N;
  driver memory: as measured (it holds counts and histograms, never per-row data).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Optional

from pipeline.app import TIMING_FILE, build_steps
from pipeline.core import storage
from pipeline.errors import UserError

TABLE_COPIES = 3   # a task holds its input rows, its output rows and a transient copy


@dataclass(frozen=True)
class Cluster:
    nodes: int = 1
    cpus: int = 1
    gpus: int = 0

    def slots(self, gpus_per_task: float) -> int:
        if gpus_per_task > 0 and self.gpus > 0:
            return max(1, int(self.nodes * self.gpus // gpus_per_task))
        return max(1, self.nodes * self.cpus)


def parse_cluster(text: str) -> Cluster:
    """`nodes=8,cpus=32,gpus=1` (any subset)."""
    values = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, _, value = item.partition("=")
        if key not in ("nodes", "cpus", "gpus") or not value.isdigit():
            raise UserError(f"--cluster {text}: expected nodes=N,cpus=N,gpus=N")
        values[key] = int(value)
    return Cluster(**values)


@dataclass(frozen=True)
class Calibration:
    run_dir: str
    input_rows: int
    steps: list          # each step's stats.json record, in pipeline order
    timing: dict
    stored: dict         # bytes stored: "steps", "kept", "ledger", "shards", "other"


def load_calibration(run_dir: str) -> Calibration:
    summary = _read(run_dir, "summary.json")
    timing = _read(run_dir, TIMING_FILE)
    steps = []
    for index, stage in enumerate(s for s in summary["stages"] if s["name"] != "takedown"):   # no step
        record = _read(run_dir, f"steps/{index:02d}_{stage['name']}/stats.json")
        if not isinstance(record.get("phases"), list) or not all(isinstance(p, dict) for p in record["phases"]):
            raise UserError(f"{run_dir}: step {stage['name']} has no phase measurements "
                            f"(a run from an older version); rerun it to calibrate")
        steps.append({**record, "phases": fold_continuations(record["phases"])})
    if not summary["input_rows"]:
        raise UserError(f"{run_dir}: the calibration run had no input rows")
    return Calibration(run_dir, summary["input_rows"], steps, timing, stored_bytes(run_dir, steps))


def fold_continuations(phases: list[dict]) -> list[dict]:
    """Phases that ran rows deferred by the phase before (a slow host at a deadline) count
    as that phase's work: the model plans the rows, not how the calibration run split them."""
    folded: list[dict] = []
    for phase in phases:
        phase = {**phase, "rows_in": phase["rows_in"] - phase.get("deferred", 0), "deferred": 0}
        if not phase.get("continues") or not folded:
            folded.append(phase)
            continue
        into = folded[-1]
        for key in ("tasks", "seconds", "rows_in", "task_seconds", "setup_seconds", "workers_set_up",
                    "cold_tasks", "cold_rows", "cold_seconds", "bytes_written", "objects"):
            into[key] = into.get(key, 0) + phase.get(key, 0)
        for key in ("max_task_rows", "max_table_bytes", "worker_peak_bytes"):
            into[key] = max(into.get(key, 0), phase.get(key, 0))
    return folded


def _read(run_dir: str, name: str) -> dict:
    try:
        return storage.read_json(storage.join(run_dir, name))
    except FileNotFoundError:
        raise UserError(f"{run_dir}: no {name} (not a finished run of this version; "
                        f"run the config on a sample first)") from None


def stored_bytes(run_dir: str, steps: list[dict]) -> dict:
    """Bytes the calibration run stores: its steps' parts, kept/, ledger/, shards/, the rest."""
    in_steps = sum(p["bytes_written"] for s in steps for p in s["phases"])
    folders = {}
    for name in ("kept", "ledger"):
        files = storage.folder_files(storage.join(run_dir, name)) or []
        folders[name] = sum(storage.size(f) for f in files)
    sizes = storage.read_marker(storage.join(run_dir, "shards", "sizes.json")) or {}
    folders["shards"] = sum(storage.size(storage.join(run_dir, "shards", n)) for n in sizes)
    total = folder_bytes(run_dir) if storage.is_local(run_dir) else None
    other = max(0, total - in_steps - sum(folders.values())) if total is not None else 0
    return {"steps": in_steps, **folders, "other": other}


def folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(folder) for f in files)


def plan(settings, rows: int, calibration: Calibration, cluster: Optional[Cluster] = None) -> dict:
    """The prediction for `rows` input rows of `settings` (the run settings of the config)."""
    check_same_stages(settings, calibration)
    f = rows / calibration.input_rows
    cluster = cluster or Cluster(cpus=int(calibration.timing["slots"]))
    slots_cal = int(calibration.timing["slots"])
    baseline = min((p["worker_peak_bytes"] for s in calibration.steps for p in s["phases"]
                    if p["worker_peak_bytes"]), default=0)
    caps = {"input": settings.input.part_rows, "task_rows": settings.task_rows,
            "download": getattr(settings.section("download"), "part_rows", settings.task_rows)}
    steps, parts = [], 1
    for record in calibration.steps:
        predicted, parts = plan_step(record, f, parts, caps, cluster, slots_cal, baseline)
        steps.append(predicted)
    steps.append(plan_finalize(calibration, f, cluster, slots_cal))
    stored_per_row = {k: v / calibration.input_rows for k, v in calibration.stored.items()}
    bytes_stored = int(sum(v * rows for k, v in stored_per_row.items() if k != "other")
                       + calibration.stored["other"])
    total = {k: round(sum(s[k] for s in steps), 1) for k in ("core_seconds", "gpu_seconds", "wall_seconds")}
    total["wall_seconds"] = round(total["wall_seconds"] + run_overhead(calibration), 1)
    total["bytes_stored"] = bytes_stored
    total["driver_peak_bytes"] = max(s["driver_peak_bytes"] for s in steps)
    return {"rows": rows, "calibration": {"run": calibration.run_dir, "rows": calibration.input_rows},
            "cluster": {"nodes": cluster.nodes, "cpus": cluster.cpus, "gpus": cluster.gpus},
            "steps": steps, "total": total}


def check_same_stages(settings, calibration: Calibration) -> None:
    wanted = [s.name for s in build_steps(settings)[0]]
    measured = [s["name"] for s in calibration.steps]
    if wanted != measured:
        raise UserError(f"{calibration.run_dir}: calibration ran {', '.join(measured)}; the config "
                        f"runs {', '.join(wanted)} (calibrate on a sample run of the same stages)")


def plan_step(record: dict, f: float, parts_in: int, caps: dict, cluster: Cluster, slots_cal: int,
              baseline: int) -> tuple[dict, int]:
    """One step's prediction, and the number of parts it hands on."""
    name = record["name"]
    out = {"name": name, "tasks": 0, "requests": 0, "bytes_written": 0, "bytes_stored": 0,
           "core_seconds": 0.0, "gpu_seconds": 0.0, "wall_seconds": 0.0,
           "driver_peak_bytes": int(record["driver_peak_bytes"]), "worker_peak_bytes": 0}
    parts_out = parts_in
    for phase in record["phases"]:
        rows = phase["rows_in"] * f
        tasks = phase_tasks(name, phase, record["parts_in"], rows, parts_in, caps)
        if name in ("ingest", "download") and phase is record["phases"][0]:
            parts_out = tasks
        rows_per_task = rows / tasks
        per_row, setup = task_costs(phase)
        slots = cluster.slots(phase["gpus"])
        busy = per_row * rows + setup * min(tasks, slots)
        out["gpu_seconds" if phase["gpus"] and cluster.gpus else "core_seconds"] += busy
        waves = math.ceil(tasks / slots)
        out["wall_seconds"] += waves * per_row * rows_per_task + setup + outside_tasks(phase, slots_cal)
        out["tasks"] += tasks
        objects = phase["objects"] / max(phase["tasks"], 1) * tasks
        files_read = max(1.0, parts_in / tasks)
        out["requests"] += int(objects + tasks * (2 + 2 * files_read))
        written = int(phase["bytes_written"] * f)
        out["bytes_written"] += written
        out["bytes_stored"] += written
        per_row_bytes = phase.get("max_table_bytes", 0) / max(phase["max_task_rows"], 1)
        held = TABLE_COPIES * per_row_bytes * rows_per_task
        out["worker_peak_bytes"] = max(out["worker_peak_bytes"], int(baseline + held))
    out["wall_seconds"] += max(record["seconds"] - sum(p["seconds"] for p in record["phases"]), 0.0)
    for key in ("core_seconds", "gpu_seconds", "wall_seconds"):
        out[key] = round(out[key], 2)
    return out, parts_out


def phase_tasks(step: str, phase: dict, parts_in_cal: int, rows: float, parts_in: int, caps: dict) -> int:
    """Tasks of a phase at `rows` rows: one per part, or one per capped group of rows."""
    if step == "ingest":
        return max(1, math.ceil(rows / caps["input"]))
    if step == "download":
        return max(parts_in, math.ceil(rows / caps["download"]))
    if phase["name"] == "map" or (parts_in_cal > 1 and phase["tasks"] == parts_in_cal):
        return parts_in
    return max(1, math.ceil(rows / caps["task_rows"]))


def task_costs(phase: dict) -> tuple[float, float]:
    """(seconds per row, one-time seconds per worker) of a phase. The rate comes from warm
    tasks (not a worker's first) where there are any; what a worker's first task took beyond
    that rate (imports, caches) and set-up (models, matchers) are paid once per worker."""
    work = max(phase["task_seconds"] - phase["setup_seconds"], 0.0)
    warm_rows = phase["rows_in"] - phase.get("cold_rows", 0)
    warm_seconds = work - phase.get("cold_seconds", 0.0)
    if warm_rows > 0 and phase.get("cold_tasks", 0) < phase["tasks"]:
        per_row = max(warm_seconds, 0.0) / warm_rows
    else:
        per_row = work / max(phase["rows_in"], 1)
    cold_extra = max(phase.get("cold_seconds", 0.0) - phase.get("cold_rows", 0) * per_row, 0.0)
    once = phase["setup_seconds"] + cold_extra
    workers = max(phase["workers_set_up"], phase.get("cold_tasks", 0), 1)
    return per_row, (once / workers if once > 0 else 0.0)


def outside_tasks(phase: dict, slots_cal: int) -> float:
    """Calibration wall time of a phase not explained by its tasks (scheduling, markers)."""
    per_row, once = task_costs(phase)
    waves = math.ceil(phase["tasks"] / max(slots_cal, 1))
    per_task = per_row * phase["rows_in"] / max(phase["tasks"], 1)
    return max(phase["seconds"] - waves * per_task - once, 0.0)


def plan_finalize(calibration: Calibration, f: float, cluster: Cluster, slots_cal: int) -> dict:
    """kept/ and ledger/: written in parallel, one task per final part, linear in rows."""
    seconds = calibration.timing["finalize_seconds"]
    wall = seconds * f * slots_cal / cluster.slots(0)
    written = int((calibration.stored["kept"] + calibration.stored["ledger"]) * f)
    return {"name": "finalize", "tasks": 0, "requests": 0, "bytes_written": written, "bytes_stored": written,
            "core_seconds": round(seconds * f * slots_cal, 2), "gpu_seconds": 0.0,
            "wall_seconds": round(max(wall, seconds), 2),
            "driver_peak_bytes": int(calibration.timing["driver_peak_bytes"]), "worker_peak_bytes": 0}


def run_overhead(calibration: Calibration) -> float:
    """Start-up and everything between steps: constant."""
    inside = sum(s["seconds"] for s in calibration.steps) + calibration.timing["finalize_seconds"]
    return max(calibration.timing["seconds"] - inside, 0.0)


def format_plan(result: dict) -> str:
    cluster = result["cluster"]
    lines = [f"plan for {result['rows']:,} input rows on {cluster['nodes']} node(s) x {cluster['cpus']} cpus"
             f" x {cluster['gpus']} gpus (calibrated on {result['calibration']['rows']:,} rows of "
             f"{result['calibration']['run']})",
             f"{'step':>15} {'tasks':>8} {'requests':>10} {'stored':>10} {'core-h':>9} {'gpu-h':>8} "
             f"{'wall':>10} {'worker mem':>11} {'driver mem':>11}"]
    for s in result["steps"] + [{"name": "total", **result["total"], "tasks": "", "requests": "",
                                 "worker_peak_bytes": None}]:
        lines.append(f"{s['name']:>15} {s['tasks']:>8} {s['requests']:>10} {_bytes(s['bytes_stored']):>10} "
                     f"{s['core_seconds'] / 3600:>9.2f} {s['gpu_seconds'] / 3600:>8.2f} "
                     f"{_duration(s['wall_seconds']):>10} {_bytes(s['worker_peak_bytes']):>11} "
                     f"{_bytes(s['driver_peak_bytes']):>11}")
    return "\n".join(lines)


def _bytes(value) -> str:
    if value is None:
        return ""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return ""


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
