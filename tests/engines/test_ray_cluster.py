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

from pipeline.core import storage
from tests.support import ROOT, kept_uids, ledger_rows, run, text_config, write_sample

pytestmark = pytest.mark.slow  # a two-node Ray cluster


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


def _descendants(root: int) -> list[int]:
    """The pids of every process under `root`."""
    children: dict[int, list[int]] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(pid))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in "ZX"
    except OSError:
        return True


def _kill_second_node() -> None:
    """SIGKILL the second node at once: its raylet's process group, and the workers the raylet
    started (each in a session of its own: they would outlive it by seconds, finishing parts)."""
    import signal

    raylet, group = _second_node_raylet()
    workers = _descendants(raylet)
    assert workers, "the second node runs workers"
    os.killpg(group, signal.SIGKILL)
    for pid in workers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    time.sleep(1)
    assert all(_gone(pid) for pid in [raylet, *workers])


def _lose_the_second_node(tmp_path, two_node_cluster, config: dict, done: Path, parts: int, total: int,
                          before: Path | None = None) -> str:
    """Submit `config` to the two-node cluster and kill the second node (`_kill_second_node`)
    once `parts` of a step's `total` parts are done (`done` holds their done files) and
    `before` (a file) exists; the job must still succeed, the head must see the node dead, and
    the parts finished before the loss must not be done again. Returns the job's logs."""
    env, dashboard = two_node_cluster["env"], two_node_cluster["dashboard"]
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump(config))
    runtime_env = json.dumps({"excludes": [".venv", ".git", "runs", "bench/results"]})
    out = ray_cli("job", "submit", "--no-wait", f"--address={dashboard}",
                  f"--working-dir={ROOT}", f"--runtime-env-json={runtime_env}", "--",
                  sys.executable, "jobs/curate.py", "--config", str(tmp_path / "cluster.yaml"),
                  env=env, timeout=400, attempts=20)
    job = re.search(r"raysubmit_[A-Za-z0-9]+", out).group(0)
    deadline = time.time() + 300
    while time.time() < deadline and len(list(done.glob("*.json"))) < parts:
        time.sleep(0.05)
    finished = {p: p.stat().st_mtime_ns for p in done.glob("*.json")}
    assert before is None or before.exists(), f"the node must be lost after {before} is written"
    assert parts <= len(finished) < total, f"the node must be lost part-way ({len(finished)} of {total} parts)"
    _kill_second_node()
    while time.time() < deadline:
        status = ray_cli("job", "status", f"--address={dashboard}", job, env=env).upper()
        if any(s in status for s in ("SUCCEEDED", "FAILED", "STOPPED")):
            break
        time.sleep(2)
    logs = ray_cli("job", "logs", f"--address={dashboard}", job, env=env)
    for _ in range(60):   # the head notices a dead node after its health checks fail
        nodes = json.loads(ray_cli("list", "nodes", "--format=json", f"--address={two_node_cluster['gcs']}", env=env))
        if any(n["state"] == "DEAD" for n in nodes):
            break
        time.sleep(1)
    assert "SUCCEEDED" in status, status + logs[-3000:]
    assert sorted(n["state"] for n in nodes) == ["ALIVE", "DEAD"], "the second node was lost"
    assert "running on the Ray cluster (2 node(s), 2 CPUs)" in logs
    for path, mtime in finished.items():   # parts done before the loss were not done again
        assert path.stat().st_mtime_ns == mtime, path
    return logs


def test_losing_a_node_during_download_changes_nothing(tmp_path, two_node_cluster):
    """SIGKILL the second node (its raylet's process group) a quarter into the download: Ray
    retries its tasks on the head, and the run ends as an undisturbed one does."""
    from pipeline.testing.fakeweb import FakeWeb
    from tests.support import assert_same_result, slow_image_config

    with FakeWeb() as web:
        run(slow_image_config(web, tmp_path, tmp_path / "local", "local"))
        _lose_the_second_node(tmp_path, two_node_cluster,
                              slow_image_config(web, tmp_path, tmp_path / "cluster", "ray"),
                              tmp_path / "cluster" / "steps" / "01_download" / "map" / "done", parts=3, total=12)
    assert_same_result(tmp_path / "cluster", tmp_path / "local")


def clip_config(web, folder: Path, output: Path, engine: str, checkpoint) -> dict:
    """720 world images (served at once) in 24 parts of 30 rows, downloaded, deduplicated,
    scored one image at a time by curate-tiny (a few seconds of scoring after its load: a
    node can be lost part-way through clip_score) and sharded."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.support import serve_world

    pairs = folder / "clip-pairs.parquet"
    if not pairs.exists():
        urls, texts = serve_world(web, 720)
        pq.write_table(pa.table({"url": urls, "text": texts}), pairs)
    return {"input": {"path": [str(pairs)], "part_rows": 30}, "output": str(output),
            "engine": engine, "processes": 2, "allow_networks": ["127.0.0.1/32"],
            "download": {"image_size": 64, "threads": 4, "timeout": 5, "part_rows": 30},
            "image_dedup": {"phash_distance": 0},
            "clip_score": {"model": "curate-tiny", "pretrained": str(checkpoint), "device": "cpu",
                           "precision": "fp32", "batch_size": 1, "threshold": 0.0},
            "shard": {"samples_per_shard": 32}}


def test_losing_a_node_during_clip_score_changes_nothing(tmp_path, two_node_cluster, tiny_clip_checkpoint):
    """SIGKILL the second node while the actors score (after the download): its actor's part
    goes to the actor on the head, and the run ends as an undisturbed one does."""
    from pipeline.testing.fakeweb import FakeWeb
    from tests.support import assert_same_result

    steps = tmp_path / "cluster" / "steps"
    with FakeWeb() as web:
        run(clip_config(web, tmp_path, tmp_path / "local", "local", tiny_clip_checkpoint))
        total = len(list((tmp_path / "local" / "steps" / "03_clip_score" / "map" / "done").glob("*.json")))
        _lose_the_second_node(tmp_path, two_node_cluster,
                              clip_config(web, tmp_path, tmp_path / "cluster", "ray", tiny_clip_checkpoint),
                              steps / "03_clip_score" / "map" / "done", parts=3, total=total,
                              before=steps / "01_download" / "_SUCCESS")
    assert_same_result(tmp_path / "cluster", tmp_path / "local")
