"""The run-folder edits of a takedown (`pipeline.takedown`), each idempotent: parquet parts of
`kept/` and `ledger/` without some uids (an object store's `_SUCCESS` gets the new sizes), the
ledger's takedown part, `uids.npy`, clip-retrieval's `embeddings/`, and summary.json's
`takedown` stage."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core import parts, storage, uid_arrays
from pipeline.core.tasks import LEDGER_SCHEMA

STAGE, REASON = "takedown", "taken_down"


def filter_folder(folder: str, names: list[str], uids: set) -> None:
    """Rewrite these parquet files of a committed folder without the rows of `uids` (of a
    ledger, only their `kept` rows); on an object store its `_SUCCESS` gets the new sizes."""
    listed = pa.array(sorted(uids), pa.string())
    sizes = {}
    for name in names:
        path = storage.join(folder, name)
        table = parts.read_ref(path)
        drop = pc.is_in(table["uid"], listed)
        if "stage" in table.column_names:
            drop = pc.and_(drop, pc.equal(table["stage"], "kept"))
        if pc.any(drop).as_py():
            parts.write_parquet(table.filter(pc.invert(drop)), path)
        sizes[name] = storage.size(path)
    mark_files(folder, sizes)


def add_ledger_part(ledger: str, name: str, uids: list[str]) -> None:
    """The taken-down rows as a ledger part: uid only, stage `takedown`, reason `taken_down`."""
    n = len(uids)
    table = pa.table({"uid": pa.array(uids, pa.string()), "url": pa.nulls(n, pa.string()),
                      "stage": pa.array([STAGE] * n, pa.string()), "reason": pa.array([REASON] * n, pa.string()),
                      "detail": pa.nulls(n, pa.string())}, schema=LEDGER_SCHEMA)
    path = storage.join(ledger, name)
    parts.write_parquet(table, path)
    mark_files(ledger, {name: storage.size(path)})


def mark_files(folder: str, sizes: dict) -> None:
    if storage.is_local(folder):
        return
    marker_file = storage.join(folder, storage.SUCCESS)
    marker = storage.read_json(marker_file)
    marker["files"] = dict(sorted({**marker["files"], **sizes}.items()))
    storage.write_json(marker, marker_file)


def filter_uids_file(path: str, uids: set) -> None:
    """`uids.npy` without `uids` (sorted `u8,u8`: each found by binary search)."""
    if not storage.exists(path):
        return
    rows = np.load(storage.local_copy(path) if not storage.is_local(path) else storage.normalize(path))
    keep = np.ones(len(rows), bool)
    hi, lo = uid_arrays.halves(sorted(uids))
    for h, l_ in zip(hi, lo):
        start, stop = np.searchsorted(rows["f0"], h, "left"), np.searchsorted(rows["f0"], h, "right")
        keep[start:stop] &= rows["f1"][start:stop] != l_
    if keep.all():
        return
    with storage.committing(path) as tmp, open(tmp, "wb") as stream:
        np.save(stream, rows[keep])


def filter_embeddings(run_dir: str, uids: set) -> None:
    """clip-retrieval's triples without the rows of `uids`; a faiss index of them is removed
    (stale: `curate index` builds it again)."""
    from pipeline.clip import index as embeddings

    folder = storage.join(run_dir, embeddings.FOLDER)
    manifest = storage.read_marker(storage.join(folder, storage.SUCCESS))
    if manifest is None:
        return
    listed = pa.array(sorted(uids), pa.string())
    for triple in manifest["parts"]:
        meta_path = storage.join(folder, triple["metadata"])
        metadata = parts.read_ref(meta_path)
        keep = pc.invert(pc.is_in(metadata["uid"], listed))
        if pc.all(keep).as_py():
            continue
        mask = keep.to_numpy(zero_copy_only=False)
        for kind in ("img_emb", "text_emb"):
            path = storage.join(folder, triple[kind])
            array = np.load(storage.local_copy(path) if not storage.is_local(path) else storage.normalize(path))
            with storage.committing(path) as tmp, open(tmp, "wb") as stream:
                np.save(stream, array[mask])
            manifest["files"][triple[kind]] = storage.size(path)
        parts.write_parquet(metadata.filter(keep), meta_path)
        manifest["files"][triple["metadata"]] = storage.size(meta_path)
        triple["rows"] = int(mask.sum())
    manifest["rows"] = sum(t["rows"] for t in manifest["parts"])
    storage.write_json(manifest, storage.join(folder, storage.SUCCESS))
    for name in (embeddings.INDEX_INFOS, embeddings.INDEX_FILE):   # the marker first
        storage.remove(storage.join(folder, embeddings.INDEX_FOLDER, name))


def update_summary(run_dir: str) -> None:
    """summary.json's last stage `takedown`: the rows every takedown removed (the ledger's
    takedown parts), so `kept_rows` and conservation hold."""
    path = storage.join(run_dir, "summary.json")
    summary = storage.read_json(path)
    ledger = storage.folder_files(storage.join(run_dir, "ledger")) or []
    removed = sum(parts.num_rows(f) for f in ledger if storage.name(f).startswith(f"{STAGE}-"))
    stages = [s for s in summary["stages"] if s["name"] != STAGE]
    rows_in = stages[-1]["rows_out"]
    stages.append({"name": STAGE, "rows_in": rows_in, "rows_out": rows_in - removed,
                   "dropped": {REASON: removed}, "seconds": 0.0})
    summary.update(stages=stages, kept_rows=rows_in - removed)
    storage.write_json(summary, path)
