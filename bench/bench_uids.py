"""Writing uids.npy on the driver: the k-way merge of the finalize tasks' sorted shares into a
memory-mapped file, against what DataComp's apply_filter.py does (every uid in memory,
concatenated, sorted, saved). Each side runs in a fresh process; it reports seconds, the
process's peak RSS above its RSS at the start (Linux: VmHWM reset through clear_refs; it
counts the memory-mapped output's pages it touched, which are the page cache's and can be
written back at any time), and the peak of Python/numpy heap allocations (tracemalloc).

    python bench/bench_uids.py [--rows 10000000] [--parts 100 1000] [--modes merge in_memory]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import parse_args, report  # noqa: E402
from pipeline.core import uid_arrays  # noqa: E402


def make_shares(folder: Path, rows: int, parts: int) -> tuple[list[str], list[int]]:
    """`parts` sorted shares of `rows` random uids in all (as finalize tasks write them)."""
    rng = np.random.default_rng(0)
    files, counts = [], []
    for index, size in enumerate(np.diff(np.linspace(0, rows, parts + 1).astype(np.int64))):
        hi, lo = uid_arrays.sorted_unique(rng.integers(0, 2 ** 64 - 1, size, np.uint64, endpoint=True),
                                          rng.integers(0, 2 ** 64 - 1, size, np.uint64, endpoint=True))
        path = folder / f"part-{index:05d}.u8u8"
        path.write_bytes(uid_arrays.as_array(hi, lo).tobytes())
        files.append(str(path))
        counts.append(len(hi))
    return files, counts


def measure(mode: str, files: list[str], counts: list[int], target: str) -> dict:
    import tracemalloc

    Path("/proc/self/clear_refs").write_text("5")   # resets the peak RSS (VmHWM) to the current RSS
    base = status_kb("VmRSS")
    tracemalloc.start()
    started = time.perf_counter()
    if mode == "merge":
        rows = uid_arrays.merge_parts(files, counts, target)
    else:   # DataComp: np.concatenate of every share, sort, np.save
        uids = np.concatenate([np.fromfile(f, uid_arrays.UID_DTYPE) for f in files])
        uids.sort()
        with open(target, "wb") as stream:
            np.save(stream, uids)
        rows = len(uids)
    seconds = time.perf_counter() - started
    heap = tracemalloc.get_traced_memory()[1]
    peak = status_kb("VmHWM")
    return {"rows": rows, "seconds": round(seconds, 2), "heap_peak_mb": round(heap / 2 ** 20, 1),
            "peak_rss_above_start_mb": round((peak - base) / 1024, 1)}


def status_kb(field: str) -> int:
    """A /proc/self/status field, in KiB (Linux)."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field))
    return int(line.split()[1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--parts", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--modes", nargs="+", default=["merge", "in_memory"], choices=["merge", "in_memory"])
    parser.add_argument("--measure", nargs=2, help=argparse.SUPPRESS)   # MODE FOLDER (child process)
    args = parse_args(parser, smoke={"rows": 20_000, "parts": [4, 40]})
    if args.measure:
        mode, folder = args.measure
        shares = json.loads((Path(folder) / "shares.json").read_text())
        print(json.dumps(measure(mode, shares["files"], shares["counts"], str(Path(folder) / f"{mode}.npy"))))
        return
    results = {}
    for parts in args.parts:
        with tempfile.TemporaryDirectory() as folder:
            files, counts = make_shares(Path(folder), args.rows, parts)
            (Path(folder) / "shares.json").write_text(json.dumps({"files": files, "counts": counts}))
            for mode in args.modes:
                out = subprocess.run([sys.executable, __file__, "--measure", mode, folder], check=True,
                                     capture_output=True, text=True).stdout
                results[f"{mode}_{args.rows}_rows_{parts}_parts"] = json.loads(out.strip().splitlines()[-1])
            if len(args.modes) == 2:
                same = np.array_equal(np.load(Path(folder) / "merge.npy"), np.load(Path(folder) / "in_memory.npy"))
                results[f"identical_{parts}_parts"] = bool(same)
    report("uids_merge", results)


if __name__ == "__main__":
    main()
