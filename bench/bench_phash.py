"""Near-duplicate search of 100k random 64-bit perceptual hashes (some planted near
duplicates) through image_dedup's banded LSH (`pipeline.stages.phash_lsh`): band keys -> buckets -> pairwise comparison
inside each key group. Pure functions, no engine. Target: < 10 s at phash_distance 4.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import parse_args, report  # noqa: E402
from pipeline.stages.phash_lsh import band_keys, key_bucket, later_duplicates  # noqa: E402

HASHES, PLANTED, BUCKETS = 100_000, 5_000, 8


def corpus(distance: int, seed: int = 0):
    """Random hashes, the last PLANTED ones copies of earlier ones with 1..distance bits flipped."""
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**64, HASHES, dtype=np.uint64, endpoint=False)
    sources = rng.choice(HASHES - PLANTED, PLANTED, replace=False)
    for k, source in enumerate(sources):
        bits = rng.choice(64, int(rng.integers(1, max(distance, 1) + 1)), replace=False)
        hashes[HASHES - PLANTED + k] = hashes[source] ^ np.uint64(sum(1 << int(b) for b in bits))
    return hashes, np.arange(HASHES, dtype=np.int64)  # planted copies come later


def search(hashes: np.ndarray, pos: np.ndarray, distance: int) -> tuple[np.ndarray, int, int]:
    """Rows with an earlier near duplicate, bucket by bucket as the `pairs` phase does."""
    rows, band, value = band_keys(hashes, distance)
    bucket = key_bucket(band, value, BUCKETS)
    dropped = np.zeros(len(hashes), dtype=bool)
    largest = 0
    for b in range(BUCKETS):
        mine = np.flatnonzero(bucket == b)
        found = later_duplicates(band[mine], value[mine], hashes[rows[mine]], pos[rows[mine]], distance)
        dropped[rows[mine][found]] = True
        largest = max(largest, len(mine))
    return dropped, len(rows), largest


def main() -> None:
    global HASHES, PLANTED
    if parse_args(argparse.ArgumentParser(description=__doc__.split("\n")[0])).smoke:
        HASHES, PLANTED = 2_000, 100
    results = {"hashes": HASHES, "planted_near_duplicates": PLANTED, "buckets": BUCKETS}
    for distance in (4, 6, 8):
        hashes, pos = corpus(distance)
        start = time.perf_counter()
        dropped, key_rows, largest = search(hashes, pos, distance)
        seconds = time.perf_counter() - start
        planted_found = int(dropped[HASHES - PLANTED:].sum())
        assert planted_found == PLANTED, f"missed planted near duplicates ({planted_found})"
        results[f"d{distance}_seconds"] = round(seconds, 3)
        results[f"d{distance}_dropped"] = int(dropped.sum())
        results[f"d{distance}_key_rows"] = key_rows
    results["seconds"] = results["d4_seconds"]
    results["target_s"] = 10.0
    results["ratio_target_over_seconds"] = round(10.0 / results["seconds"], 1)
    report("phash", results)


if __name__ == "__main__":
    main()
