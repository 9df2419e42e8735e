"""`curate plan`: calibrate on a small run, predict a 4x larger one, run it, compare."""
import json

import pytest
import yaml

from pipeline.cli import main as curate
from pipeline.plan import folder_bytes
from tests.support import run, text_config, write_sample

SMALL, LARGE = 30_000, 120_000
STEP_KEYS = {"name", "tasks", "requests", "bytes_written", "bytes_stored", "core_seconds", "gpu_seconds",
             "wall_seconds", "driver_peak_bytes", "worker_peak_bytes"}


def config(sample, output):
    return text_config(sample, output, input={"path": [str(sample)], "part_rows": 1000})


def measured(run_dir):
    """Core seconds (the tasks' time), wall seconds and bytes stored of a finished run."""
    summary = json.loads((run_dir / "summary.json").read_text())
    core = 0.0
    for index, stage in enumerate(summary["stages"]):
        record = json.loads((run_dir / "steps" / f"{index:02d}_{stage['name']}" / "stats.json").read_text())
        core += sum(p["task_seconds"] for p in record["phases"])
    wall = json.loads((run_dir / "timing.json").read_text())["seconds"]
    return core, wall, folder_bytes(str(run_dir))


def plan_json(capsys, *args):
    capsys.readouterr()
    assert curate(["plan", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def within(predicted, actual, tolerance=0.30):
    return abs(predicted - actual) <= tolerance * actual


def calibrate_and_run(tmp_path, capsys, attempt: int):
    """A calibration run, the plan for 4x its rows, and the 4x run: (plan, core, wall, stored)."""
    folder = tmp_path / f"attempt-{attempt}"
    folder.mkdir()
    run(config(write_sample(folder / "small.parquet", rows=SMALL), folder / "calibration"))
    large = write_sample(folder / "large.parquet", rows=LARGE, seed=1)
    (folder / "large.yaml").write_text(yaml.safe_dump(config(large, folder / "large")))
    plan = plan_json(capsys, str(folder / "large.yaml"), "--rows", str(LARGE),
                     "--calibrate", str(folder / "calibration"))
    run(config(large, folder / "large"))
    return (plan, *measured(folder / "large"))


@pytest.mark.slow
def test_plan_predicts_a_4x_run_within_30_percent(tmp_path, capsys):
    # Seconds are measured on a shared machine: when a burst of other load lands on one of
    # the two runs only, the pair is measured again, up to four times (bytes must hold every
    # time). A planner that is off fails all four; load that comes and goes does not.
    for attempt in range(4):
        plan, core, wall, stored = calibrate_and_run(tmp_path, capsys, attempt)
        assert within(plan["total"]["bytes_stored"], stored), (plan["total"]["bytes_stored"], stored)
        predicted_core = sum(s["core_seconds"] for s in plan["steps"] if s["name"] != "finalize")
        if within(predicted_core, core) and within(plan["total"]["wall_seconds"], wall):
            break
    assert plan["rows"] == LARGE and [s["name"] for s in plan["steps"]] == [
        "ingest", "dedup", "caption_filter", "language", "metadata", "finalize"]
    assert all(STEP_KEYS <= set(s) for s in plan["steps"])
    assert {"core_seconds", "gpu_seconds", "wall_seconds", "bytes_stored"} <= set(plan["total"])
    assert plan["steps"][0]["tasks"] == LARGE // 1000
    assert within(predicted_core, core), (predicted_core, core, [(s["name"], s["core_seconds"]) for s in plan["steps"]])
    assert within(plan["total"]["wall_seconds"], wall), (plan["total"]["wall_seconds"], wall)
    tmp_path = tmp_path / f"attempt-{attempt}"   # the pair that was measured

    # the same rows on a bigger cluster: the same work, in less time
    cluster = plan_json(capsys, str(tmp_path / "large.yaml"), "--rows", str(400_000_000),
                        "--calibrate", str(tmp_path / "calibration"), "--cluster", "nodes=8,cpus=32")
    alone = plan_json(capsys, str(tmp_path / "large.yaml"), "--rows", str(400_000_000),
                      "--calibrate", str(tmp_path / "calibration"))
    assert cluster["total"]["core_seconds"] == pytest.approx(alone["total"]["core_seconds"], rel=0.05)
    assert cluster["total"]["wall_seconds"] < alone["total"]["wall_seconds"] / 20
    assert cluster["total"]["driver_peak_bytes"] == plan["total"]["driver_peak_bytes"]
    # ... and that holds: 4x the rows did not grow the driver like the data (counts, not rows)
    driver = json.loads((tmp_path / "large" / "timing.json").read_text())["driver_peak_bytes"]
    assert driver < 1.5 * plan["total"]["driver_peak_bytes"], (driver, plan["total"]["driver_peak_bytes"])


def test_plan_errors_are_one_line(tmp_path, capsys):
    sample = write_sample(tmp_path / "s.parquet", rows=2000)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config(sample, tmp_path / "out")))
    assert curate(["plan", str(tmp_path / "c.yaml"), "--rows", "10", "--calibrate", str(tmp_path / "none")]) == 2
    assert "no summary.json" in capsys.readouterr().err
    other = config(sample, tmp_path / "other")
    del other["metadata"]
    run(other)
    assert curate(["plan", str(tmp_path / "c.yaml"), "--rows", "10", "--calibrate", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "calibration ran" in err[0], err
    assert curate(["plan", str(tmp_path / "c.yaml"), "--rows", "10", "--calibrate", str(tmp_path / "other"),
                   "--cluster", "racks=2"]) == 2
