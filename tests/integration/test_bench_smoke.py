"""Every benchmark runs once at a tiny size (`bench/run_all.py --smoke`), so a change that
breaks one (a setting added to a stage and not to the benchmark, a renamed helper) fails
`make test` instead of `make bench` weeks later."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
from run_all import smoke_entries  # noqa: E402

BENCHES = [entry.split()[0] for entry in smoke_entries()]


@pytest.mark.slow
@pytest.mark.parametrize("bench", BENCHES)
def test_bench_runs_at_a_tiny_size(bench):
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "run_all.py"), "--smoke", "--only", bench],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"### {bench} --smoke:" in done.stdout   # it ran (not skipped as missing)
