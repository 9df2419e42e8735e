"""A real Spark standalone cluster (a master and a worker) on loopback: an executor is
SIGKILLed mid-download; the run ends as an undisturbed one does."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from pipeline.testing.fakeweb import FakeWeb
from tests.support import assert_same_result, run, slow_image_config

pytestmark = pytest.mark.slow  # a Spark standalone cluster


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def daemon(*args, log: Path):
    """A Spark daemon (pyspark's `spark-class`) in its own process group."""
    import pyspark

    spark_class = Path(pyspark.__file__).parent / "bin" / "spark-class"
    env = dict(os.environ, SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=sys.executable)
    return subprocess.Popen([str(spark_class), *args], env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


@pytest.fixture
def standalone(tmp_path):
    port, ui, worker_ui = free_port(), free_port(), free_port()
    master = daemon("org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
                    "--webui-port", str(ui), log=tmp_path / "master.log")
    worker = daemon("org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1", "--cores", "2",
                    "--memory", "4g", "--webui-port", str(worker_ui), "--work-dir", str(tmp_path / "work"),
                    f"spark://127.0.0.1:{port}", log=tmp_path / "worker.log")
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                state = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{ui}/json/", timeout=2).read())
                if any(w["state"] == "ALIVE" for w in state.get("workers", [])):
                    break
            except OSError:
                pass
            time.sleep(0.5)
        else:
            log = (tmp_path / "worker.log").read_text()[-2000:]
            raise AssertionError("the standalone worker did not register: " + log)
        yield f"spark://127.0.0.1:{port}"
    finally:
        for proc in (worker, master):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def executor_pids() -> list[int]:
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if b"CoarseGrainedExecutorBackend" in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.append(int(pid))
        except OSError:
            continue
    return pids


def test_losing_an_executor_during_download_changes_nothing(tmp_path, standalone):
    spark = {"master": standalone, "conf": {"spark.task.maxFailures": 4}}
    with FakeWeb() as web:
        run(slow_image_config(web, tmp_path, tmp_path / "local", "local"))
        path = tmp_path / "cluster.yaml"
        path.write_text(yaml.safe_dump(slow_image_config(web, tmp_path, tmp_path / "cluster", "spark", spark=spark)))
        env = dict(os.environ, PYSPARK_PYTHON=sys.executable, SPARK_LOCAL_IP="127.0.0.1")
        proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(path)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        done = tmp_path / "cluster" / "steps" / "01_download" / "map" / "done"
        deadline = time.time() + 300
        while time.time() < deadline and len(list(done.glob("*.json"))) < 3 and proc.poll() is None:
            time.sleep(0.1)
        finished = {p: p.stat().st_mtime_ns for p in done.glob("*.json")}
        assert 3 <= len(finished) < 12, "the executor must be lost part-way through the download"
        lost = executor_pids()
        assert lost, "no executor running"
        for pid in lost:
            os.kill(pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err[-3000:]
    assert not set(lost) & set(executor_pids()), "the lost executor was replaced"
    assert_same_result(tmp_path / "cluster", tmp_path / "local")
    for marker, mtime in finished.items():   # parts done before the loss were not done again
        assert marker.stat().st_mtime_ns == mtime, marker
