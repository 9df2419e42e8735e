"""Pool embeddings at ingest (`input.embeddings`) and the image_based stage, on a generated
DataComp-format pool file (parquet + npz of float16 l14_img [rows, 768] and b32_img [rows, 512]).

Reports ingest rows/s without embeddings, with them from an uncompressed npz (`np.savez`,
one byte range per part and array) and from a compressed one (`np.savez_compressed`, each
part decompresses the member from its start), the time and peak heap of reading the last
part of each (the worst case for the compressed one), and image_based rows/s.

    python bench/bench_pool_embeddings.py [--rows 200000] [--part-rows 20000] [--clusters 1000]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import parse_args, report  # noqa: E402
from pipeline.app import run_pipeline  # noqa: E402
from pipeline.config import settings_from_dict  # noqa: E402
from pipeline.stages import pool_embeddings  # noqa: E402


def make_pool(folder: Path, rows: int, compressed: bool) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "00000000.parquet"
    table = pa.table({"uid": [f"{v:032x}" for v in rng.integers(1, 2 ** 62, rows)],
                      "url": [f"https://img{i % 97}.example.org/{i}.jpg" for i in range(rows)],
                      "text": [f"a photo of thing number {i}" for i in range(rows)]})
    pq.write_table(table, path, row_group_size=5000)
    arrays = {}
    for name, dim in (("l14_img", 768), ("b32_img", 512)):
        x = rng.standard_normal((rows, dim), dtype=np.float32)
        arrays[name] = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)
    (np.savez_compressed if compressed else np.savez)(folder / "00000000.npz", **arrays)
    return path


def ingest_seconds(pool: Path, output: Path, part_rows: int, embeddings: list, extra: dict = None) -> dict:
    config = {"input": {"path": [str(pool)], "uid_col": "uid", "part_rows": part_rows, "embeddings": embeddings},
              "output": str(output), "processes": 2, **(extra or {})}
    started = time.perf_counter()
    summary = run_pipeline(settings_from_dict(config, "bench.yaml"), str(output), log=lambda *_: None)
    return {"wall_s": round(time.perf_counter() - started, 2),
            **{s["name"]: round(s["seconds"], 2) for s in summary["stages"]}}


def last_part_read(npz: Path, rows: int, part_rows: int) -> dict:
    tracemalloc.start()
    started = time.perf_counter()
    found = pool_embeddings.read_rows(str(npz), ["l14_img", "b32_img"], rows - part_rows, part_rows)
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"seconds": round(seconds, 3), "peak_heap_mb": round(peak / 2 ** 20, 1),
            "rows_mb": round(sum(a.nbytes for a in found.values()) / 2 ** 20, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--part-rows", type=int, default=20_000)
    parser.add_argument("--clusters", type=int, default=1000)
    args = parse_args(parser, smoke={"rows": 2000, "part_rows": 500, "clusters": 10})
    results: dict = {"rows": args.rows, "part_rows": args.part_rows}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for kind, compressed in (("stored", False), ("compressed", True)):
            pool = make_pool(tmp / kind, args.rows, compressed)
            results[f"npz_{kind}_mb"] = round((tmp / kind / "00000000.npz").stat().st_size / 2 ** 20, 1)
            results[f"last_part_read_{kind}"] = last_part_read(tmp / kind / "00000000.npz", args.rows, args.part_rows)
            if kind == "stored":
                plain = ingest_seconds(pool, tmp / "run-plain", args.part_rows, [])
                results["ingest_without_embeddings"] = {**plain, "rows_per_s": round(args.rows / plain["ingest"])}
            timing = ingest_seconds(pool, tmp / f"run-{kind}", args.part_rows, ["l14_img", "b32_img"])
            results[f"ingest_with_embeddings_{kind}"] = {**timing, "rows_per_s": round(args.rows / timing["ingest"])}
        rng = np.random.default_rng(1)
        np.save(tmp / "centroids.npy", rng.standard_normal((args.clusters, 768), dtype=np.float32))
        np.save(tmp / "targets.npy", rng.standard_normal((10_000, 768), dtype=np.float32).astype(np.float16))
        section = {"image_based": {"centroids": str(tmp / "centroids.npy"), "targets": [str(tmp / "targets.npy")]}}
        timing = ingest_seconds(tmp / "stored" / "00000000.parquet", tmp / "run-image-based", args.part_rows,
                                ["l14_img"], section)
        results["image_based"] = {**timing, "clusters": args.clusters, "targets": 10_000,
                                  "rows_per_s": round(args.rows / timing["image_based"])}
    report("pool_embeddings", results)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
