"""`curate status` and the live report on a step stopped by a failed task, resumed, and held by
a live run: parts done and failed, rows and drops so far, the failed task's last lines, the
lease; `--json` valid against schemas/status.schema.json."""
import json
from pathlib import Path

import jsonschema
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipeline.cli import main as curate
from pipeline.core import lease, parts
from pipeline.core.stage import Stage, with_reason
from pipeline.core.steps import Step, execute_step
from pipeline.engines.local import LocalEngine
from pipeline.report import write_report
from pipeline.status import format_status, run_status

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "schemas" / "status.schema.json").read_text())


def valid(status: dict) -> dict:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    jsonschema.Draft202012Validator(SCHEMA).validate(status)
    return status


class DropOdd(Stage):
    """Drops odd uids (`odd`); with settings "fail", a part holding uid 25 raises."""
    name = "drop_odd"
    inputs = ("uid",)

    def process(self, table):
        ids = pc.cast(table["uid"], pa.int64()).to_pylist()
        if self.settings == "fail" and 25 in ids:
            raise RuntimeError("boom: uid 25 is cursed")
        return with_reason(table, pa.array(["odd" if i % 2 else None for i in ids], pa.string()))


def input_parts(folder: Path, count: int, rows: int) -> list:
    refs = []
    for n in range(count):
        ids = range(n * rows, (n + 1) * rows)
        path = folder / f"in-{n}.parquet"
        pq.write_table(pa.table({"uid": [str(i) for i in ids], "url": [f"http://x/{i}" for i in ids]}), path)
        refs.append(parts.PartRef(str(path)))
    return refs


def test_a_failed_task_stops_the_step_and_status_shows_it(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text("{}")
    (run_dir / "steps.json").write_text(json.dumps({"steps": ["ingest", "drop_odd", "shard"]}))
    refs = input_parts(tmp_path, 5, 10)
    with pytest.raises(RuntimeError, match="cursed"), LocalEngine(processes=1) as engine:
        execute_step(Step(DropOdd, "fail"), engine, str(run_dir), 1, 0, refs)

    status = valid(run_status(str(run_dir)))
    assert status["state"] == "stopped" and status["lease"] is None
    assert (status["steps_done"], status["steps_total"], status["current"]) == (0, 3, 1)
    assert [(s["index"], s["name"], s["state"]) for s in status["steps"]] == [
        (0, "ingest", "pending"), (1, "drop_odd", "stopped"), (2, "shard", "pending")]
    step = status["steps"][1]
    assert (step["phase"], step["parts_done"], step["parts_total"], step["parts_failed"]) == ("map", 2, 5, 1)
    assert (step["rows_in"], step["rows_out"], step["dropped"]) == (20, 10, {"odd": 10})
    assert step["rows_per_s"] is None and step["eta_seconds"] is None   # nobody runs it
    [error] = status["errors"]
    assert (error["step"], error["phase"], error["part"], error["failures"], error["resolved"]) == (
        "drop_odd", "map", 2, 1, False)
    assert error["error"] == "RuntimeError: boom: uid 25 is cursed"
    assert error["lines"][-1] == error["error"] and any("process" in line for line in error["lines"])

    text = format_status(status)
    assert f"run {run_dir}: stopped (no run holds the folder)" in text
    assert "steps: 0 of 3 done" in text
    assert "01 drop_odd  stopped  map: 2/5 parts, 1 failed | rows in 20, out 10" in text
    assert "drops so far: odd 10" in text
    assert "drop_odd/map part 2 (1 failed attempt(s)" in text and "RuntimeError: boom" in text

    assert curate(["status", str(run_dir), "--json"]) == 0
    assert valid(json.loads(capsys.readouterr().out))["steps"][1]["parts_done"] == 2

    # the report of the unfinished run: what is done so far, marked partial
    html = Path(write_report(run_dir)).read_text()
    assert 'id="partial"' in html and "Partial report" in html and "drop_odd (partial)" in html
    assert "2 of 5 parts done" in html


def test_a_live_run_gets_rates_and_eta_and_a_finished_step_its_totals(tmp_path):
    run_dir = tmp_path / "run"
    refs = input_parts(tmp_path, 6, 10)
    with pytest.raises(RuntimeError), LocalEngine(processes=1) as engine:
        execute_step(Step(DropOdd, "fail"), engine, str(run_dir), 0, 0, refs)
    with lease.held(str(run_dir)) as record:   # a run holds the folder: it is running
        status = valid(run_status(str(run_dir)))
        assert status["state"] == "running"
        assert status["lease"]["held"] and status["lease"]["pid"] == record["pid"]
        step = status["steps"][0]
        assert step["state"] == "running" and step["parts_done"] == 2
        assert step["rows_per_s"] > 0 and step["eta_seconds"] is not None
        assert "held by host" in format_status(status)

    with LocalEngine(processes=1) as engine:   # resumed: the cursed part passes now
        record = execute_step(Step(DropOdd, "ok"), engine, str(run_dir), 0, 0, refs)
    status = valid(run_status(str(run_dir)))
    assert status["state"] == "stopped", "no summary.json: the run never ended"
    step = status["steps"][0]
    assert step["state"] == "done" and (step["parts_done"], step["parts_total"]) == (6, 6)
    assert (step["rows_in"], step["rows_out"], step["dropped"]) == (record["rows_in"], record["rows_out"],
                                                                    record["dropped"]) == (60, 30, {"odd": 30})
    assert [(e["part"], e["resolved"]) for e in status["errors"]] == [(2, True)]


def test_not_a_run_folder_is_one_line(tmp_path, capsys):
    assert curate(["status", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"curate: error: {tmp_path}: not a run folder (no config.json, no steps/)"
