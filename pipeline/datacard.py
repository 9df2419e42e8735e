"""`datacard.json`: what a release holds and how it was made (schemas/datacard.schema.json).

Written at the end of every run (after summary.json) and again by every takedown, from the
run folder alone: `summary.json` (sources, rows in and kept, each stage's drops by reason),
`config.json` (the runs excluded, the blocklists), the kept rows' `language` and `faces`
columns, the metadata step's `entry_counts.parquet`, `takedowns/*.json`, and every tar of
`shards/sizes.json` with its sample count and sha256 (as the shard step recorded it beside
the tar, `shards/_sha256/<tar>`; a tar without it is read, 8 at a time).
"""
from __future__ import annotations

import hashlib
from collections import Counter
from multiprocessing.pool import ThreadPool
from typing import Optional

import pyarrow as pa
import pyarrow.compute as pc

from pipeline import shards
from pipeline.core import parts, storage

FILE = "datacard.json"
VERSION = 1


def write_datacard(run_dir: str, known: Optional[dict] = None) -> dict:
    """Build and write RUN_DIR/datacard.json; `known`: tar name -> sha256 already known."""
    card = build_datacard(run_dir, known)
    storage.write_json(card, storage.join(run_dir, FILE))
    return card


def read_datacard(run_dir: str) -> Optional[dict]:
    return storage.read_marker(storage.join(run_dir, FILE))


def build_datacard(run_dir: str, known: Optional[dict] = None) -> dict:
    run_dir = storage.absolute(run_dir)
    summary = storage.read_json(storage.join(run_dir, "summary.json"))
    config = storage.read_marker(storage.join(run_dir, "config.json")) or {}
    stages = [{k: s[k] for k in ("name", "rows_in", "rows_out", "dropped")} for s in summary["stages"]]
    drops: Counter = Counter()
    for stage in stages:
        drops.update(stage["dropped"])
    kept = kept_columns(run_dir, ["language", "faces"])
    takedowns = takedown_records(run_dir)
    return {
        "version": VERSION,
        "run": storage.name(run_dir.rstrip("/")),
        "sources": [{"path": s.get("path"), "format": s.get("format"), "rows": s.get("rows", 0)}
                    for s in summary.get("sources", [])],
        "rows": {"input": summary["input_rows"], "kept": summary["kept_rows"]},
        "stages": stages,
        "drops": dict(sorted(drops.items())),
        "languages": value_counts(kept, "language"),
        "metadata": metadata_counts(run_dir, summary),
        "safety": {
            "blocklisted": drops.get("blocklisted", 0),
            "blocklists": {k: v for k, v in (config.get("blocklist") or {}).items() if isinstance(v, list) and v},
            "heads": dict(sorted(next((s["dropped"] for s in stages if s["name"] == "heads"), {}).items())),
            "faces_blurred": faces(kept),
            "taken_down": drops.get("taken_down", 0),
            "takedowns": [{"stamp": r["stamp"], "matched": r["matched"], "tars_changed": sorted(r["tars"]),
                           "lists": [{k: d[k] for k in ("kind", "path", "entries")} for d in r["lists"]]}
                          for r in takedowns],
        },
        "exclusions": {"runs": list(config.get("exclude") or []), "in_earlier_run": drops.get("in_earlier_run", 0)},
        "shards": tar_hashes(run_dir, known or {}),
    }


def kept_columns(run_dir: str, columns: list[str]) -> Optional[pa.Table]:
    """Those of `columns` the kept rows have, or None."""
    files = storage.folder_files(storage.join(run_dir, "kept")) or []
    tables = []
    for path in files:
        names = [c for c in columns if c in parts.read_schema(path).names]
        if names:
            tables.append(parts.read_ref(path, names))
    return parts.concat(tables) if tables else None


def value_counts(table: Optional[pa.Table], column: str) -> dict:
    if table is None or column not in table.column_names:
        return {}
    counts = pc.value_counts(table[column].cast(pa.string())).to_pylist()
    return dict(sorted(((c["values"] if c["values"] is not None else "(none)"), c["counts"]) for c in counts))


def faces(table: Optional[pa.Table]) -> Optional[dict]:
    """Kept images with a face blurred, and faces blurred (None: face_blur did not run)."""
    if table is None or "faces" not in table.column_names:
        return None
    values = pc.fill_null(table["faces"], 0)
    return {"images": int(pc.sum(pc.greater(values, 0).cast(pa.int64())).as_py() or 0),
            "faces": int(pc.sum(values).as_py() or 0)}


def metadata_counts(run_dir: str, summary: dict) -> Optional[dict]:
    """Entries matched before and after balancing, matches, the 10 entries most kept."""
    for index, stage in enumerate(summary["stages"]):
        if stage["name"] != "metadata":
            continue
        path = storage.join(run_dir, "steps", f"{index:02d}_metadata", "entry_counts.parquet")
        if not storage.exists(path):
            return None
        table = parts.read_ref(path, ["entry", "count_before", "count_after"])
        before, after = table["count_before"], table["count_after"]
        top = table.take(pc.sort_indices(table, [("count_after", "descending"), ("entry", "ascending")])[:10])
        return {"top_entries": [{"entry": r["entry"], "count": r["count_after"]} for r in top.to_pylist()],
                "matched_entries": int(pc.sum(pc.greater(before, 0).cast(pa.int64())).as_py() or 0),
                "kept_entries": int(pc.sum(pc.greater(after, 0).cast(pa.int64())).as_py() or 0),
                "matches_before": int(pc.sum(before).as_py() or 0),
                "matches_after": int(pc.sum(after).as_py() or 0)}
    return None


def takedown_records(run_dir: str) -> list[dict]:
    folder = storage.join(run_dir, "takedowns")
    names = [n for n in storage.list_names(folder) if n.endswith(".json") and not n.startswith("_")]
    return [storage.read_json(storage.join(folder, n)) for n in sorted(names)]


def tar_hashes(run_dir: str, known: dict) -> dict:
    """Each tar of sizes.json: samples and sha256 (`known`, or as the shard step recorded it
    when it wrote the tar, or read from the tar itself)."""
    folder = storage.join(run_dir, "shards")
    sizes = storage.read_marker(storage.join(folder, "sizes.json")) or {}
    todo = [name for name in sorted(sizes) if name not in known]

    def sha256(name: str) -> str:
        return shards.recorded_sha256(folder, name) or file_sha256(storage.join(folder, name))

    with ThreadPool(8) as pool:
        found = dict(zip(todo, pool.map(sha256, todo)))
    digests = {**known, **found}
    return {"count": len(sizes), "samples": sum(sizes.values()),
            "tars": {name: {"samples": sizes[name], "sha256": digests[name]} for name in sorted(sizes)}}


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with storage.open_input(path, sequential=True) as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
