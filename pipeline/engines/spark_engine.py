"""Spark: one Spark task per part. Uses the active session (spark-submit) or local[*]."""
from __future__ import annotations

import os
import sys
import threading

from pyspark.accumulators import AccumulatorParam

from pipeline.core.engine import Engine
from pipeline.core.stopping import keeping_stop_handlers

POLL_S = 0.25   # how often a map looks for finished tasks (to hand their results on)


class SparkEngine(Engine):
    name = "spark"

    def __init__(self, settings):
        from pyspark.sql import SparkSession

        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
        session = SparkSession.getActiveSession()
        self._started = session is None
        if session is None:
            builder = SparkSession.builder.appName("curate")
            if settings.master or "PYSPARK_GATEWAY_PORT" not in os.environ:
                builder = builder.master(settings.master or "local[*, 3]")
            builder = builder.config("spark.ui.enabled", "false").config(
                "spark.ui.showConsoleProgress", "false")
            for key, value in settings.conf.items():
                builder = builder.config(key, str(value))
            with keeping_stop_handlers():   # a SparkContext sets its own SIGINT handler
                session = builder.getOrCreate()
            session.sparkContext.setLogLevel("ERROR")
        self.session = session
        self._job_group = f"curate-{os.getpid()}-{id(self):x}"   # what `stop` cancels

    def parallelism(self) -> int:
        return max(1, self.session.sparkContext.defaultParallelism)

    def map(self, fn, tasks, resources=None, on_result=None):
        tasks = list(tasks)
        if not tasks:
            return []
        fn = self.prepared(fn)
        context = self.session.sparkContext
        context.setJobGroup(self._job_group, "curate", interruptOnCancel=True)
        rdd = context.parallelize(list(enumerate(tasks)), len(tasks))
        if on_result is None:
            results = dict(rdd.map(lambda item: (item[0], fn(item[1]))).collect())
            return [results[i] for i in range(len(tasks))]
        finished = context.accumulator([], Finished())   # the driver gets each task's as it ends
        with Relay(finished, on_result) as relay:
            results = dict(rdd.map(lambda item: (item[0], _reporting(fn, item, finished))).collect())
            relay.flush(results)
        return [results[i] for i in range(len(tasks))]

    def close(self):
        if self._started:
            self.session.stop()

    def stop(self):
        """Cancel this engine's jobs (their tasks interrupted), then stop the session if this
        engine started it; a session that was active before (spark-submit, a notebook) stays."""
        try:
            self.session.sparkContext.cancelJobGroup(self._job_group)
        finally:
            self.close()


def _reporting(fn, item, finished):
    index, task = item
    result = fn(task)
    finished.add([(index, result)])
    return result


class Finished(AccumulatorParam):
    """An accumulator of (index, result) pairs: Spark merges a task's into the driver's as the
    task ends, while the job still runs, and once per task (a failed attempt's are dropped)."""

    def zero(self, value):
        return []

    def addInPlace(self, value1, value2):
        value1.extend(value2)
        return value1


class Relay:
    """Hands the results of a map's finished tasks to `on_result` while its job runs (a thread
    polling the accumulator every POLL_S seconds), then, with `flush`, those it had not yet
    seen; each index once, one call at a time."""

    def __init__(self, finished, on_result):
        self.finished, self.on_result = finished, on_result
        self.seen: set = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True, name="curate-spark-results")

    def __enter__(self) -> "Relay":
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(POLL_S):
            self._hand_on(list(self.finished.value))

    def _hand_on(self, pairs) -> None:
        with self._lock:
            for index, result in pairs:
                if index not in self.seen:
                    self.seen.add(index)
                    self.on_result(index, result)

    def flush(self, results: dict) -> None:
        self._stop.set()
        self._thread.join()
        self._hand_on(sorted(results.items()))

    def __exit__(self, exc_type, exc, traceback) -> None:
        self._stop.set()
        self._thread.join()
        self.finished.value = []   # the driver keeps every accumulator: let its results go
