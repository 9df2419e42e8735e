"""Helpers shared by tests: sample inputs, configs, and the run-folder invariants."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipeline.testing.text_sample import text_sample

ROOT = Path(__file__).resolve().parents[1]


def write_sample(path: Path, rows: int = 4000, seed: int = 0, row_group: int = 500) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(text_sample(rows, seed), path, row_group_size=row_group)
    return path


def text_config(input_path: Path, output: Path, **extra) -> dict:
    config = {
        "input": {"path": [str(input_path)], "part_rows": 1000},
        "output": str(output),
        "seed": 0,
        "processes": 2,
        "dedup": {"keys": ["url", "text"]},
        "caption_filter": {"min_chars": 5, "max_chars": 200, "min_words": 2},
        "language": {"keep": ["en"], "min_score": 0.3},
        "metadata": {"entries": ["wordnet", "wordfreq:20000"], "t": 50},
    }
    config.update(extra)
    return config


def serve_world(web, rows: int, delay_ms: int = 0) -> tuple[list[str], list[str]]:
    """`rows` world images served by `web` (after `delay_ms` each), and their captions, a
    third of them (every third row) someone else's; returns (urls, texts)."""
    from pipeline.testing.world import make_world, shuffled_captions

    world = make_world(rows, seed=5, image_size=64)
    captions = [s.caption for s in world]
    wrong = shuffled_captions(captions, seed=1)
    urls, texts = [], []
    for i, sample in enumerate(world):
        web.add_image(f"/w/{i}.jpg", sample.jpg, delay_ms=delay_ms)
        urls.append(web.url(f"/w/{i}.jpg"))
        texts.append(captions[i] if i % 3 else wrong[i])
    return urls, texts


def slow_image_config(web, folder: Path, output, engine: str, **extra) -> dict:
    """96 world images served 150 ms apart in parts of 8 rows (12 download tasks: a run can be
    disturbed part-way), downloaded, deduplicated and sharded."""
    import pyarrow as pa

    pairs = folder / "slow-pairs.parquet"
    if not pairs.exists():
        urls, texts = serve_world(web, 96, delay_ms=150)
        pq.write_table(pa.table({"url": urls, "text": texts}), pairs)
    return {"input": {"path": [str(pairs)], "part_rows": 8}, "output": str(output),
            "engine": engine, "processes": 2, "allow_networks": ["127.0.0.1/32"],
            "download": {"image_size": 64, "threads": 2, "timeout": 5, "part_rows": 8},
            "image_dedup": {"phash_distance": 0}, "shard": {"samples_per_shard": 8}, **extra}


def tar_digests(run_dir) -> dict:
    """sha256 of each tar named by a run's `shards/sizes.json` (local or in a bucket)."""
    import hashlib

    from pipeline.core import storage

    shards = storage.join(str(run_dir), "shards")
    return {name: hashlib.sha256(storage.read_bytes(storage.join(shards, name))).hexdigest()
            for name in sorted(storage.read_json(storage.join(shards, "sizes.json")))}


def assert_same_result(run_dir, reference) -> None:
    """The same kept uids, ledger rows and tar bytes as the reference run."""
    assert kept_uids(run_dir) == kept_uids(reference)
    assert ledger_rows(run_dir) == ledger_rows(reference)
    assert tar_digests(run_dir) == tar_digests(reference)


def run(config: dict, source: str = "test.yaml") -> dict:
    """Run a config dict (as a YAML file would give it) quietly; returns the summary."""
    from pipeline.app import run_pipeline
    from pipeline.config import settings_from_dict

    return run_pipeline(settings_from_dict(config, source), config["output"], log=lambda *_: None)


def read_summary(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "summary.json").read_text())


def read_dataset(folder: Path | str) -> pa.Table:
    """A local parquet folder, or a committed folder in a bucket (through its `_SUCCESS`)."""
    from pipeline.core import parts, storage

    if storage.is_local(folder):
        return ds.dataset(str(folder), format="parquet").to_table()
    return parts.concat([parts.read_ref(p) for p in storage.folder_files(str(folder))])


def kept_uids(run_dir: Path | str) -> set:
    return set(read_dataset(f"{run_dir}/kept")["uid"].to_pylist())


def assert_run_invariants(run_dir: Path) -> dict:
    """Conservation in the summary, one ledger row per input row, kept == ledger's kept."""
    run_dir = Path(run_dir)
    summary = read_summary(run_dir)
    stages = summary["stages"]
    assert stages[0]["name"] == "ingest"
    assert stages[0]["rows_in"] == summary["input_rows"]
    for previous, stage in zip([None] + stages, stages):
        assert stage["rows_in"] == stage["rows_out"] + sum(stage["dropped"].values()), stage
        if previous is not None:
            assert stage["rows_in"] == previous["rows_out"], (previous, stage)
    assert summary["kept_rows"] == stages[-1]["rows_out"]
    ledger = read_dataset(run_dir / "ledger")
    assert ledger.num_rows == summary["input_rows"]
    kept = read_dataset(run_dir / "kept")
    assert kept.num_rows == summary["kept_rows"]
    uids = kept["uid"].to_pylist()
    assert len(set(uids)) == len(uids), "kept uids must be unique"
    kept_in_ledger = ledger.filter(pa.compute.equal(ledger["stage"], "kept"))
    assert sorted(kept_in_ledger["uid"].to_pylist()) == sorted(uids)
    for stage in stages:
        for reason, count in stage["dropped"].items():
            rows = ledger.filter(pa.compute.and_(pa.compute.equal(ledger["stage"], stage["name"]),
                                                 pa.compute.equal(ledger["reason"], reason)))
            assert rows.num_rows == count, (stage["name"], reason)
    return summary


def ledger_rows(run_dir: Path | str) -> list[tuple]:
    ledger = read_dataset(f"{run_dir}/ledger")
    return sorted(zip(*(ledger[c].to_pylist() for c in ("uid", "url", "stage", "reason"))),
                  key=lambda r: tuple("" if v is None else v for v in r))


def run_and_kill(config_path: Path, done_dir: Path, parts: int, timeout: float = 120) -> list[Path]:
    """Start `curate run CONFIG` and SIGKILL its whole process group once `parts` parts of a
    step are done (`done_dir` holds their done files); returns the finished parts' files."""
    import os
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(config_path)],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while time.time() < deadline and len(list(done_dir.glob("*.json"))) < parts and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return sorted(done_dir.glob("*.json"))
