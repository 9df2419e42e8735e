"""Text stages, side by side with the raw libraries on the same captions, in one process.

- metadata matching vs raw pyahocorasick iteration (wordnet + wordfreq entries, >= 400k);
- language ID vs raw batched fastText predict;
- the whole text pipeline on the local engine at 1M and 4M rows: rows/s, scaling, peak memory.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, caption_table, captions_source, parse_args, report, timed  # noqa: E402


def bench_matching(table: pa.Table) -> dict:
    import ahocorasick

    from pipeline.stages.metadata import EntryMatcher, MatchEntries
    from pipeline.stages.metadata_entries import load_entries

    entries = load_entries(["wordnet", "wordfreq"])
    raw = ahocorasick.Automaton()
    for i, entry in enumerate(entries):
        raw.add_word(f" {entry} ", i)
    raw.make_automaton()
    texts = [t or "" for t in table["text"].to_pylist()]

    def raw_iteration():
        found = 0
        for text in texts:
            for _ in raw.iter(text):
                found += 1
        return found

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "entries.json"
        path.write_text(json.dumps(entries))
        op = MatchEntries(str(path), True, len(entries))
        op(table.slice(0, 10))  # builds and caches the automaton, as a worker does once
        raw_s, _ = timed(raw_iteration)
        ours_s, _ = timed(lambda: op(table))
    assert isinstance(EntryMatcher, type)
    return {"entries": len(entries), "rows": table.num_rows, "raw_pyahocorasick_s": round(raw_s, 3),
            "metadata_match_s": round(ours_s, 3), "ratio": round(raw_s / ours_s, 3), "target": 0.7}


def bench_language(table: pa.Table) -> dict:
    from pipeline.stages.language import LanguageSettings, LanguageStage

    stage = LanguageStage(LanguageSettings(keep=["en"]))
    stage.setup()
    lines = [(t or "").replace("\n", " ") for t in table["text"].to_pylist()]
    # fasttext-predict's batched call (what `model.predict(list)` wraps; its Python wrapper
    # cannot unpack the labels-only result of this build, so we call it directly)
    raw_s, _ = timed(lambda: stage.model.f.multilinePredict([line + "\n" for line in lines], 1, 0.0, "strict"))
    ours_s, _ = timed(lambda: stage.process(table))
    return {"rows": table.num_rows, "raw_fasttext_predict_s": round(raw_s, 3),
            "language_stage_s": round(ours_s, 3), "ratio": round(raw_s / ours_s, 3), "target": 0.7}


def run_pipeline_measured(input_path: Path, output: Path) -> dict:
    """`curate run` in a child process; wall time and peak RSS of its whole process tree."""
    config = {"input": {"path": [str(input_path)], "part_rows": 100_000}, "output": str(output),
              "dedup": {}, "caption_filter": {}, "language": {"keep": ["en"]},
              "metadata": {"entries": ["wordnet", "wordfreq"], "t": 20000}}
    config_path = output.parent / f"{output.name}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(config_path)],
                            stderr=subprocess.PIPE, text=True)
    peak = [0]
    watcher = threading.Thread(target=watch_rss, args=(proc, peak), daemon=True)
    watcher.start()
    _, err = proc.communicate()
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(err)
    summary = json.loads((output / "summary.json").read_text())
    return {"rows": summary["input_rows"], "kept": summary["kept_rows"], "seconds": round(seconds, 2),
            "rows_per_s": round(summary["input_rows"] / seconds), "peak_rss_gib": round(peak[0] / 2**30, 2)}


def watch_rss(proc, peak) -> None:
    while proc.poll() is None:
        peak[0] = max(peak[0], tree_rss(proc.pid))
        time.sleep(0.2)


def tree_rss(pid: int) -> int:
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            with open(f"/proc/{current}/status") as fh:
                total += next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS"))
            with open(f"/proc/{current}/task/{current}/children") as fh:
                stack.extend(int(c) for c in fh.read().split())
        except (OSError, StopIteration):
            continue
    return total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--scale", type=int, default=4, help="second pipeline run at rows x scale")
    parser.add_argument("--skip-pipeline", action="store_true")
    args = parse_args(parser, smoke={"rows": 2000, "scale": 2})
    table = caption_table(args.rows)
    # generated 8-word captions make the raw loop almost free, so matching's ratio is lower on them
    results = {"captions": captions_source(), "matching": bench_matching(table), "language": bench_language(table)}
    if not args.skip_pipeline:
        with tempfile.TemporaryDirectory(dir=ROOT / "bench") as tmp:
            tmp = Path(tmp)
            small = tmp / "small.parquet"
            pq.write_table(table, small, row_group_size=100_000)
            results["pipeline_1x"] = run_pipeline_measured(small, tmp / "run1")
            big = tmp / "big"
            big.mkdir()
            for i in range(args.scale):
                shifted = caption_table(args.rows, seed=i + 1)
                pq.write_table(shifted, big / f"part{i}.parquet", row_group_size=100_000)
            results[f"pipeline_{args.scale}x"] = run_pipeline_measured(big, tmp / "run4")
        one, many = results["pipeline_1x"], results[f"pipeline_{args.scale}x"]
        results["scaling"] = {"time_ratio": round(many["seconds"] / one["seconds"], 2),
                              "target_max": 4.5, "rows_per_s_target": 40_000, "peak_rss_target_gib": 4}
    report("text", results)


if __name__ == "__main__":
    main()
