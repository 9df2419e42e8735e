"""One slow host does not hold the download step: with the default settings a task stops
starting fetches at 1.5x the time its worker's earlier tasks took for as many rows, and the
rows it did not reach run as smaller tasks spread over the workers, with the same result as a
run that waits for the slow host."""
import json
import statistics

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.testing.fakeweb import FakeWeb
from pipeline.testing.world import make_world
from tests.support import assert_same_result, read_dataset, run

pytestmark = pytest.mark.slow  # image downloads from slow hosts, clip_score, on every engine

PARTS, ROWS = 8, 32     # download tasks of 32 rows, two fetch threads each
SLOW_PART = 3           # every row of this part is on the slow host


def straggler_input(folder, web, slow) -> str:
    """Rows on a host answering in 40 ms, and one part's rows on one answering in 160 ms."""
    world = make_world(PARTS * ROWS, seed=11, image_size=48)
    urls = []
    for i, sample in enumerate(world):
        host = slow if i // ROWS == SLOW_PART else web
        host.add_image(f"/s/{i}.jpg", sample.jpg, delay_ms=160 if host is slow else 40)
        urls.append(host.url(f"/s/{i}.jpg"))
    path = folder / "pairs.parquet"
    pq.write_table(pa.table({"url": urls, "text": [s.caption for s in world]}), path)
    return str(path)


def config(pairs: str, output, **download) -> dict:
    return {"input": {"path": [pairs], "part_rows": ROWS}, "output": str(output), "engine": "local",
            "processes": 2, "allow_networks": ["127.0.0.0/8"],
            "download": {"image_size": 48, "threads": 2, "timeout": 5, "part_rows": ROWS, **download},
            "shard": {"samples_per_shard": 10}}


def task_seconds(run_dir) -> dict[str, list[float]]:
    """Each download task's working time (without the worker's one-time set-up), by phase."""
    step = run_dir / "steps" / "01_download"
    record = json.loads((step / "stats.json").read_text())
    return {phase["name"]: [(lambda s: s["seconds"] - s["setup_seconds"])(json.loads(p.read_text()))
                            for p in sorted((step / phase["name"] / "done").glob("*.json"))]
            for phase in record["phases"]}


def test_a_slow_host_does_not_hold_the_download_step(tmp_path):
    with FakeWeb() as web, FakeWeb(host="127.0.0.3") as slow:
        pairs = straggler_input(tmp_path, web, slow)
        waiting = tmp_path / "waiting"
        run(config(pairs, waiting, task_deadline=None, straggler_factor=None))
        spread = tmp_path / "spread"
        summary = run(config(pairs, spread))   # the defaults
        slow_requests = sum(slow.count(f"/s/{i}.jpg") for i in range(PARTS * ROWS))

    waited = task_seconds(waiting)
    assert list(waited) == ["map"]
    median = statistics.median(waited["map"])
    assert max(waited["map"]) > 2.5 * median, "without a deadline the slow part is a straggler"

    phases = task_seconds(spread)
    assert list(phases)[:2] == ["map", "rest1"], "the slow part's rest ran as more tasks"
    assert len(phases["rest1"]) > 1
    every_task = [s for seconds in phases.values() for s in seconds]
    median = statistics.median(phases["map"])
    assert max(every_task) <= 2 * median, (max(every_task), median, phases)

    assert_same_result(spread, waiting)
    assert slow_requests == 2 * ROWS, "each slow URL fetched once per run"
    download = next(s for s in summary["stages"] if s["name"] == "download")
    assert download["rows_in"] == PARTS * ROWS == download["rows_out"] + sum(download["dropped"].values())


@pytest.mark.parametrize("engine", ["ray", "spark"])
def test_deferred_rows_give_the_same_result_on_every_engine(tmp_path, engine):
    """A fixed deadline short enough to defer rows on any machine: the rest runs as more
    tasks on Ray and Spark too, and the result equals the local run that waited."""
    with FakeWeb() as web, FakeWeb(host="127.0.0.3") as slow:
        pairs = straggler_input(tmp_path, web, slow)
        run(config(pairs, tmp_path / "waiting", task_deadline=None, straggler_factor=None))
        cut = config(pairs, tmp_path / engine, task_deadline=1.0, straggler_factor=None)
        run({**cut, "engine": engine, "ray": {"num_cpus": 2}, "spark": {"master": "local[2]"}})
    assert "rest1" in task_seconds(tmp_path / engine)
    assert_same_result(tmp_path / engine, tmp_path / "waiting")


def test_the_steps_after_a_deferral_cut_the_same_tasks(tmp_path, tiny_clip_checkpoint):
    """CLIP scores depend (in their last bits) on the batch a row is encoded in: the rest's
    pieces are read with their part by the steps after download (through image_dedup too),
    so clip_score runs the same tasks and batches, and the scores and tars are byte-equal."""
    clip = {"model": "curate-tiny", "pretrained": str(tiny_clip_checkpoint), "device": "cpu",
            "precision": "fp32", "batch_size": 12, "threshold": -1.0}
    with FakeWeb() as web, FakeWeb(host="127.0.0.3") as slow:
        pairs = straggler_input(tmp_path, web, slow)
        for name, deadline in (("waiting", None), ("cut", 1.0)):
            run({**config(pairs, tmp_path / name, task_deadline=deadline, straggler_factor=None),
                 "image_dedup": {"phash_distance": 0}, "clip_score": clip})
    assert "rest1" in task_seconds(tmp_path / "cut")
    step = next((tmp_path / "cut" / "steps").glob("*_clip_score"))
    assert len(list((step / "map" / "done").glob("*.json"))) == PARTS
    scores = [dict(zip(*(read_dataset(f"{tmp_path / name}/kept")[c].to_pylist() for c in ("uid", "clip_score"))))
              for name in ("cut", "waiting")]
    assert scores[0] == scores[1]
    assert_same_result(tmp_path / "cut", tmp_path / "waiting")
