"""`curate demo`: the main job, offline, on the embedded local engine."""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import yaml

from pipeline.core.config import settings_from_dict
from pipeline.core.runner import run_pipeline
from pipeline.demo.text_sample import text_sample


def demo_config(sample_path: Path, output: Path) -> dict:
    return {
        "input": {"path": [str(sample_path)], "url_col": "url", "text_col": "text", "part_rows": 5000},
        "output": str(output),
        "engine": "local",
        "seed": 0,
        "dedup": {"keys": ["url", "text"]},
        "caption_filter": {"min_chars": 5, "max_chars": 1000, "min_words": 2},
        "language": {"keep": ["en"], "min_score": 0.5},
        "metadata": {"entries": ["wordnet", "wordfreq:50000"], "t": 500},
    }


def run_demo(output: Path, rows: int = 20_000, log=print) -> dict:
    output.mkdir(parents=True, exist_ok=True)
    sample_path = output / "input" / "sample.parquet"
    if not sample_path.exists():
        sample_path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(text_sample(rows, seed=0), sample_path)
    config = demo_config(sample_path, output)
    (output / "demo.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    settings = settings_from_dict(config, str(output / "demo.yaml"))
    log(f"demo: {rows:,} generated pairs -> {output}")
    summary = run_pipeline(settings, output, log=log)
    log(f"demo: kept {summary['kept_rows']:,} of {summary['input_rows']:,} pairs; "
        f"see {output}/summary.json, {output}/kept/ and {output}/ledger/")
    return summary
