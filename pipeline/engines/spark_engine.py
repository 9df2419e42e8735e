"""Spark: one Spark task per part. Uses the active session (spark-submit) or local[*]."""
from __future__ import annotations

import os
import sys

from pipeline.core.engine import Engine
from pipeline.core.stopping import keeping_stop_handlers


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

    def map(self, fn, tasks, resources=None):
        tasks = list(tasks)
        if not tasks:
            return []
        fn = self.prepared(fn)
        context = self.session.sparkContext
        context.setJobGroup(self._job_group, "curate", interruptOnCancel=True)
        rdd = context.parallelize(list(enumerate(tasks)), len(tasks))
        results = dict(rdd.map(lambda item: (item[0], fn(item[1]))).collect())
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
