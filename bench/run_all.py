"""`make bench`: every side-by-side benchmark, one after another (they each use the whole
machine), then one table of the results saved in bench/results/."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = ["bench_text.py", "bench_download.py", "bench_crawl.py", "bench_phash.py",
           "bench_clip_score.py", "bench_shards.py", "bench_train.py", "bench_global_steps.py",
           "bench_object_store.py", "bench_stragglers.py", "bench_pool_filter.py --quick"]


def main() -> int:
    failed = []
    for entry in BENCHES:
        name, *arguments = entry.split()   # a bench, and the arguments `make bench` gives it
        if not (HERE / name).exists():
            continue
        print(f"\n### {entry}", flush=True)
        if subprocess.run([sys.executable, str(HERE / name), *arguments], cwd=HERE.parent).returncode:
            failed.append(name)
    print("\n### results (bench/results/*.json)")
    for path in sorted((HERE / "results").glob("*.json")):
        print(f"{path.stem}: {json.dumps(json.loads(path.read_text()))}")
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
