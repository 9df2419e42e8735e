"""Spark: one Spark task per part. Uses the active session (spark-submit) or local[*]."""
from __future__ import annotations

import os
import sys

from pipeline.core.engine import Engine


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
            session = builder.getOrCreate()
            session.sparkContext.setLogLevel("ERROR")
        self.session = session

    def parallelism(self) -> int:
        return max(1, self.session.sparkContext.defaultParallelism)

    def map(self, fn, tasks, resources=None):
        tasks = list(tasks)
        if not tasks:
            return []
        fn = self.prepared(fn)
        rdd = self.session.sparkContext.parallelize(list(enumerate(tasks)), len(tasks))
        results = dict(rdd.map(lambda item: (item[0], fn(item[1]))).collect())
        return [results[i] for i in range(len(tasks))]

    def close(self):
        if self._started:
            self.session.stop()
