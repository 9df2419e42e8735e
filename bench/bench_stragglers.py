"""Stragglers: one slow host among fast ones, the download step waiting for it (no deadline)
and with the default deadlines (`straggler_factor` 1.5, `task_deadline` 600 s).

6 download tasks of 96 rows on the local engine; the rows of one task are all on a host
answering in 200 ms, the rest on one answering in 25 ms (4 fetch threads per task). Reported:
the step's seconds both ways, the longest task over the median task (working time, set-up
excluded), and whether the kept set and tars are identical. Target: longest <= 2x median
with the deadline. (The step's seconds include starting the local engine's worker processes,
several seconds on a small machine, the same both ways.)
"""
from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import parse_args, report  # noqa: E402

PARTS, ROWS, SLOW_PART = 6, 96, 3


def world_input(folder: Path, fast, slow) -> str:
    from pipeline.testing.world import make_world

    world = make_world(PARTS * ROWS, seed=3, image_size=64)
    urls = []
    for i, sample in enumerate(world):
        host = slow if i // ROWS == SLOW_PART else fast
        host.add_image(f"/b/{i}.jpg", sample.jpg, delay_ms=200 if host is slow else 25)
        urls.append(host.url(f"/b/{i}.jpg"))
    path = folder / "pairs.parquet"
    pq.write_table(pa.table({"url": urls, "text": [s.caption for s in world]}), path)
    return str(path)


def run_once(pairs: str, output: Path, **download) -> dict:
    from pipeline.app import run_pipeline
    from pipeline.config import settings_from_dict

    config = {"input": {"path": [pairs], "part_rows": ROWS}, "output": str(output), "processes": 2,
              "allow_networks": ["127.0.0.0/8"],
              "download": {"image_size": 64, "threads": 4, "timeout": 5, "part_rows": ROWS, **download},
              "shard": {"samples_per_shard": 50}}
    run_pipeline(settings_from_dict(config, "bench"), str(output), log=lambda *_: None)
    step = output / "steps" / "01_download"
    record = json.loads((step / "stats.json").read_text())
    seconds = {p["name"]: [(lambda s: s["seconds"] - s["setup_seconds"])(json.loads(f.read_text()))
                           for f in sorted((step / p["name"] / "done").glob("*.json"))]
               for p in record["phases"]}
    every = [s for values in seconds.values() for s in values]
    tars = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted((output / "shards").glob("*.tar"))}
    return {"step_seconds": record["seconds"], "tasks": len(every),
            "longest_over_median": round(max(every) / statistics.median(seconds["map"]), 2),
            "tars": tars}


def main() -> None:
    from pipeline.testing.fakeweb import FakeWeb

    global PARTS, ROWS, SLOW_PART
    if parse_args(argparse.ArgumentParser(description=__doc__.split("\n")[0])).smoke:
        PARTS, ROWS, SLOW_PART = 2, 12, 1

    with tempfile.TemporaryDirectory() as tmp, FakeWeb() as fast, FakeWeb(host="127.0.0.3") as slow:
        folder = Path(tmp)
        pairs = world_input(folder, fast, slow)
        started = time.perf_counter()
        waiting = run_once(pairs, folder / "waiting", task_deadline=None, straggler_factor=None)
        spread = run_once(pairs, folder / "spread")
        total = time.perf_counter() - started
    results = {"rows": PARTS * ROWS, "slow_rows": ROWS,
               **{f"waiting_{k}": v for k, v in waiting.items() if k != "tars"},
               **{f"deadline_{k}": v for k, v in spread.items() if k != "tars"},
               "same_tars": waiting["tars"] == spread["tars"], "bench_seconds": round(total, 1),
               "ratio": spread["longest_over_median"], "target_ratio": 2.0}
    report("stragglers", results)


if __name__ == "__main__":
    main()
