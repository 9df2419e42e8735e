"""Progress lines in a batch job's log on Ray and Spark: a run under `ray job submit` and one under
`spark-submit` (standard error is a log, not a terminal) print a line for the download step
every `progress_interval` (0.2 s here); the numbers never go down and end at the step's
totals, and run.log holds the same lines."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.core import storage
from pipeline.testing.fakeweb import FakeWeb
from tests.engines.test_ray_cluster import free_port, ray_cli
from tests.integration.test_watch_run import TASKS, assert_progress_ends_at_the_step, progress_of
from tests.support import ROOT, assert_run_invariants, slow_image_config

pytestmark = pytest.mark.slow  # a Ray cluster, Spark, whole image pipelines

BIN = Path(sys.executable).parent
DOWNLOAD = "steps/01_download"


@pytest.fixture(scope="module")
def web():
    with FakeWeb() as web:
        yield web


@pytest.fixture
def ray_head():
    """A one-node Ray cluster (2 CPUs) with its job server."""
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    for key in ("RAY_ADDRESS", *storage.ENV_KEYS):
        env.pop(key, None)
    port, dashboard = free_port(), free_port()
    ray_cli("start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
            "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
            "--disable-usage-stats", env=env)
    try:
        yield {"env": env, "dashboard": f"http://127.0.0.1:{dashboard}"}
    finally:
        subprocess.run([str(BIN / "ray"), "stop", "--force"], env=env, capture_output=True, timeout=120)


def check_progress(log: str, run_dir: Path) -> None:
    stats = json.loads((run_dir / DOWNLOAD / "stats.json").read_text())
    lines = progress_of(log, "download/map")
    assert_progress_ends_at_the_step(lines, stats)
    assert lines[0]["parts"] < TASKS, "a line while the step ran, not only at its end"
    logged = progress_of((run_dir / "run.log").read_text(), "download/map")
    assert logged[-1] == lines[-1] and len(logged) == len(lines), "run.log gets the same lines"
    assert_run_invariants(run_dir)


def test_ray_job_submit_logs_progress_lines(web, ray_head, tmp_path):
    run_dir = tmp_path / "run"
    config = slow_image_config(web, tmp_path, run_dir, "ray", progress_interval=0.2)
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(config))
    runtime_env = json.dumps({"excludes": [".venv", ".git", "runs", "bench/results"]})
    out = ray_cli("job", "submit", f"--address={ray_head['dashboard']}", f"--working-dir={ROOT}",
                  f"--runtime-env-json={runtime_env}", "--",
                  sys.executable, "jobs/curate.py", "--config", str(tmp_path / "job.yaml"),
                  env=ray_head["env"], timeout=400, attempts=20)
    assert "succeeded" in out.lower(), out[-2000:]
    assert "running on the Ray cluster (1 node(s), 2 CPUs)" in out, out[-2000:]
    check_progress(out, run_dir)


def test_spark_submit_logs_progress_lines(web, tmp_path):
    run_dir = tmp_path / "run"
    config = slow_image_config(web, tmp_path, run_dir, "spark", progress_interval=0.2)
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(config))
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    result = subprocess.run([str(BIN / "spark-submit"), "--master", "local[2]", "--conf", "spark.ui.enabled=false",
                             str(ROOT / "jobs" / "curate.py"), "--config", str(tmp_path / "job.yaml")],
                            env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    check_progress(result.stdout, run_dir)   # spark-submit relays its Python driver's stderr to its stdout
