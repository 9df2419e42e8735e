"""The embedded default: a pool of worker processes on this machine, no cluster."""
from __future__ import annotations

import multiprocessing
import os

from pipeline.core.engine import Engine


class LocalEngine(Engine):
    name = "local"

    def __init__(self, processes: int | None = None):
        self.processes = max(1, processes or os.cpu_count() or 1)
        self._pool = None

    def parallelism(self) -> int:
        return self.processes

    def map(self, fn, tasks, resources=None):
        tasks = list(tasks)
        if self.processes == 1 or len(tasks) <= 1:
            return [fn(t) for t in tasks]
        fn = self.prepared(fn)
        if self._pool is None:  # workers live for the whole run, so models load once each
            ctx = multiprocessing.get_context("spawn")
            threads = max(1, (os.cpu_count() or 1) // self.processes)
            self._pool = ctx.Pool(self.processes, initializer=_share_cores, initargs=(threads,))
        results = self._pool.imap(fn, tasks, chunksize=1)
        return list(progress(results, len(tasks)))

    def close(self):
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
            self._pool = None


def _share_cores(threads: int) -> None:
    """Each worker gets its share of the cores for math libraries (torch, BLAS): with one
    OpenMP pool per core in every process, model stages spin against each other."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(name, str(threads))


def progress(results, total: int):
    """A progress bar on stderr when someone is watching (a terminal), else nothing."""
    import sys

    if not sys.stderr.isatty() or total < 4:
        return results
    from tqdm import tqdm

    return tqdm(results, total=total, unit="part", leave=False, file=sys.stderr)
