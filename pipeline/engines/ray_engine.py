"""Ray: parts run as Ray tasks (retried on failure), or, for stages that load a model
(`resources.stateful`), on a pool of long-lived actors so each loads it once: Ray starts a
fresh worker process for every GPU task by default, which would reload the model per part.
Joins RAY_ADDRESS (as under `ray job submit`) or starts a local Ray."""
from __future__ import annotations

import os
import sys
from collections import deque

from pipeline.core.engine import Engine
from pipeline.core.stopping import keeping_stop_handlers

WAIT_S = 0.5   # how often a map looks for finished tasks (to hand their results on)


class TaskRunner:
    """A long-lived worker: runs tasks in one process, so `setup()` caches survive."""

    def ready(self) -> bool:
        return True

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
            with keeping_stop_handlers():   # ray.init sets SIGTERM to sys.exit
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

    def map(self, fn, tasks, resources=None, on_result=None):
        import ray

        tasks = list(tasks)
        fn = self.prepared(fn)
        if resources is not None and resources.stateful and tasks:
            return self._map_on_actors(fn, tasks, resources, on_result)
        options = {"max_retries": self.retries, "retry_exceptions": True}
        if resources is not None:
            options.update(num_cpus=resources.cpus, num_gpus=resources.gpus)
        remote = ray.remote(_call).options(**options)
        refs = [remote.remote(fn, t) for t in tasks]
        try:
            if on_result is None:
                return ray.get(refs)
            return _as_they_finish(refs, on_result)
        except KeyboardInterrupt:   # a stop signal: end the tasks, also on a cluster that stays up
            _cancel(refs)
            raise

    def _map_on_actors(self, fn, tasks, resources, on_result=None):
        """One actor per slot for this map call; killed after it, so their CPUs and GPUs
        go back to the tasks of the next steps.

        An actor lost with its node (or its process) costs only the part it was running: that
        part goes to the next free actor (at most `task_retries` times a part), and a fresh
        actor is started in the lost one's place, taking parts once it is up (where the cluster
        has room). Ray's own actor restarts are not used: an actor restarting after its node
        died waits for a free slot elsewhere, and the slots are held by this call's other
        actors until it ends, so the part on it would wait forever."""
        import ray
        from ray.exceptions import ObjectLostError, RayActorError

        runner, slots = self._runner(resources), self._slots(resources, len(tasks))
        todo = deque(range(len(tasks)))
        results, losses = [None] * len(tasks), [0] * len(tasks)
        idle, running, starting, started = [], {}, {}, []
        fresh_sets = 0

        def start(count: int, wait_until_up: bool = True) -> None:
            for _ in range(count):
                actor = runner.remote()
                started.append(actor)
                if wait_until_up:
                    starting[actor.ready.remote()] = actor
                else:   # the first set fits the cluster: parts queue on each at once
                    idle.append(actor)

        start(slots, wait_until_up=False)
        try:
            while todo or running:
                while todo and idle:
                    actor, index = idle.pop(), todo.popleft()
                    running[actor.run.remote(fn, tasks[index])] = (actor, index)
                if not running and not starting:   # every actor was lost before it came up
                    fresh_sets += 1
                    if fresh_sets > self.retries:
                        raise RuntimeError(f"ray: every actor was lost {fresh_sets} times; "
                                           f"{len(todo)} part(s) not run")
                    start(slots)
                [ref], _ = ray.wait([*running, *starting], num_returns=1)
                if ref in starting:
                    actor = starting.pop(ref)
                    try:
                        ray.get(ref)
                        idle.append(actor)
                    except RayActorError:
                        ray.kill(actor)        # lost before it ran a part: nothing to redo
                    continue
                actor, index = running.pop(ref)
                try:
                    results[index] = ray.get(ref)
                    idle.append(actor)
                    if on_result is not None:
                        on_result(index, results[index])
                except (RayActorError, ObjectLostError):
                    losses[index] += 1
                    if losses[index] > self.retries:
                        raise
                    ray.kill(actor)
                    todo.appendleft(index)
                    start(1)
            return results
        finally:
            for actor in started:
                ray.kill(actor)

    def _slots(self, resources, most: int) -> int:
        import ray

        total = ray.cluster_resources()
        slots = int(total.get("CPU", 1) // max(resources.cpus, 1e-9))
        if resources.gpus:
            slots = min(slots, int(total.get("GPU", 0) // resources.gpus))
        return max(1, min(slots, most))

    def _runner(self, resources):
        import ray

        return ray.remote(TaskRunner).options(num_cpus=resources.cpus, num_gpus=resources.gpus,
                                              max_restarts=0, max_task_retries=0)

    def close(self):
        """Disconnect if this engine connected: a local Ray it started shuts down, and on a
        cluster Ray ends the tasks and actors this driver still owns."""
        import ray

        if self._connected and ray.is_initialized():
            ray.shutdown()


def _as_they_finish(refs, on_result) -> list:
    """The results of `refs` in order, each handed to `on_result(index, result)` as its task
    finishes (looked for every WAIT_S seconds, in one call over the unfinished ones)."""
    import ray

    index_of = {ref: i for i, ref in enumerate(refs)}
    results, pending = [None] * len(refs), list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=len(pending), timeout=WAIT_S)
        for ref, result in zip(ready, ray.get(ready)):
            results[index_of[ref]] = result
            on_result(index_of[ref], result)
    return results


def _cancel(refs) -> None:
    """Force-cancel the tasks of `refs` still running (their worker processes are killed)."""
    import ray

    for ref in refs:
        try:
            ray.cancel(ref, force=True)
        except Exception:  # pylint: disable=broad-except  # finished, or its node is gone
            pass
