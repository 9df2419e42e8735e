"""Workers die with their driver: `curate run` on the local engine (2 worker processes),
downloading from a slow loopback server, stopped part-way through the download step.

- SIGKILL of the driver alone: its workers notice and end within 2 s, and the server hears
  from them no more.
- SIGTERM to the driver, or SIGINT to its process group (a terminal's Ctrl-C): the driver
  ends its workers and exits with 143 / 130 and one `curate:` line, no traceback.

Each time the same command then runs to the end, with the same tars and ledger as a run
that was never stopped. Below them, the stop handler itself, in a process of its own.
"""
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.core.stopping import Stopped, stop_on_signals
from pipeline.testing.fakeweb import FakeWeb
from tests.support import assert_run_invariants, kept_uids, ledger_rows, run, serve_world, tar_digests

PARTS, ROWS = 6, 10      # download tasks of 10 rows
DELAY_MS = 200           # per image; 2 fetch threads a task: ~1 s a task, ~3 s the step
WORKERS_GONE_S = 2.0     # the bound on workers outliving their driver
QUIET_S = 1.0            # how long the server must then hear nothing
STARTUP_S = 120.0        # the bound on a run reaching its first finished download part


@pytest.fixture(scope="module")
def slow_web():
    with FakeWeb() as web:
        yield web


@pytest.fixture(scope="module")
def pairs(slow_web, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pairs") / "pairs.parquet"
    urls, texts = serve_world(slow_web, PARTS * ROWS, delay_ms=DELAY_MS)
    pq.write_table(pa.table({"url": urls, "text": texts}), path)
    return path


@pytest.fixture(scope="module")
def reference(slow_web, pairs, tmp_path_factory) -> Path:
    """The same config run once without interruption (in this process, the server answering
    at once: the delay only keeps the stopped runs' download step going)."""
    output = tmp_path_factory.mktemp("reference") / "run"
    with answering_at_once(slow_web):
        run(config(pairs, output))
    return output


@contextmanager
def answering_at_once(web: FakeWeb):
    """`web`'s routes without their delay for the block."""
    delays = {path: route.delay_s for path, route in web.routes.items()}
    for route in web.routes.values():
        route.delay_s = 0.0
    try:
        yield web
    finally:
        for path, delay in delays.items():
            web.routes[path].delay_s = delay


def config(pairs: Path, output: Path) -> dict:
    return {"input": {"path": [str(pairs)], "part_rows": ROWS}, "output": str(output),
            "engine": "local", "processes": 2, "seed": 0, "allow_networks": ["127.0.0.1/32"],
            "download": {"image_size": 48, "threads": 2, "timeout": 10, "part_rows": ROWS},
            "shard": {"samples_per_shard": 16}}


def write_config(pairs: Path, folder: Path) -> Path:
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(config(pairs, folder / "run")))
    return path


