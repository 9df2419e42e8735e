"""The embedded default: a pool of worker processes on this machine, no cluster.

The workers die with the driver: `stop` (a stop signal, a failed task) terminates them, and a
driver killed outright leaves them orphans that end by themselves within a second
(`pipeline.core.stopping.exit_with_parent`). They ignore SIGINT: Ctrl-C reaches the terminal's
whole process group, and the driver stops them in order.

A worker that dies under a task (killed for memory, a crash in native code) would leave
`multiprocessing.Pool` waiting for that task forever: the driver watches its workers while
it waits, and when one is gone it starts a fresh pool and runs the unfinished tasks again
(a task is idempotent: a finished part is found by its marker), up to `LOST_WORKER_RETRIES`
times, then fails naming how the worker died."""
from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

from pipeline.core.engine import Engine

LOST_WORKER_RETRIES = 3
WATCH_SECONDS = 1.0   # how often a waiting driver looks at its workers
STOP_SECONDS = 30.0   # longest wait for the pool to end in order before its workers are killed


class LostWorker(Exception):
    """A pool worker died while tasks were outstanding."""


@dataclass
class Indexed:
    """`fn` over an (index, task) pair, returning the index with the result."""
    fn: Callable

    def __call__(self, item):
        index, task = item
        return index, self.fn(task)


class LocalEngine(Engine):
    name = "local"

    def __init__(self, processes: int | None = None):
        self.processes = max(1, processes or os.cpu_count() or 1)
        self._pool = None
        self._workers: list = []   # the pool's first workers: any of them gone, the pool is not trusted

    def parallelism(self) -> int:
        return self.processes

    def map(self, fn, tasks, resources=None, on_result=None):
        tasks = list(tasks)
        if self.processes == 1 or len(tasks) <= 1:
            results = []
            for index, task in enumerate(tasks):
                results.append(fn(task))
                if on_result is not None:
                    on_result(index, results[-1])
            return results
        fn = Indexed(self.prepared(fn))
        results: list = [None] * len(tasks)
        pending = dict.fromkeys(range(len(tasks)))   # in order: started in order, as imap does
        for attempt in range(LOST_WORKER_RETRIES + 1):
            if self._pool is not None and _dead(self._workers):   # died while idle: maybe holding the queue
                self.stop()
            if self._pool is None:  # workers live for the whole run, so models load once each
                self._pool = self._start_pool()
                self._workers = list(self._pool._pool)
            items = self._pool.imap_unordered(fn, [(i, tasks[i]) for i in pending], chunksize=1)
            try:
                for index, result in progress(_watched(items, self._workers), len(pending)):
                    results[index] = result   # each result taken as it comes
                    del pending[index]
                    if on_result is not None:
                        on_result(index, result)
                return results
            except LostWorker as lost:
                self.stop()
                if attempt == LOST_WORKER_RETRIES:
                    raise RuntimeError(f"local: a worker process died {attempt + 1} times ({lost}); "
                                       f"{len(pending)} task(s) not finished") from None
        return results

    def _start_pool(self):
        ctx = multiprocessing.get_context("spawn")
        threads = max(1, (os.cpu_count() or 1) // self.processes)
        # on the main thread, the creating thread lasts the run (a worker the pool replaces
        # later is started by the pool's own thread, which lasts as long as the pool)
        on_main_thread = threading.current_thread() is threading.main_thread()
        start_method = multiprocessing.get_start_method(allow_none=True)   # None: the platform's
        with _sigint_ignored_by_new_processes(on_main_thread):
            return ctx.Pool(self.processes, initializer=_start_worker,
                            initargs=(threads, os.getpid(), on_main_thread, start_method))

    def close(self):
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
            self._pool = None

    def stop(self):
        """Kill the workers where they are (SIGTERM; a part being written stays a temporary).
        `Pool.terminate` waits for the lock of the pool's task queue, which a worker killed
        while taking a task holds forever: after STOP_SECONDS the workers are killed outright."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            workers = list(pool._pool)
            ender = threading.Thread(target=pool.terminate, name="curate-pool-terminate", daemon=True)
            ender.start()
            ender.join(STOP_SECONDS)
            if ender.is_alive():
                for worker in workers + list(pool._pool):
                    if worker.exitcode is None:
                        worker.kill()


def _watched(items, workers: list):
    """The results of `items` (an `imap_unordered`); `LostWorker` once one of `workers` died."""
    while True:
        try:
            yield items.next(timeout=WATCH_SECONDS)
        except StopIteration:
            return
        except multiprocessing.TimeoutError:
            code = _dead(workers)
            if code is not None:
                raise LostWorker(f"killed by signal {-code}" if code < 0 else f"exit status {code}") from None


def _dead(workers: list):
    """The exit code of the first of `workers` that has ended, else None."""
    return next((w.exitcode for w in workers if w.exitcode is not None), None)


def _start_worker(threads: int, driver_pid: int, created_on_main_thread: bool,
                  start_method: str | None) -> None:
    """A pool worker's set-up: its share of the cores, the driver's default start method,
    SIGINT left to the driver, SIGTERM fatal (as `Pool.terminate` expects), and an end of its
    own once the driver is gone."""
    from pipeline.core.stopping import exit_with_parent

    _share_cores(threads)
    _use_start_method(start_method)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    exit_with_parent(driver_pid, parent_thread_lasts=created_on_main_thread)


def _use_start_method(start_method: str | None) -> None:
    """Spawn's bootstrap leaves 'spawn' as a worker's default start method; put back the
    driver's (`None`: the platform's, 'fork' on Linux), so a task runs as it would in the
    driver. Under 'spawn' the queues of a `ThreadPool` (the download's fetch threads) hold
    named semaphores registered with the resource tracker, and a worker ended mid-task (a
    stop, its driver killed) leaves them to the tracker, which then warns on the console."""
    multiprocessing.set_start_method(start_method, force=True)


@contextmanager
def _sigint_ignored_by_new_processes(on_main_thread: bool):
    """Processes started in the block begin with SIGINT ignored (an ignored signal stays
    ignored across exec, and Python keeps it so), so a Ctrl-C while a worker is still
    importing gives no traceback; the driver ignores it only for the few milliseconds of the
    fork and exec. Only the main thread may set handlers."""
    if not on_main_thread:
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler if previous is None else previous)


def _share_cores(threads: int) -> None:
    """Each worker gets its share of the cores for math libraries (torch, BLAS): with one
    OpenMP pool per core in every process, model stages spin against each other."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(name, str(threads))


def progress(results, total: int):
    """A progress bar on stderr when someone is watching (a terminal), else nothing (for maps
    without `on_result`; a step's phases report through `pipeline.core.progress`)."""
    import sys

    if not sys.stderr.isatty() or total < 4:
        return results
    from tqdm import tqdm

    return tqdm(results, total=total, unit="part", leave=False, file=sys.stderr)
