"""`curate status RUN_DIR [--json]`: where a run stands, running, stopped or finished, on local
disk or in a bucket. It only reads, so it is safe while a run works in the folder.

What it reads: `config.json`, `steps.json` (the run's steps), the step folders' names (one
listing of `steps/`), each finished step's `stats.json`, and for the unfinished step its
`phases.json` (each phase's task count) and every task's done marker by name (one request per
part of that step, 16 at a time; never a listing of a data folder), the `failed/` records of
the phases (one listing each) and the lease (`_lease/`). From these: steps done, the unfinished
step's parts done and failed, rows in and out and drops by reason so far, rows/s over the last
minute and an ETA from the parts' median time (while a run holds the folder), workers' recent
errors, and whether a run holds the folder now.
"""
from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Optional

from pipeline.core import lease, storage
from pipeline.core.progress import Tally, format_drops, format_duration
from pipeline.core.steps import PHASES_FILE, STEPS_FILE
from pipeline.core.tasks import part_path
from pipeline.errors import UserError

RATE_WINDOW = 60.0   # rows/s over the parts finished in the last this many seconds
MAX_ERRORS = 5       # recent failures shown
READERS = 16         # done markers read at once
STEP_FOLDER = re.compile(r"^(\d+)_(.+)$")
SCHEMA_VERSION = 1


def run_status(run_dir: str, now: Optional[float] = None) -> dict:
    """The status of the run in `run_dir` as a JSON-able dict (`schemas/status.schema.json`)."""
    now = time.time() if now is None else now
    run_dir = storage.absolute(run_dir)
    config = _read(storage.join(run_dir, "config.json"))
    folders = sorted((int(m.group(1)), m.group(2), name) for name in storage.list_names(storage.join(run_dir, "steps"))
                     if (m := STEP_FOLDER.match(name)))
    if config is None and not folders:
        raise UserError(f"{run_dir}: not a run folder (no config.json, no steps/)")
    holder = lease.current(run_dir)
    summary = _read(storage.join(run_dir, "summary.json"))
    live = bool(holder and holder["held"])
    state = "running" if live else "finished" if summary else "stopped" if folders else "not started"
    planned = (_read(storage.join(run_dir, STEPS_FILE)) or {}).get("steps") or []
    steps, errors = [], []
    for index, name, folder in folders:
        step_dir = storage.join(run_dir, "steps", folder)
        if storage.marker_exists(storage.join(step_dir, storage.SUCCESS)):
            step = finished_step(index, name, step_dir)
        else:
            step = unfinished_step(index, name, step_dir, live, now)
        errors.extend(step.pop("_errors"))
        steps.append(step)
    seen = {step["index"] for step in steps}
    steps += [pending_step(index, name) for index, name in enumerate(planned) if index not in seen]
    steps.sort(key=lambda step: step["index"])
    current = next((step for step in steps if step["state"] in ("running", "stopped")), None)
    errors.sort(key=lambda error: -(error.get("time") or 0))
    done = [step for step in steps if step["state"] == "done"]
    return {
        "version": SCHEMA_VERSION,
        "run": run_dir,
        "state": state,
        "time": round(now, 3),
        "lease": _lease_view(holder, now),
        "steps_done": len(done),
        "steps_total": len(planned) or None,
        "input_rows": steps[0]["rows_in"] if steps and steps[0]["state"] == "done" else None,
        "kept_rows": summary.get("kept_rows") if summary else None,
        "current": current["index"] if current else None,
        "steps": steps,
        "errors": errors[:MAX_ERRORS],
    }


def finished_step(index: int, name: str, step_dir: str) -> dict:
    record = _read(storage.join(step_dir, "stats.json")) or {}
    phases = [{"name": p["name"], "parts_total": p["tasks"], "parts_done": p["tasks"], "parts_failed": 0}
              for p in record.get("phases") or []]
    return {"index": index, "name": name, "state": "done",
            "rows_in": record.get("rows_in", 0), "rows_out": record.get("rows_out", 0),
            "dropped": dict(record.get("dropped") or {}), "seconds": record.get("seconds"),
            "parts_done": sum(p["parts_done"] for p in phases), "parts_total": sum(p["parts_total"] for p in phases),
            "parts_failed": 0, "phase": None, "phases": phases, "rows_per_s": None, "eta_seconds": None,
            "_errors": recent_errors(name, step_dir, [p["name"] for p in phases], resolved=True)}


