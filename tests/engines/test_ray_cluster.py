"""A real two-node Ray cluster on this machine; the text pipeline goes in with `ray job submit`,
reading its input from and writing its run folder to a bucket (moto_server on loopback)."""
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from tests.support import ROOT, kept_uids, ledger_rows, run, text_config, write_sample

from pipeline.core import storage


BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_cli(*args, env, timeout=180, attempts=1):
    """Run the `ray` CLI; `attempts` > 1 retries while the cluster's job agent is starting."""
    for attempt in range(attempts):
        result = subprocess.run([str(BIN / "ray"), *args], env=env, capture_output=True, text=True,
                                timeout=timeout, start_new_session=True)   # each node its own group
        starting = "No available agent to submit job" in result.stdout + result.stderr
        if result.returncode == 0 or not starting or attempt == attempts - 1:
            break
        time.sleep(3)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


@pytest.fixture
def two_node_cluster(tmp_path):
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    for key in ("RAY_ADDRESS", *storage.ENV_KEYS):   # the nodes know no bucket of their own
        env.pop(key, None)
    port, dashboard = free_port(), free_port()
    ray_cli("start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
            "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
            "--disable-usage-stats", env=env)
    try:
        ray_cli("start", f"--address=127.0.0.1:{port}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                '--resources={"second_node": 1}', "--disable-usage-stats", env=env)
        yield {"env": env, "gcs": f"127.0.0.1:{port}", "dashboard": f"http://127.0.0.1:{dashboard}"}
    finally:
        subprocess.run([str(BIN / "ray"), "stop", "--force"], env=env, capture_output=True, timeout=120)


def test_job_submit_on_two_nodes_writes_to_a_bucket_and_matches_local(tmp_path, two_node_cluster, object_store):
    sample = write_sample(tmp_path / "s.parquet", rows=3000)
    local = text_config(sample, tmp_path / "local")
    run(local)

    store = object_store
    store.create_bucket("runs")
    store.put("runs", "in/s.parquet", sample.read_bytes())
    # the endpoint and keys reach the job only through the config: the workers on the
    # second node get them from the driver
    options = {"s3": {"key": "testing", "secret": "testing",
                      "client_kwargs": {"endpoint_url": store.endpoint, "region_name": "us-east-1"}}}
    config = text_config("s3://runs/in/s.parquet", "s3://runs/cluster", engine="ray",
                         storage_options=options)
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump(config))
    _submit(tmp_path, two_node_cluster)
    storage.configure(options)
    try:
        assert kept_uids("s3://runs/cluster") == kept_uids(tmp_path / "local")
        assert ledger_rows("s3://runs/cluster") == ledger_rows(tmp_path / "local")
    finally:
        storage.configure({})
    written = store.list_keys("runs", "cluster/")
    assert "cluster/_SUCCESS" not in written and "cluster/summary.json" in written
    assert not (tmp_path / "cluster").exists()


def _submit(tmp_path, two_node_cluster):
    env = two_node_cluster["env"]
    nodes = json.loads(ray_cli("list", "nodes", "--format=json", f"--address={two_node_cluster['gcs']}", env=env))
    assert sum(1 for n in nodes if n["state"] == "ALIVE") == 2
    runtime_env = json.dumps({"excludes": [".venv", ".git", "runs", "bench/results"]})
    out = ray_cli("job", "submit", f"--address={two_node_cluster['dashboard']}", f"--working-dir={ROOT}",
                  f"--runtime-env-json={runtime_env}", "--",
                  sys.executable, "jobs/curate.py", "--config", str(tmp_path / "cluster.yaml"),
                  "--engine", "ray", env=env, timeout=400, attempts=20)
    assert "succeeded" in out.lower(), out[-2000:]
    assert "running on the Ray cluster (2 node(s), 2 CPUs)" in out, out[-2000:]


def _second_node_raylet() -> tuple[int, int]:
    """The pid and process group of the second node's raylet (it has the `second_node` resource)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "raylet" in cmdline.split(" ")[0] and "second_node" in cmdline:
            group = os.getpgid(int(pid))
            assert group != os.getpgid(0), "the node must not share the test's process group"
            return int(pid), group
    raise AssertionError("no raylet of the second node found")


def test_losing_a_node_during_download_changes_nothing(tmp_path, two_node_cluster):
    """SIGKILL the second node (its raylet's process group) a quarter into the download: Ray
    retries its tasks on the head, and the run ends as an undisturbed one does."""
    import signal

    from pipeline.testing.fakeweb import FakeWeb
    from tests.support import assert_same_result, slow_image_config

    env = two_node_cluster["env"]
    with FakeWeb() as web:
        run(slow_image_config(web, tmp_path, tmp_path / "local", "local"))
        (tmp_path / "cluster.yaml").write_text(yaml.safe_dump(slow_image_config(web, tmp_path, tmp_path / "cluster", "ray")))
        runtime_env = json.dumps({"excludes": [".venv", ".git", "runs", "bench/results"]})
        out = ray_cli("job", "submit", "--no-wait", f"--address={two_node_cluster['dashboard']}",
                      f"--working-dir={ROOT}", f"--runtime-env-json={runtime_env}", "--",
                      sys.executable, "jobs/curate.py", "--config", str(tmp_path / "cluster.yaml"),
                      env=env, timeout=400, attempts=20)
        job = re.search(r"raysubmit_[A-Za-z0-9]+", out).group(0)
        done = tmp_path / "cluster" / "steps" / "01_download" / "map" / "done"
        deadline = time.time() + 300
        while time.time() < deadline and len(list(done.glob("*.json"))) < 3:
            time.sleep(0.1)
        finished = {p: p.stat().st_mtime_ns for p in done.glob("*.json")}
        assert 3 <= len(finished) < 12, "the node must be lost part-way through the download"
        raylet, group = _second_node_raylet()
        os.killpg(group, signal.SIGKILL)
        time.sleep(1)
        assert not Path(f"/proc/{raylet}").exists() or "Z" in Path(f"/proc/{raylet}/stat").read_text().split()[2]
        while time.time() < deadline:
            status = ray_cli("job", "status", f"--address={two_node_cluster['dashboard']}", job, env=env).upper()
            if any(s in status for s in ("SUCCEEDED", "FAILED", "STOPPED")):
                break
            time.sleep(2)
        logs = ray_cli("job", "logs", f"--address={two_node_cluster['dashboard']}", job, env=env)
        for _ in range(60):   # the head notices a dead node after its health checks fail
            nodes = json.loads(ray_cli("list", "nodes", "--format=json",
                                       f"--address={two_node_cluster['gcs']}", env=env))
            if any(n["state"] == "DEAD" for n in nodes):
                break
            time.sleep(1)
    assert "SUCCEEDED" in status, status + logs[-3000:]
    assert sorted(n["state"] for n in nodes) == ["ALIVE", "DEAD"], "the second node was lost"
    assert "running on the Ray cluster (2 node(s), 2 CPUs)" in logs
    assert_same_result(tmp_path / "cluster", tmp_path / "local")
    for path, mtime in finished.items():   # parts done before the loss were not done again
        assert path.stat().st_mtime_ns == mtime, path
