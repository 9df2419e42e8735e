"""Ray: each task is a Ray task (retried on failure); joins RAY_ADDRESS or starts a local Ray."""
from __future__ import annotations

import os
import sys

from pipeline.engines.base import Engine


class RayEngine(Engine):
    name = "ray"

    def __init__(self, settings):
        import ray

        self.retries = settings.task_retries
        self._started = False
        if not ray.is_initialized():
            address = settings.address or os.environ.get("RAY_ADDRESS") or "local"
            kwargs = {"num_cpus": settings.num_cpus} if address == "local" and settings.num_cpus else {}
            ray.init(address=address, log_to_driver=False, include_dashboard=False,
                     configure_logging=False, **kwargs)
            self._started = True
        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
        where = "a local Ray" if self._started and address == "local" else "the Ray cluster"
        print(f"ray: running on {where} ({nodes} node(s), {self.parallelism()} CPUs)",
              file=sys.stderr, flush=True)

    def parallelism(self) -> int:
        import ray

        return max(1, int(ray.cluster_resources().get("CPU", 1)))

    def map(self, fn, tasks, resources=None):
        import ray

        options = {"max_retries": self.retries, "retry_exceptions": True}
        if resources is not None:
            options.update(num_cpus=resources.cpus, num_gpus=resources.gpus)
        remote = ray.remote(fn).options(**options)
        return ray.get([remote.remote(t) for t in tasks])

    def close(self):
        import ray

        if self._started and ray.is_initialized():
            ray.shutdown()
