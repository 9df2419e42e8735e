"""One run per folder: two runs started together on one folder (local disk and an object
store), one completes and the other refuses in one line naming it; a stale lease is taken
over; exclusive creation has exactly one winner."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.core import lease, storage
from tests.support import assert_run_invariants, assert_same_result, run, serve_world

BUCKET = "lease-tests"


def slow_config(pairs, output) -> dict:
    """36 images served 100 ms apart in parts of 6: a run lasts long enough to overlap."""
    return {"input": {"path": [str(pairs)], "part_rows": 6}, "output": str(output), "processes": 2,
            "allow_networks": ["127.0.0.1/32"], "download": {"image_size": 64, "threads": 2, "timeout": 5},
            "shard": {"samples_per_shard": 6}}


@pytest.fixture(scope="module")
def slow_pairs(tmp_path_factory):
    from pipeline.testing.fakeweb import FakeWeb

    folder = tmp_path_factory.mktemp("lease-pairs")
    with FakeWeb() as web:
        urls, texts = serve_world(web, 36, delay_ms=100)
        pq.write_table(pa.table({"url": urls, "text": texts}), folder / "pairs.parquet")
        yield folder / "pairs.parquet"


def start_two(config_path: Path, env=None) -> list[subprocess.Popen]:
    """Two `curate run` of one config, started together (each waits at a barrier file)."""
    return [subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(config_path)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]


def assert_one_completes_one_refuses(procs: list[subprocess.Popen], run_dir: str) -> None:
    results = [(p.pid, *p.communicate(timeout=600), p.returncode) for p in procs]
    codes = sorted(r[3] for r in results)
    assert codes == [0, 2], [(r[3], r[2][-1500:]) for r in results]
    winner = next(r for r in results if r[3] == 0)
    loser = next(r for r in results if r[3] == 2)
    lines = [line for line in loser[2].splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in loser[2], loser[2]
    assert lines[0].startswith(f"curate: error: {run_dir}: in use by another run"), lines[0]
    assert f"host {socket.gethostname()}, pid {winner[0]}, since " in lines[0], lines[0]


@pytest.mark.slow
def test_two_runs_on_one_local_folder(slow_pairs, tmp_path):
    run(slow_config(slow_pairs, tmp_path / "reference"))
    run_dir = tmp_path / "run"
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(slow_config(slow_pairs, run_dir)))
    assert_one_completes_one_refuses(start_two(config_path), str(run_dir))
    assert_run_invariants(run_dir)
    assert_same_result(run_dir, tmp_path / "reference")
    assert not (run_dir / lease.FOLDER).exists(), "the lease goes with its run"


@pytest.mark.slow
def test_two_runs_on_one_bucket_folder(object_store, slow_pairs, tmp_path, monkeypatch):
    object_store.create_bucket(BUCKET)
    for key, value in object_store.env().items():
        monkeypatch.setenv(key, value)
    storage.configure({})
    run(slow_config(slow_pairs, tmp_path / "reference"))
    run_dir = f"s3://{BUCKET}/together"
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(slow_config(slow_pairs, run_dir)))
    assert_one_completes_one_refuses(start_two(config_path, env=dict(os.environ)), run_dir)
    assert_same_result(run_dir, tmp_path / "reference")
    assert not [k for k in object_store.list_keys(BUCKET, "together/") if "/_lease/" in k]


def write_lease(run_dir: Path, generation: int, **record) -> None:
    folder = run_dir / lease.FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{generation:08d}.json").write_text(json.dumps(record))


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("holder", ["dead pid here", "old heartbeat elsewhere"])
def test_a_stale_lease_is_taken_over(tmp_path, holder):
    pq.write_table(pa.table({"url": ["http://a.org/1.jpg"], "text": ["a cat"]}), tmp_path / "in.parquet")
    run_dir = tmp_path / "run"
    if holder == "dead pid here":
        write_lease(run_dir, 3, host=socket.gethostname(), pid=dead_pid(), since=time.time(),
                    heartbeat=time.time())
    else:
        old = time.time() - lease.STALE_AFTER - 5
        write_lease(run_dir, 3, host="another-host", pid=1, since=old, heartbeat=old)
    summary = run({"input": str(tmp_path / "in.parquet"), "output": str(run_dir), "processes": 1})
    assert summary["kept_rows"] == 1
    assert not (run_dir / lease.FOLDER).exists()


def test_a_live_lease_elsewhere_refuses_and_changes_nothing(tmp_path):
    from pipeline.errors import UserError

    pq.write_table(pa.table({"url": ["http://a.org/1.jpg"], "text": ["a cat"]}), tmp_path / "in.parquet")
    run_dir = tmp_path / "run"
    write_lease(run_dir, 1, host="another-host", pid=42, since=time.time() - 60, heartbeat=time.time())
    before = sorted(p.name for p in run_dir.rglob("*"))
    with pytest.raises(UserError, match=r"in use by another run \(host another-host, pid 42, since "):
        run({"input": str(tmp_path / "in.parquet"), "output": str(run_dir), "processes": 1})
    assert sorted(p.name for p in run_dir.rglob("*")) == before


@pytest.mark.parametrize("where", ["local", "bucket"])
def test_exclusive_creation_has_one_winner(where, tmp_path, object_store, monkeypatch):
    if where == "bucket":
        object_store.create_bucket(BUCKET)
        for key, value in object_store.env().items():
            monkeypatch.setenv(key, value)
        storage.configure({})
        base = f"s3://{BUCKET}/exclusive"
    else:
        base = str(tmp_path)
    for round_ in range(3):
        path = storage.join(base, f"lease-{round_}.json")
        barrier, wins = threading.Barrier(8), []

        def contend(i: int, path=path, barrier=barrier, wins=wins) -> None:
            barrier.wait()
            if storage.create_exclusive(path, json.dumps({"i": i}).encode()):
                wins.append(i)

        threads = [threading.Thread(target=contend, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(wins) == 1
        assert storage.read_json(path) == {"i": wins[0]}
