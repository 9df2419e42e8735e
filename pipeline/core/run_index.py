"""A run's index (what it holds), and the key sets later runs exclude with it.

Every run writes `<run>/index/` when it finalizes: one parquet file per kept part with the
kept rows' `uid`, `sha256` (of the stored image), `phash` (16 hex digits) and `pdq`,
`pdq_quality` (the download's PDQ hash of the original image, 64 hex digits, for checking
later PDQ lists without downloading again), null where a stage did not run: about 100 bytes
per kept row once compressed, and never an image byte (plus the image embedding where
semantic_dedup ran).
A later run with `exclude: [RUN_DIR, ...]` drops every row whose uid, sha256 or phash (within
`image_dedup.phash_distance`) one of those runs holds, as `in_earlier_run`, at the earliest
step that can tell, reading only these indexes:

- uid: dedup scatters the earlier uids into its own hash buckets, so each reduce task reads
  just its buckets' share (a hash join on the shuffle dedup does anyway); without a dedup
  step on `url, text`, ingest checks each part against the whole uid set (`KeySet`, loaded
  once per worker: 16 bytes per earlier row);
- sha256: the download task, before any image byte is stored (`KeySet` of the earlier
  sha256s, once per worker);
- phash: image_dedup adds the earlier hashes (and sha256s) to its LSH buckets;
- image embedding (runs where semantic_dedup ran write it, ~2 x dim bytes a row): the
  earlier embeddings join semantic_dedup's clusters, and a row within `eps` of one goes.

The driver lists the index files and reads their footers (row counts), never their rows.
A run folder from before the index existed is read through its `kept/` (same columns).
"""
from __future__ import annotations

from typing import Iterable, Optional

import numpy as np
import pyarrow as pa

from pipeline.core import parts, storage
from pipeline.errors import UserError

INDEX = "index"
COLUMNS = ("uid", "sha256", "phash", "pdq")
IN_EARLIER_RUN = "in_earlier_run"
SCHEMA = pa.schema([(name, pa.string()) for name in COLUMNS] + [("pdq_quality", pa.int32())])
EMBEDDING = "image_embedding"           # float16, L2-normalised (where semantic_dedup ran)
INDEX_EMBEDDING = "_index_embedding"    # the same, carried to the index only (not in kept/)


def index_table(kept: pa.Table) -> pa.Table:
    """The index rows of some kept rows (columns a run lacks are null), with the image
    embedding where the rows carry one (semantic_dedup's, or clip_score's kept ones)."""
    columns = [kept[field.name].cast(field.type) if field.name in kept.column_names
               else pa.nulls(kept.num_rows, field.type) for field in SCHEMA]
    table = pa.table(columns, schema=SCHEMA)
    embedding = next((c for c in (INDEX_EMBEDDING, EMBEDDING) if c in kept.column_names), None)
    return table if embedding is None else table.append_column(EMBEDDING, kept[embedding])


def with_embeddings(files: Iterable[str]) -> list[str]:
    """The index files that hold image embeddings."""
    return [f for f in files if EMBEDDING in parts.read_schema(f).names]


def earlier_files(runs: Iterable[str], run_dir: Optional[str] = None) -> list[str]:
    """The index files of the runs to exclude (checked here, on the driver, before any work)."""
    files: list[str] = []
    own = storage.absolute(run_dir) if run_dir else None
    for run in runs:
        path = storage.absolute(run).rstrip("/")
        if own is not None and path == own.rstrip("/"):
            raise UserError(f"exclude: {run} is this run's own folder")
        found = storage.folder_files(storage.join(path, INDEX))
        if found is None:   # a run from before the index: its kept rows have the same columns
            found = storage.folder_files(storage.join(path, "kept"))
        if found is None:
            raise UserError(f"exclude: {run}: not a finished run (it has no {INDEX}/ or kept/)")
        files.extend(f for f in found if f.endswith(".parquet"))
    return files


def read_column(files: Iterable[str], column: str) -> pa.Array:
    """One column of index files, nulls and files without it left out."""
    chunks = []
    for path in files:
        if column in parts.read_schema(path).names:
            values = parts.read_ref(path, [column])[column].combine_chunks().cast(pa.string())
            chunks.append(values.filter(values.is_valid()))
    return pa.concat_arrays(chunks) if chunks else pa.array([], pa.string())


def hex_keys(values) -> tuple[np.ndarray, np.ndarray]:
    """The first 128 bits of each hex string as 16-byte keys, and which values are present."""
    values = values.to_pylist() if hasattr(values, "to_pylist") else list(values)
    valid = np.array([bool(v) for v in values], dtype=bool)
    joined = "".join((v or "")[:32].rjust(32, "0") for v in values)
    return np.frombuffer(bytes.fromhex(joined), dtype="V16"), valid


class KeySet:
    """A sorted array of 128-bit keys (uids, or sha256 prefixes) for membership tests:
    16 bytes per key, O(log n) per lookup, no hash table rebuilt per task."""

    def __init__(self, values):
        keys, valid = hex_keys(values)
        self.keys = np.unique(keys[valid])

    @classmethod
    def of_files(cls, files: Iterable[str], column: str) -> "KeySet":
        return cls(read_column(files, column))

    def __len__(self) -> int:
        return len(self.keys)

    def contains(self, values) -> np.ndarray:
        """Per value (hex string or null): is it in the set?"""
        keys, valid = hex_keys(values)
        if not len(self.keys) or not len(keys):
            return np.zeros(len(keys), dtype=bool)
        at = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        return valid & (self.keys[at] == keys)


def matched_reasons(found: np.ndarray) -> pa.Array:
    """`in_earlier_run` where `found`, else null (keep), as a `_reason` column."""
    return pa.array(np.where(found, IN_EARLIER_RUN, None).tolist(), pa.string())
