"""The local engine survives a worker that dies under a task (killed for memory, a crash in
native code): `multiprocessing.Pool` alone would wait for that task forever."""
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.engines import local
from pipeline.engines.local import LocalEngine


@dataclass
class DiesOnce:
    """Kills its own worker the first time it sees task 2 (a marker file remembers)."""
    marker: str

    def __call__(self, task: int) -> int:
        if task == 2 and not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return task * task


def always_dies(task: int) -> int:
    if task == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return task


def test_a_killed_worker_is_replaced_and_its_task_run_again(tmp_path):
    seen = []
    with LocalEngine(processes=2) as engine:
        results = engine.map(DiesOnce(str(tmp_path / "died")), range(6), on_result=lambda i, r: seen.append(i))
    assert (tmp_path / "died").exists(), "the worker was killed once"
    assert results == [t * t for t in range(6)]
    assert sorted(seen) == list(range(6)), "each result reported once"


def test_a_task_that_always_kills_its_worker_fails_naming_the_signal(monkeypatch):
    monkeypatch.setattr(local, "LOST_WORKER_RETRIES", 1)
    with pytest.raises(RuntimeError, match=r"died 2 times \(killed by signal 9\)"):
        with LocalEngine(processes=2) as engine:
            engine.map(always_dies, range(4))


def square(task: int) -> int:
    return task * task


def test_workers_killed_while_idle_do_not_stall_the_next_map(monkeypatch):
    """An idle worker waits for its next task holding the pool's queue lock: killed there (the
    kernel's OOM killer picks the largest process), no worker could take a task again and
    `Pool.terminate` would wait forever. The next map starts a fresh pool instead."""
    monkeypatch.setattr(local, "STOP_SECONDS", 2.0)
    with LocalEngine(processes=2) as engine:
        assert engine.map(square, range(4)) == [0, 1, 4, 9]
        for worker in engine._workers:
            os.kill(worker.pid, signal.SIGKILL)
        assert engine.map(square, range(5)) == [0, 1, 4, 9, 16]