def unfinished_step(index: int, name: str, step_dir: str, live: bool, now: float) -> dict:
    """A step under way (or stopped part-way): its phases so far, from their done markers."""
    phases = (_read(storage.join(step_dir, PHASES_FILE)) or {}).get("phases") or []
    views, groups, errors = [], [], []
    for phase in phases:
        phase_dir = storage.join(step_dir, phase["name"])
        markers = read_markers(phase_dir, int(phase["tasks"]))
        done = [m for m in markers if m is not None]
        failures = read_failures(name, phase["name"], phase_dir, markers)
        errors.extend(failures)
        tally = Tally()
        for marker in done:
            tally.add(marker)
        views.append({"name": phase["name"], "parts_total": int(phase["tasks"]), "parts_done": tally.parts,
                      "parts_failed": sum(1 for f in failures if not f["resolved"]),
                      "rows_in": tally.rows_in, "rows_out": tally.rows_out,
                      "dropped": dict(sorted(tally.dropped.items())),
                      "started": phase.get("started"), "_tally": tally, "_done": done, "_slots": phase.get("slots", 1)})
        if phase.get("continues") and groups:
            groups[-1].extend(done)
        elif phase.get("counted", True):
            groups.append(list(done))
    rows_in = sum(m["rows_in"] - (m.get("deferred") or 0) for m in groups[0]) if groups else 0
    rows_out = sum(m["rows_out"] for m in groups[-1]) if groups else 0
    dropped: dict = {}
    for group in groups:
        for marker in group:
            for reason, count in (marker.get("dropped") or {}).items():
                dropped[reason] = dropped.get(reason, 0) + count
    rate = eta = None
    if views and live:
        last = views[-1]
        rate = rows_per_second(last["_done"], last["started"], now)
        eta = last["_tally"].eta(last["parts_total"], last["_slots"])
    for view in views:
        for key in ("_tally", "_done", "_slots"):
            view.pop(key)
    return {"index": index, "name": name, "state": "running" if live else "stopped",
            "rows_in": rows_in, "rows_out": rows_out, "dropped": dict(sorted(dropped.items())), "seconds": None,
            "parts_done": sum(v["parts_done"] for v in views), "parts_total": sum(v["parts_total"] for v in views),
            "parts_failed": sum(v["parts_failed"] for v in views), "phase": views[-1]["name"] if views else None,
            "phases": views, "rows_per_s": None if rate is None else round(rate, 3),
            "eta_seconds": None if eta is None else round(eta, 1), "_errors": errors}


def pending_step(index: int, name: str) -> dict:
    return {"index": index, "name": name, "state": "pending", "rows_in": 0, "rows_out": 0, "dropped": {},
            "seconds": None, "parts_done": 0, "parts_total": None, "parts_failed": 0, "phase": None,
            "phases": [], "rows_per_s": None, "eta_seconds": None}


def read_markers(phase_dir: str, tasks: int) -> list[Optional[dict]]:
    """Each task's done marker (None where not done), read by name."""
    paths = [part_path(phase_dir, "done", i, ".json") for i in range(tasks)]
    if len(paths) <= 1 or storage.is_local(phase_dir):
        return [_read(p) for p in paths]
    with ThreadPoolExecutor(min(READERS, len(paths))) as pool:
        return list(pool.map(_read, paths))


def read_failures(step: str, phase: str, phase_dir: str, markers: list[Optional[dict]]) -> list[dict]:
    """The failure records of a phase (`failed/part-N.json`, each written whole by a task that
    raised); `resolved` when the part is done since (a retry succeeded)."""
    found = []
    for file in storage.list_names(storage.join(phase_dir, "failed")):
        match = re.match(r"^part-(\d+)\.json$", file)
        record = _read(storage.join(phase_dir, "failed", file)) if match else None
        if not isinstance(record, dict):
            continue
        part = int(match.group(1))
        resolved = part < len(markers) and markers[part] is not None
        found.append(error_view(step, phase, part, record, resolved))
    return found


def recent_errors(step: str, step_dir: str, phases: list[str], resolved: bool) -> list[dict]:
    """The failure records of a finished step's phases (every one resolved: the step is done)."""
    found = []
    for phase in phases:
        folder = storage.join(step_dir, phase, "failed")
        for file in storage.list_names(folder):
            match = re.match(r"^part-(\d+)\.json$", file)
            record = _read(storage.join(folder, file)) if match else None
            if isinstance(record, dict):
                found.append(error_view(step, phase, int(match.group(1)), record, resolved))
    return found


