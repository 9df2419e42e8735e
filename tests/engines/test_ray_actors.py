"""Stages that load a model run on long-lived Ray actors: one process per slot for a whole
step (Ray would otherwise start a fresh process per GPU task), and the slots are released."""
import os
import sys

import pytest

from pipeline.core.config import RaySettings
from pipeline.core.stage import Resources

pytestmark = pytest.mark.slow  # Ray actors on a local Ray


def which_process(task):
    return task, os.getpid()


@pytest.fixture(scope="module")
def engine():
    import ray.cloudpickle as cloudpickle

    from pipeline.engines.ray_engine import RayEngine
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray_engine = RayEngine(RaySettings(num_cpus=2))
    yield ray_engine
    ray_engine.close()


def test_stateful_stage_runs_on_one_process_per_slot(engine):
    results = engine.map(which_process, list(range(12)), Resources(cpus=1, stateful=True))
    assert [task for task, _ in results] == list(range(12))      # in order
    assert len({pid for _, pid in results}) == 2                   # two slots, two processes
    again = engine.map(which_process, list(range(4)), Resources(cpus=1))
    assert [task for task, _ in again] == list(range(4))           # the slots were given back


def exit_once(task):
    marker, value = task
    if value == 5 and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)           # the actor's process dies with this part in flight
    return value, os.getpid()


def test_a_lost_actor_costs_only_its_part(engine, tmp_path):
    """The part of an actor that died is run again on another actor; the rest are not."""
    marker = str(tmp_path / "died")
    results = engine.map(exit_once, [(marker, i) for i in range(12)], Resources(cpus=1, stateful=True))
    assert [task for task, _ in results] == list(range(12))
    assert os.path.exists(marker)
