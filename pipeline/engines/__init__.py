"""Engines run the same picklable tasks in parallel; they are thin adapters (~30 lines each).

`engine.map(fn, tasks, resources)` returns `[fn(t) for t in tasks]`, in order. Tasks are
idempotent (their outputs are written atomically), so an engine may retry them freely.
"""
from __future__ import annotations

from pipeline.core.config import GeneralSettings
from pipeline.core.engine import Engine
from pipeline.errors import UserError


def make_engine(settings: GeneralSettings) -> Engine:
    name = settings.engine
    if name == "local":
        from pipeline.engines.local import LocalEngine
        return LocalEngine(settings.processes)
    if name == "ray":
        from pipeline.engines.ray_engine import RayEngine
        return RayEngine(settings.ray)
    if name == "spark":
        from pipeline.engines.spark_engine import SparkEngine
        return SparkEngine(settings.spark)
    raise UserError(f"{settings.source}: engine: unknown engine '{name}' (local, ray, spark)")
