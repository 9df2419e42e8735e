"""Worldwide metadata (issue 23) on the local, Ray and Spark engines: the same kept rows and
per-language table, with many parts in many tasks."""
import json

import pytest

from tests.integration.test_metadata_languages import curate, step_dir, world  # noqa: F401 (fixture)
from tests.support import kept_uids

pytestmark = pytest.mark.slow  # the Ray and Spark engines


def test_local_ray_spark_keep_the_same_rows(tmp_path, world):  # noqa: F811
    folder, path, _ = world
    tables = {}
    for engine in ("local", "ray", "spark"):
        curate(tmp_path, folder, path, engine, 30, part_rows=37, task_rows=80, engine=engine,
               ray={"num_cpus": 2}, spark={"master": "local[2]"})
        tables[engine] = json.loads((step_dir(tmp_path / engine) / "language_thresholds.json").read_text())
    assert kept_uids(tmp_path / "local") == kept_uids(tmp_path / "ray") == kept_uids(tmp_path / "spark")
    assert tables["local"] == tables["ray"] == tables["spark"]