def error_view(step: str, phase: str, part: int, record: dict, resolved: bool) -> dict:
    return {"step": step, "phase": phase, "part": part, "failures": int(record.get("failures", 1)),
            "error": str(record.get("error", "")), "lines": [str(line) for line in record.get("lines") or []],
            "host": record.get("host"), "time": record.get("time"), "resolved": resolved}


def rows_per_second(done: list[dict], started: Optional[float], now: float) -> Optional[float]:
    """Rows reached by the parts finished in the last RATE_WINDOW seconds (since the phase
    began, when that is later), per second."""
    since = now - RATE_WINDOW
    if started:
        since = max(since, float(started))
    span = now - since
    if span <= 0:
        return None
    rows = sum(m["rows_in"] - (m.get("deferred") or 0) for m in done if float(m.get("finished") or 0) >= since)
    return rows / span


def _lease_view(holder: Optional[dict], now: float) -> Optional[dict]:
    if holder is None:
        return None
    heartbeat = holder.get("heartbeat")
    return {"held": bool(holder["held"]), "host": holder.get("host"), "pid": holder.get("pid"),
            "since": holder.get("since"), "heartbeat": heartbeat,
            "heartbeat_age": round(now - float(heartbeat), 1) if heartbeat is not None else None}


def _read(path: str):
    try:
        return storage.read_marker(path)
    except (ValueError, UnicodeDecodeError):   # a local file being replaced: read as not there
        return None


# --- text ------------------------------------------------------------------------------------

def format_status(status: dict) -> str:
    """The status as lines for a person."""
    lines = [f"run {status['run']}: {status['state']}{_holder_text(status['lease'], status['time'])}"]
    total = status["steps_total"]
    lines.append(f"steps: {status['steps_done']} of {total if total is not None else '?'} done"
                 + (f", kept {status['kept_rows']:,} of {status['input_rows']:,} rows"
                    if status["kept_rows"] is not None and status["input_rows"] is not None else ""))
    width = max((len(step["name"]) for step in status["steps"]), default=0)
    for step in status["steps"]:
        lines.append(f"  {step['index']:02d} {step['name']:<{width}}  {_step_text(step)}")
        if step["state"] in ("running", "stopped"):
            drops = sorted(step["dropped"].items(), key=lambda rc: (-rc[1], rc[0]))
            lines.append(f"     {'':<{width}}  drops so far: {format_drops(drops)}")
    if status["errors"]:
        lines.append("recent errors:")
        for error in status["errors"]:
            when = f", {format_duration(status['time'] - error['time'])} ago" if error.get("time") else ""
            fixed = ", retried: done since" if error["resolved"] else ""
            lines.append(f"  {error['step']}/{error['phase']} part {error['part']} ({error['failures']} failed "
                         f"attempt(s), host {error.get('host') or '?'}{when}{fixed}): {error['error']}")
            lines.extend(f"      {line}" for line in error["lines"][-4:])
    return "\n".join(lines)


def _step_text(step: dict) -> str:
    if step["state"] == "pending":
        return "pending"
    if step["state"] == "done":
        drops = format_drops(sorted(step["dropped"].items(), key=lambda rc: (-rc[1], rc[0])))
        seconds = f" {step['seconds']:.1f}s" if step.get("seconds") is not None else ""
        return f"done     {step['rows_in']:,} -> {step['rows_out']:,} rows ({drops}){seconds}"
    phase = next((p for p in step["phases"] if p["name"] == step["phase"]), None)
    if phase is None:
        return f"{step['state']:<8} starting"
    failed = f", {phase['parts_failed']} failed" if phase["parts_failed"] else ""
    rate = "" if step["rows_per_s"] is None else f" | {step['rows_per_s']:,.1f} rows/s"
    eta = "" if step["state"] != "running" else f" | eta {format_duration(step['eta_seconds'])}"
    return (f"{step['state']:<8} {phase['name']}: {phase['parts_done']:,}/{phase['parts_total']:,} parts{failed}"
            f" | rows in {step['rows_in']:,}, out {step['rows_out']:,}{rate}{eta}")


def _holder_text(holder: Optional[dict], now: float) -> str:
    if not holder:
        return " (no run holds the folder)"
    since = holder.get("since")
    when = datetime.fromtimestamp(since, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if since else "?"
    age = holder.get("heartbeat_age")
    beat = f", heartbeat {format_duration(age)} ago" if age is not None else ""
    if holder["held"]:
        return f" (held by host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, since {when}{beat})"
    return f" (a dead run's lease: host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, since {when}{beat})"
