"""Watching a run: `curate status` on a run that is going, on one stopped midway by SIGKILL, on a
finished one, on local disk and in a bucket (the test object store); `--json` valid against
schemas/status.schema.json; the live report of an unfinished run; the progress lines a batch
job's log (stderr not a terminal) and run.log get on the local engine.

The runs download 96 images served 150 ms apart in 12 tasks (`slow_image_config`), with
`progress_interval: 0.2`. Waits are on readiness (done markers), never on a clock."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest
import yaml

from pipeline.core import storage
from pipeline.core.progress import parse_line
from pipeline.status import run_status
from pipeline.testing.fakeweb import FakeWeb
from tests.support import ROOT, read_summary, slow_image_config

pytestmark = pytest.mark.slow   # whole image pipelines, in processes of their own

SCHEMA = json.loads((ROOT / "schemas" / "status.schema.json").read_text())
DOWNLOAD = "steps/01_download"
TASKS = 12          # download tasks of slow_image_config
STARTUP_S = 180.0   # the bound on a run reaching a number of finished parts (a hang, not a timing)


@pytest.fixture(scope="module")
def web():
    with FakeWeb() as web:
        yield web


def valid(status: dict) -> dict:
    jsonschema.Draft202012Validator(SCHEMA).validate(status)
    return status


def curate(*args, env=None, **popen) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], env=env, capture_output=True, text=True,
                          timeout=600, **popen)


def status_json(run_dir, env=None) -> dict:
    result = curate("status", str(run_dir), "--json", env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    return valid(json.loads(result.stdout))


def start(config_path: Path, log: Path, env=None) -> subprocess.Popen:
    """`curate run CONFIG` in a process group of its own, stderr (not a terminal) to `log`."""
    with open(log, "w") as stream:
        return subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(config_path)], env=env,
                                start_new_session=True, stdout=subprocess.DEVNULL, stderr=stream)


def wait_until(proc: subprocess.Popen, ready, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_S
    while not ready():
        assert proc.poll() is None, "the run ended before it could be watched: " + log.read_text()[-2000:]
        assert time.monotonic() < deadline, "no progress: " + log.read_text()[-2000:]
        time.sleep(0.05)


def kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def totals(markers: list[dict]) -> tuple[int, int, dict]:
    """Rows reached, rows out and drops by reason of done markers."""
    dropped: dict = {}
    for marker in markers:
        for reason, count in marker["dropped"].items():
            dropped[reason] = dropped.get(reason, 0) + count
    return (sum(m["rows_in"] - m["deferred"] for m in markers), sum(m["rows_out"] for m in markers),
            dict(sorted(dropped.items())))


def progress_of(text: str, label: str) -> list[dict]:
    return [found for line in text.splitlines() if (found := parse_line(line)) and found["label"] == label]


def assert_progress_ends_at_the_step(lines: list[dict], stats: dict) -> None:
    """Lines of the download's map phase: numbers that never go down and end at the step's
    totals (its only phase: no task reached its deadline)."""
    assert lines, "no progress line for the download step"
    assert [p["name"] for p in stats["phases"]] == ["map"]
    for before, after in zip(lines, lines[1:]):
        assert all(after[k] >= before[k] for k in ("parts", "rows_in", "rows_out")), (before, after)
        assert all(after["drops"].get(reason, 0) >= count for reason, count in before["drops"].items()
                   if reason in after["drops"])
    last = lines[-1]
    assert (last["parts"], last["total"]) == (TASKS, TASKS)
    assert (last["rows_in"], last["rows_out"]) == (stats["rows_in"], stats["rows_out"])
    assert all(stats["dropped"][reason] == count for reason, count in last["drops"].items())
    assert len(last["drops"]) == min(3, len(stats["dropped"])) and last["eta"] == "0s"


def assert_finished(status: dict, run_dir) -> None:
    summary = json.loads(storage.read_text(storage.join(str(run_dir), "summary.json")))
    assert status["state"] == "finished" and status["lease"] is None and status["current"] is None
    assert status["steps_done"] == status["steps_total"] == len(summary["stages"])
    assert (status["input_rows"], status["kept_rows"]) == (summary["input_rows"], summary["kept_rows"])
    assert [(s["name"], s["rows_in"], s["rows_out"], s["dropped"]) for s in status["steps"]] == [
        (s["name"], s["rows_in"], s["rows_out"], s["dropped"]) for s in summary["stages"]]
    download = status["steps"][1]
    assert (download["state"], download["parts_done"], download["parts_total"]) == ("done", TASKS, TASKS)


def test_status_while_running_after_sigkill_and_finished_with_progress_in_the_log(web, tmp_path):
    run_dir = tmp_path / "run"
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(slow_image_config(web, tmp_path, run_dir, "local", progress_interval=0.2)))
    done = run_dir / DOWNLOAD / "map" / "done"
    proc = start(config_path, tmp_path / "first.log")
    try:
        wait_until(proc, lambda: len(list(done.glob("*.json"))) >= 2, tmp_path / "first.log")
        going = valid(run_status(str(run_dir)))   # read while the run works in the folder
        wait_until(proc, lambda: len(list(done.glob("*.json"))) >= 4, tmp_path / "first.log")
    finally:
        kill(proc)
    assert going["state"] == "running" and going["lease"]["held"] and going["lease"]["pid"] == proc.pid
    step = going["steps"][1]
    assert (going["current"], step["name"], step["state"], step["phase"]) == (1, "download", "running", "map")
    assert 2 <= step["parts_done"] <= TASKS and step["parts_total"] == TASKS and step["rows_per_s"] is not None
    assert going["steps"][0]["state"] == "done" and going["steps_total"] == 4

    markers = [json.loads(p.read_text()) for p in sorted(done.glob("*.json"))]
    assert 4 <= len(markers) < TASKS, "killed part-way through the download"
    stopped = status_json(run_dir)
    assert stopped["state"] == "stopped" and stopped["lease"]["held"] is False, "a dead run's lease"
    step = stopped["steps"][1]
    assert (step["state"], step["phase"], step["parts_done"], step["parts_total"]) == ("stopped", "map",
                                                                                      len(markers), TASKS)
    assert (step["rows_in"], step["rows_out"], step["dropped"]) == totals(markers)
    assert step["rows_per_s"] is None and step["eta_seconds"] is None and step["parts_failed"] == 0
    assert [s["state"] for s in stopped["steps"]] == ["done", "stopped", "pending", "pending"]
    text = curate("status", str(run_dir)).stdout
    assert f"run {run_dir}: stopped (a dead run's lease: host " in text
    assert f"download     stopped  map: {len(markers)}/{TASKS} parts | rows in {step['rows_in']:,}" in text

    # the live report: the steps so far, the download's funnel from its finished parts
    assert curate("report", str(run_dir)).returncode == 0
    html = (run_dir / "report.html").read_text()
    assert 'id="partial"' in html and "download (partial)" in html
    assert f"{len(markers)} of {TASKS} parts done" in html

    # the rerun, stderr not a terminal (a batch job's log): progress lines, the same in run.log
    rerun = curate("run", str(config_path))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    stats = json.loads((run_dir / DOWNLOAD / "stats.json").read_text())
    lines = progress_of(rerun.stderr, "download/map")
    assert lines[0]["parts"] >= len(markers), "the parts done before count from the start"
    assert_progress_ends_at_the_step(lines, stats)
    logged = (run_dir / "run.log").read_text()
    printed = [line for line in rerun.stderr.splitlines() if line.startswith("progress download/map:")]
    assert all(f"INFO pipeline.progress: {line}" in logged for line in printed)

    assert_finished(status_json(run_dir), run_dir)
    assert "finished (no run holds the folder)" in curate("status", str(run_dir)).stdout
    report = curate("report", str(run_dir))
    assert report.returncode == 0 and 'id="partial"' not in (run_dir / "report.html").read_text()
    assert read_summary(run_dir)["kept_rows"] > 0


def test_status_of_a_run_in_a_bucket(web, object_store, tmp_path, monkeypatch):
    bucket, prefix = "watch-runs", "run/"
    object_store.create_bucket(bucket)
    for key, value in object_store.env().items():
        monkeypatch.setenv(key, value)
    storage.configure({})
    env = dict(os.environ)
    run_dir = f"s3://{bucket}/run"
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(slow_image_config(web, tmp_path, run_dir, "local", progress_interval=0.2)))

    def done_keys() -> list[str]:
        return [k for k in object_store.list_keys(bucket, prefix + DOWNLOAD + "/map/done/") if k.endswith(".json")]

    proc = start(config_path, tmp_path / "first.log", env=env)
    try:
        wait_until(proc, lambda: len(done_keys()) >= 3, tmp_path / "first.log")
    finally:
        kill(proc)
    markers = [json.loads(object_store.get(bucket, key)) for key in done_keys()]
    assert 3 <= len(markers) < TASKS, "killed part-way through the download"
    object_store.reset_counts()
    stopped = status_json(run_dir, env=env)
    counts = object_store.counts()
    assert counts["PUT"] == counts["DELETE"] == counts["POST"] == 0, "status only reads"
    # listings: steps/, _lease/ and the failure records of the two phases so far (s3fs lists a
    # missing prefix twice); never a data folder: the done markers are read by name
    assert counts["LIST"] <= 6 and counts["GET"] <= 30, counts
    assert stopped["state"] == "stopped" and stopped["lease"]["held"] is False
    step = stopped["steps"][1]
    assert (step["name"], step["state"], step["parts_done"], step["parts_total"]) == ("download", "stopped",
                                                                                      len(markers), TASKS)
    assert (step["rows_in"], step["rows_out"], step["dropped"]) == totals(markers)

    rerun = curate("run", str(config_path), env=env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert_finished(status_json(run_dir, env=env), run_dir)
