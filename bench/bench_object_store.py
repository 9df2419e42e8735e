"""The same run on local disk and in a bucket on loopback (moto_server behind a counting proxy):
the time ratio, and PUT/GET/HEAD/LIST requests per 1,000 kept pairs next to the minimum the
layout needs.

download -> image_dedup -> clip_score -> shard over photo-like JPEGs served on loopback; the
bucket run reads its input from the bucket and writes its whole run folder there. Runs
alternate (local, bucket, bucket, local); the best of each is reported. Minimums: one PUT per
object the run leaves in the bucket (each written once), one GET per distinct key it asked for
(an object read, or a marker checked: a missing one is a GET answered 404); no LIST at all.

    python bench/bench_object_store.py [--photos 400]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_global_steps import reference_model, serve  # noqa: E402
from common import caption_table, parse_args, report, server_process  # noqa: E402

BUCKET = "bench"


def config(input_path: str, run_dir: str, checkpoint: str) -> dict:
    return {"input": {"path": [input_path]}, "output": run_dir, "processes": 2,
            "allow_networks": ["127.0.0.1/32"],
            "download": {"image_size": 256, "threads": 16, "part_rows": 100},
            "image_dedup": {"phash_distance": 2},
            "clip_score": {"model": "curate-tiny", "pretrained": checkpoint, "device": "cpu",
                           "precision": "fp32", "filter": "none"},
            "shard": {"samples_per_shard": 100}}


def timed_run(cfg: dict) -> tuple[float, dict]:
    from pipeline.app import run_pipeline
    from pipeline.config import settings_from_dict

    started = time.perf_counter()
    summary = run_pipeline(settings_from_dict(cfg, "bench"), cfg["output"], log=lambda *_: None)
    return time.perf_counter() - started, summary


def main(argv: list[str] | None = None) -> dict:
    import os

    from pipeline.core import storage
    from pipeline.testing.objectstore import ObjectStore

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=400)
    args = parse_args(parser, argv, smoke={"photos": 8})
    rng = np.random.default_rng(0)
    sizes = [(int(rng.integers(200, 801)), int(rng.integers(200, 801))) for _ in range(args.photos)]
    checkpoint = str(reference_model())
    with tempfile.TemporaryDirectory() as tmp, server_process(serve, sizes) as port, ObjectStore() as store:
        os.environ.update(store.env())
        storage.configure({})
        store.create_bucket(BUCKET)
        urls = [f"http://127.0.0.1:{port}/p/{i}.jpg" for i in range(args.photos)]
        pairs = Path(tmp) / "pairs.parquet"
        pq.write_table(pa.table({"url": urls, "text": caption_table(args.photos)["text"].to_pylist()}), pairs)
        store.put(BUCKET, "in/pairs.parquet", pairs.read_bytes())
        local_times, bucket_times, requests = [], [], None
        for attempt, where in enumerate(["local", "bucket", "bucket", "local"]):
            if where == "local":
                seconds, summary = timed_run(config(str(pairs), f"{tmp}/run-{attempt}", checkpoint))
                local_times.append(seconds)
                continue
            store.reset_counts()
            run_dir = f"s3://{BUCKET}/run-{attempt}"
            seconds, summary = timed_run(config(f"s3://{BUCKET}/in/pairs.parquet", run_dir, checkpoint))
            bucket_times.append(seconds)
            if requests is None:
                requests = request_counts(store, f"run-{attempt}/", summary["kept_rows"])
    results = {"photos": args.photos, "kept": summary["kept_rows"],
               "local_s": round(min(local_times), 2), "bucket_s": round(min(bucket_times), 2),
               "bucket_vs_local": round(min(bucket_times) / min(local_times), 2), **requests}
    report("object_store", results)
    return results


def request_counts(store, prefix: str, kept: int) -> dict:
    """Requests of one bucket run per 1,000 kept pairs, and the layout's minimums."""
    done = [r for r in store.requests() if r.status]
    by_kind = Counter(("LIST" if r.method == "GET" and not r.key else r.method) for r in done)
    objects = [k for k in store.list_keys(BUCKET, prefix)]
    read = {r.key for r in done if r.method == "GET" and r.key}
    per_k = 1000 / max(kept, 1)
    return {"requests_per_1000_kept": {k: round(v * per_k, 1) for k, v in sorted(by_kind.items())},
            "minimum_per_1000_kept": {"PUT": round(len(objects) * per_k, 1),
                                      "GET": round(len(read) * per_k, 1), "LIST": 0.0},
            "objects_written": len(objects), "distinct_objects_read": len(read),
            "failed_requests": sum(1 for r in store.requests() if not r.status or r.status >= 500)}


if __name__ == "__main__":
    main()
