"""`make bench`: every side-by-side benchmark, one after another (they each use the whole
machine), then one table of the results saved in bench/results/.

`--smoke` (run by `make test`, tests/integration/test_bench_smoke.py): every benchmark of
BENCHES and SMOKE_ONLY once at a tiny size (its `--smoke`), results in a scratch folder, so
none can break unnoticed. A new benchmark takes `--smoke` (`common.parse_args`) and goes in
one of the lists."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# a bench, and the arguments `make bench` gives it
BENCHES = ["bench_text.py", "bench_download.py", "bench_crawl.py", "bench_phash.py",
           "bench_clip_score.py", "bench_shards.py", "bench_train.py", "bench_global_steps.py",
           "bench_object_store.py", "bench_stragglers.py", "bench_pool_filter.py --quick",
           "bench_metadata_languages.py", "bench_pdq.py", "bench_detectors.py", "bench_text_mask.py"]
# benchmarks `make bench` leaves out (long, or measured on request) that the smoke run still runs
SMOKE_ONLY = ["bench_decontaminate.py", "bench_pool_embeddings.py", "bench_uids.py"]


def smoke_entries() -> list[str]:
    return [entry.split()[0] + " --smoke" for entry in BENCHES + SMOKE_ONLY]


def run(entries: list[str], env: dict | None = None) -> list[str]:
    """Run each entry (a bench and its arguments); the names of those that failed."""
    failed = []
    for entry in entries:
        name, *arguments = entry.split()
        if not (HERE / name).exists():
            continue
        print(f"\n### {entry}", flush=True)
        started = time.perf_counter()
        if subprocess.run([sys.executable, str(HERE / name), *arguments], cwd=HERE.parent, env=env).returncode:
            failed.append(name)
        print(f"### {entry}: {time.perf_counter() - started:.1f}s", flush=True)
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="every benchmark once at a tiny size")
    parser.add_argument("--only", nargs="+", help="of the smoke run: only these benches")
    args = parser.parse_args(argv)
    if args.smoke:
        entries = [e for e in smoke_entries() if not args.only or e.split()[0] in args.only]
        with tempfile.TemporaryDirectory(prefix="bench-smoke-") as results:
            failed = run(entries, {**os.environ, "CURATE_BENCH_RESULTS": results})
    else:
        failed = run(BENCHES)
        print("\n### results (bench/results/*.json)")
        for path in sorted((HERE / "results").glob("*.json")):
            print(f"{path.stem}: {json.dumps(json.loads(path.read_text()))}")
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