def start_run(config_path: Path) -> subprocess.Popen:
    """`curate run CONFIG` in a session of its own (so a Ctrl-C can go to its group)."""
    return subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(config_path)],
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_for_first_download_part(proc: subprocess.Popen, run_dir: Path) -> None:
    """Until the download step has committed a part (workers are up and fetching)."""
    deadline = time.monotonic() + STARTUP_S
    while not list(run_dir.glob("steps/*_download/map/done/part-*.json")):
        assert proc.poll() is None, f"the run ended before stopping it: {proc.communicate()}"
        assert time.monotonic() < deadline, "no download part done in time"
        time.sleep(0.02)


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (children, theirs, ...), from /proc."""
    found, todo = set(), [pid]
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").glob("*"):
            try:
                children = {int(c) for c in (task / "children").read_text().split()}
            except OSError:
                continue
            todo.extend(children - found)
            found |= children
    return found


def alive(pid: int) -> bool:
    """Running (a zombie no one has reaped yet counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def seconds_until_gone(pids: set[int], since: float, bound: float = WORKERS_GONE_S) -> float:
    """Seconds from `since` until none of `pids` runs; fails past `bound`."""
    while any(alive(p) for p in pids):
        waited = time.monotonic() - since
        assert waited < bound, f"still running {waited:.1f}s after the stop: {sorted(p for p in pids if alive(p))}"
        time.sleep(0.01)
    return time.monotonic() - since


def assert_quiet(web: FakeWeb) -> None:
    """The server hears nothing more (after requests already on the wire have landed)."""
    time.sleep(0.25)
    before = web.total_requests
    time.sleep(QUIET_S)
    assert web.total_requests == before, "a stopped run kept fetching"


def assert_resumes_to_reference(config_path: Path, reference: Path) -> None:
    """The same command, run again, finishes with the reference's tars and ledger."""
    rerun = subprocess.run([sys.executable, "-m", "pipeline", "run", str(config_path)],
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    run_dir = config_path.parent / "run"
    assert_run_invariants(run_dir)
    assert tar_digests(run_dir) == tar_digests(reference)
    assert ledger_rows(run_dir) == ledger_rows(reference)
    assert kept_uids(run_dir) == kept_uids(reference)
    assert not list(run_dir.rglob("*.tmp")), "a temporary of the stopped run was left behind"


def done_parts(run_dir: Path) -> int:
    return len(list(run_dir.glob("steps/*_download/map/done/part-*.json")))


def cleanup(proc: subprocess.Popen) -> None:
    """Whatever the test left running in the run's session, killed."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if proc.poll() is None:
        proc.wait()


@pytest.mark.slow
def test_sigkill_of_the_driver_ends_its_workers(slow_web, pairs, reference, tmp_path):
    config_path = write_config(pairs, tmp_path)
    proc = start_run(config_path)
    try:
        wait_for_first_download_part(proc, tmp_path / "run")
        workers = descendants(proc.pid)
        assert len(workers) >= 2, workers
        killed = time.monotonic()
        os.kill(proc.pid, signal.SIGKILL)   # the driver alone: the workers must notice
        took = seconds_until_gone(workers, killed)
        print(f"\nSIGKILL: {len(workers)} worker processes gone {took:.2f}s after the driver was killed")
        _, stderr = proc.communicate(timeout=10)
        assert_quiet(slow_web)
        assert done_parts(tmp_path / "run") < PARTS, "killed after the download step"
    finally:
        cleanup(proc)
    assert "Traceback" not in stderr, stderr
    assert_resumes_to_reference(config_path, reference)


@pytest.mark.slow
@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)],
                         ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_ends_the_run_in_order(slow_web, pairs, reference, tmp_path, signum, status):
    config_path = write_config(pairs, tmp_path)
    proc = start_run(config_path)
    try:
        wait_for_first_download_part(proc, tmp_path / "run")
        workers = descendants(proc.pid)
        assert len(workers) >= 2, workers
        stopped = time.monotonic()
        if signum == signal.SIGINT:
            os.killpg(proc.pid, signum)      # as a terminal's Ctrl-C: the whole group
        else:
            os.kill(proc.pid, signum)        # as `kill` or a supervisor: the driver alone
        stdout, stderr = proc.communicate(timeout=10)
        exited = time.monotonic() - stopped
        took = seconds_until_gone(workers, stopped)
        print(f"\n{signal.Signals(signum).name}: driver exited {proc.returncode} after {exited:.2f}s, "
              f"{len(workers)} worker processes gone after {took:.2f}s")
        assert_quiet(slow_web)
        assert done_parts(tmp_path / "run") < PARTS, "stopped after the download step"
    finally:
        cleanup(proc)
    assert proc.returncode == status, stderr
    console = stdout + stderr
    assert "Traceback" not in console, console
    stop_lines = [line for line in stderr.splitlines() if line.startswith("curate:")]
    assert stop_lines == [f"curate: stopped by {signal.Signals(signum).name} "
                          f"(rerun the same command to resume)"], stderr
    assert_resumes_to_reference(config_path, reference)


def test_a_stop_signal_raises_stopped_and_the_handlers_come_back():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Stopped) as stopped, stop_on_signals() as signals:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)   # interrupted by the handler's exception
    assert (stopped.value.signum, stopped.value.exit_status, signals.received) == (signal.SIGTERM, 143, signal.SIGTERM)
    assert signals.stopped_by(KeyboardInterrupt()).signum == signal.SIGTERM   # as ray.get raises it
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_second_signal_while_stopping_exits_at_once():
    script = ("import os, signal, time\n"
              "from pipeline.core.stopping import Stopped, stop_on_signals\n"
              "with stop_on_signals():\n"
              "    try:\n"
              "        os.kill(os.getpid(), signal.SIGTERM); time.sleep(5)\n"
              "    except Stopped:\n"
              "        os.kill(os.getpid(), signal.SIGINT); time.sleep(5)   # a slow clean-up\n")
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert time.monotonic() - started < 4
    assert result.returncode == 143, result.stderr
    assert result.stderr.splitlines() == ["curate: stopped again by SIGINT; exiting without waiting "
                                          "(rerun the same command to resume)"]
