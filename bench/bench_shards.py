"""write_shards vs a raw webdataset TarWriter loop on the same samples, same process.

The raw loop is what one writes with webdataset alone: rows in input order, one TarWriter per
`samples_per_shard` rows, members jpg/txt/json (json from the row's other columns), no
shuffle, no atomic rename, no fsync, no sizes.json. Ours adds the (uid, seed) hash order,
fixed mtimes, atomic renames and sizes.json. Runs alternate; best of `--repeat`.

    python bench/bench_shards.py [--n 20000] [--image-size 256] [--samples-per-shard 2000]
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import report  # noqa: E402
from pipeline.shards import write_shards  # noqa: E402
from pipeline.testing.world import world_rows  # noqa: E402


def sample_table(n: int, image_size: int) -> pa.Table:
    """`n` rows built from 512 distinct world images (JPEG bytes of a realistic size)."""
    base = world_rows(min(n, 512), seed=0, image_size=image_size)
    rows = [dict(base[i % len(base)], uid=f"{i:032x}", url=f"https://example.org/{i}.jpg") for i in range(n)]
    table = pa.Table.from_pylist(rows)
    scores = np.random.default_rng(0).uniform(0.2, 0.4, n).astype(np.float32)
    return table.append_column("clip_score", pa.array(scores, pa.float32()))


def raw_webdataset(table: pa.Table, out: Path, samples_per_shard: int) -> int:
    import webdataset as wds

    rows = table.to_pylist()
    for shard, start in enumerate(range(0, len(rows), samples_per_shard)):
        with wds.TarWriter(str(out / f"{shard:05d}.tar")) as writer:
            for i, row in enumerate(rows[start:start + samples_per_shard]):
                meta = {k: v for k, v in row.items() if k not in ("jpg", "text")}
                writer.write({"__key__": f"{shard:05d}{i:05d}", "jpg": row["jpg"], "txt": row["text"],
                              "json": json.dumps(meta).encode()})
    return len(rows)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--samples-per-shard", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    table = sample_table(args.n, args.image_size)
    raw_best = ours_best = float("inf")
    with tempfile.TemporaryDirectory() as tmp:
        for attempt in range(args.repeat):
            for name in ("raw", "ours"):
                out = Path(tmp) / f"{name}{attempt}"
                out.mkdir()
                start = time.perf_counter()
                if name == "raw":
                    raw_webdataset(table, out, args.samples_per_shard)
                else:
                    write_shards(table, out, args.samples_per_shard, seed=0)
                seconds = time.perf_counter() - start
                if name == "raw":
                    raw_best = min(raw_best, seconds)
                else:
                    ours_best = min(ours_best, seconds)
                shutil.rmtree(out)
    megabytes = table["jpg"].nbytes / 1e6
    results = {"samples": args.n, "image_megabytes": round(megabytes, 1),
               "samples_per_shard": args.samples_per_shard,
               "raw_tarwriter_samples_per_s": round(args.n / raw_best),
               "write_shards_samples_per_s": round(args.n / ours_best),
               "ratio": round(raw_best / ours_best, 3), "target": 0.8}
    report("shards", results)
    return results


if __name__ == "__main__":
    main()
