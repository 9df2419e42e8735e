"""Ray: parts run as Ray tasks (retried on failure), or, for stages that load a model
(`resources.stateful`), on a pool of long-lived actors so each loads it once: Ray starts a
fresh worker process for every GPU task by default, which would reload the model per part.
Joins RAY_ADDRESS (as under `ray job submit`) or starts a local Ray."""
from __future__ import annotations

import os
import sys

from pipeline.core.engine import Engine


class TaskRunner:
    """A long-lived worker: runs tasks in one process, so `setup()` caches survive."""

    def run(self, fn, task):
        return fn(task)


def _call(fn, task):
    return fn(task)


class RayEngine(Engine):
    name = "ray"

    def __init__(self, settings):
        import ray

        self.retries = settings.task_retries
        self._connected = False     # we called ray.init (so we disconnect at the end)
        local = False
        if not ray.is_initialized():
            address = settings.address or os.environ.get("RAY_ADDRESS") or "local"
            kwargs = {"num_cpus": settings.num_cpus} if address == "local" and settings.num_cpus else {}
            ray.init(address=address, log_to_driver=False, include_dashboard=False,
                     configure_logging=False, **kwargs)
            self._connected, local = True, address == "local"
        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
        where = "a local Ray" if local else "the Ray cluster"
        print(f"ray: running on {where} ({nodes} node(s), {self.parallelism()} CPUs)",
              file=sys.stderr, flush=True)

    def parallelism(self) -> int:
        import ray

        return max(1, int(ray.cluster_resources().get("CPU", 1)))

    def map(self, fn, tasks, resources=None):
        import ray

        tasks = list(tasks)
        fn = self.prepared(fn)
        if resources is not None and resources.stateful and tasks:
            return self._map_on_actors(fn, tasks, resources)
        options = {"max_retries": self.retries, "retry_exceptions": True}
        if resources is not None:
            options.update(num_cpus=resources.cpus, num_gpus=resources.gpus)
        remote = ray.remote(_call).options(**options)
        return ray.get([remote.remote(fn, t) for t in tasks])

    def _map_on_actors(self, fn, tasks, resources):
        """One actor per slot for this map call; killed after it, so their CPUs and GPUs
        go back to the tasks of the next steps."""
        import ray
        from ray.util import ActorPool

        actors = self._start_actors(resources, len(tasks))
        try:
            pool = ActorPool(actors)
            return list(pool.map(lambda actor, task: actor.run.remote(fn, task), tasks))
        finally:
            for actor in actors:
                ray.kill(actor)

    def _start_actors(self, resources, most: int) -> list:
        import ray

        total = ray.cluster_resources()
        slots = int(total.get("CPU", 1) // max(resources.cpus, 1e-9))
        if resources.gpus:
            slots = min(slots, int(total.get("GPU", 0) // resources.gpus))
        actor = ray.remote(TaskRunner).options(
            num_cpus=resources.cpus, num_gpus=resources.gpus,
            max_restarts=self.retries, max_task_retries=self.retries)
        return [actor.remote() for _ in range(max(1, min(slots, most)))]

    def close(self):
        import ray

        if self._connected and ray.is_initialized():
            ray.shutdown()
