"""Tar writing: ours beside webdataset's TarWriter on the same samples, same process, for tiny
and for 256 px images.

1. `write_shards` (the (uid, seed) hash order, the `json` member from the row's columns, fixed
   mtimes, atomic renames with fsync, sizes.json) beside a raw webdataset loop: rows in input
   order, one `TarWriter` per `samples_per_shard` rows, members jpg/txt/json, no shuffle,
   rename, fsync or sizes.json.
2. The writer alone: `shards.TarStream` beside `TarWriter` on the same prepared sample dicts
   (the same bytes come out: checked).

Runs alternate; best of `--repeat`. Target: ratio (TarWriter's time / ours) >= 0.8.

    python bench/bench_shards.py [--n 20000] [--image-sizes 24 256] [--samples-per-shard 2000]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import parse_args, report  # noqa: E402
from pipeline.shards import TarStream, samples_of, shard_keys, write_shards  # noqa: E402
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


def tarwriter_only(samples: list[dict], path: Path) -> str:
    import webdataset as wds

    with open(path, "wb") as stream:
        writer = wds.TarWriter(stream, encoder=False, mtime=0, user="", group="", mode=0o444)
        for sample in samples:
            writer.write(sample)
        writer.close()
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tarstream_only(samples: list[dict], path: Path) -> str:
    with open(path, "wb") as stream:
        return TarStream(stream).write_all(samples)


def side_by_side(sides: dict, repeat: int, folder: Path) -> dict:
    """Best seconds of each side, runs alternating; each side gets a fresh folder."""
    best = dict.fromkeys(sides, float("inf"))
    for attempt in range(repeat):
        for name, run in sides.items():
            out = folder / f"{name}{attempt}"
            out.mkdir()
            start = time.perf_counter()
            run(out)
            best[name] = min(best[name], time.perf_counter() - start)
            shutil.rmtree(out)
    return best


def measure(n: int, image_size: int, per: int, repeat: int) -> dict:
    table = sample_table(n, image_size)
    samples = list(samples_of(table, shard_keys(0, n, n)))
    with tempfile.TemporaryDirectory() as tmp:
        check = Path(tmp) / "check.tar"
        same = tarwriter_only(samples, check) == tarstream_only(samples, check)
        whole = side_by_side({"raw": lambda out: raw_webdataset(table, out, per),
                              "ours": lambda out: write_shards(table, out, per, seed=0, warn_few=False)},
                             repeat, Path(tmp))
        writer = side_by_side({"tarwriter": lambda out: tarwriter_only(samples, out / "0.tar"),
                               "tarstream": lambda out: tarstream_only(samples, out / "0.tar")},
                              repeat, Path(tmp))
    return {"samples": n, "image_size": image_size, "image_megabytes": round(table["jpg"].nbytes / 1e6, 1),
            "samples_per_shard": per,
            "raw_tarwriter_samples_per_s": round(n / whole["raw"]),
            "write_shards_samples_per_s": round(n / whole["ours"]),
            "ratio": round(whole["raw"] / whole["ours"], 3),
            "writer_tarwriter_samples_per_s": round(n / writer["tarwriter"]),
            "writer_tarstream_samples_per_s": round(n / writer["tarstream"]),
            "writer_ratio": round(writer["tarwriter"] / writer["tarstream"], 3),
            "same_bytes_as_tarwriter": same}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--image-sizes", type=int, nargs="+", default=[24, 256])
    parser.add_argument("--samples-per-shard", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parse_args(parser, argv, smoke={"n": 200, "samples_per_shard": 50, "repeat": 1})
    results = {"target": 0.8}
    for size in args.image_sizes:
        results[f"{size}px"] = measure(args.n, size, args.samples_per_shard, args.repeat)
    report("shards", results)
    return results


if __name__ == "__main__":
    main()
