"""image_dedup: global exact (sha256) and near (perceptual hash) image deduplication.

A row is dropped as `duplicate_image` when an earlier row (smaller `_pos`) has the same
sha256, or a 64-bit `imagehash.phash` within `phash_distance` bits of its own. Kept rows
gain `phash` (16 hex digits, as `str(imagehash.phash(image))`; null when the image does
not decode). Near duplicates are found by banded LSH: the hash is cut into d+1 bands, and
two hashes within distance d agree exactly on at least one band (pigeonhole), so only rows
sharing a (band, value) key are compared (`phash_lsh`). Four phases, no engine shuffle:

    hash     per part:   phash + sha256 of each image (small rows, input order)
    scatter  per part:   d+2 key rows per image -> row groups by bucket of hash(band, value)
    pairs    per bucket: compare rows within each key group -> `_dup` per key row,
                         written as row groups by the input part it belongs to
    apply    per part:   its own rows of every pairs file -> `_reason`

Only `apply` enters the row accounting; the others move auxiliary rows. Every task keeps
its row count (the core checks it), so `scatter` gets its d+2 key rows per image from its
reader (`ReadKeys`) and `pairs` flags key rows instead of filtering them.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.core import parts
from pipeline.core.stage import Stage, with_reason
from pipeline.core.steps import Step, StepContext
from pipeline.stages.dedup import bucket_reader
from pipeline.stages.ingest import POS
from pipeline.stages.phash_lsh import (SHA_BAND, band_keys, band_masks, key_bucket,
                                       later_duplicates, phash_of, sha_halves)
from pipeline.errors import UserError

DUPLICATE_IMAGE = "duplicate_image"
PART, BUCKET, BAND, KEY, VALUE, DUP = "_part", "_bucket", "_band", "_key", "_value", "_dup"
KEY_ROWS_PER_BUCKET = 2_000_000


# --- readers and ops of the phases, in order ------------------------------------------------

def phash_hex(hashes: pa.Table) -> pa.Array:
    """The `phash` column of a `hash` table as 16 hex digits (null where none)."""
    values = hashes["phash"].to_pylist()
    valid = hashes["has_phash"].to_pylist()
    return pa.array([f"{v:016x}" if ok else None for v, ok in zip(values, valid)], pa.string())


@dataclass
class ReadImages:
    """Reader: position, sha256 and image of each row of one part, tagged with the part index."""
    path: str
    part: int

    def __call__(self) -> pa.Table:
        names = pq.read_schema(self.path).names
        table = pq.read_table(self.path, columns=[c for c in (POS, "sha256", "jpg") if c in names])
        return table.append_column(PART, pa.array(np.full(table.num_rows, self.part, np.int32)))


def hash_images(table: pa.Table) -> pa.Table:
    """Op of `hash`: one small row per image, in input order."""
    images = table["jpg"].to_pylist()
    if "sha256" in table.column_names:
        sha = table["sha256"].to_pylist()
    else:
        sha = [hashlib.sha256(j).hexdigest() if j else None for j in images]
    hashes = [phash_of(j) for j in images]
    return pa.table({PART: table[PART], POS: table[POS], "sha256": pa.array(sha, pa.string()),
                     "phash": pa.array([h or 0 for h in hashes], pa.uint64()),
                     "has_phash": pa.array([h is not None for h in hashes], pa.bool_())})


@dataclass
class ReadKeys:
    """Reader: the key rows of one part's hashes (one sha256 row, d+1 band rows per image)."""
    path: str
    distance: int

    def __call__(self) -> pa.Table:
        return key_rows(pq.read_table(self.path), self.distance)


def key_rows(hashes: pa.Table, distance: int) -> pa.Table:
    sha_key, sha_value, has_sha = sha_halves(hashes["sha256"].to_pylist())
    phash = hashes["phash"].to_numpy()
    has_phash = hashes["has_phash"].to_numpy(zero_copy_only=False)
    rows, band, value = band_keys(phash, distance)
    on_band = has_phash[rows]
    sha_rows = np.flatnonzero(has_sha)
    rows, band, value = rows[on_band], band[on_band], value[on_band]
    all_rows = np.concatenate([sha_rows, rows])
    return pa.table({
        PART: hashes[PART].take(all_rows), POS: hashes[POS].take(all_rows),
        BAND: np.concatenate([np.full(len(sha_rows), SHA_BAND, np.int8), band]),
        KEY: np.concatenate([sha_key[sha_rows], value]),
        VALUE: np.concatenate([sha_value[sha_rows], phash[rows]]),
    })


@dataclass
class AssignBuckets:
    """Op of `scatter`: a bucket from each (band, key), rows sorted by bucket."""
    buckets: int

    def __call__(self, table: pa.Table) -> pa.Table:
        bucket = key_bucket(table[BAND].to_numpy(), table[KEY].to_numpy(), self.buckets)
        return table.append_column(BUCKET, pa.array(bucket)).sort_by(BUCKET)


@dataclass
class FindDuplicates:
    """Op of `pairs`: `_dup` per key row, rows sorted by the part they belong to."""
    distance: int

    def __call__(self, table: pa.Table) -> pa.Table:
        out = pa.table({PART: table[PART], POS: table[POS], DUP: key_duplicates(table, self.distance)})
        return out.sort_by([(PART, "ascending"), (POS, "ascending")])


def key_duplicates(keys: pa.Table, distance: int) -> pa.Array:
    columns = (keys[c].to_numpy() for c in (BAND, KEY, VALUE, POS))
    return pa.array(later_duplicates(*columns, distance))


@dataclass
class ReadMarked:
    """Reader: one part's rows with `phash` and `_dup` (found a duplicate in some bucket)."""
    path: str
    hashes_path: str
    pairs: list  # (pairs file, row group of this part)

    def __call__(self) -> pa.Table:
        found = [parts.read_parquet(path, [group]) for path, group in self.pairs]
        dup_pos = flat_int64([pc.filter(t[POS], t[DUP]) for t in found])
        return attach(parts.read_parquet(self.path), pq.read_table(self.hashes_path), dup_pos)


def attach(table: pa.Table, hashes: pa.Table, dup_pos: pa.Array) -> pa.Table:
    """`table` with its `phash` (hashes are in the same row order) and `_dup` flags."""
    table = set_column(table, "phash", phash_hex(hashes))
    return table.append_column(DUP, pc.is_in(table[POS], value_set=dup_pos))


def mark_duplicates(table: pa.Table) -> pa.Table:
    """Op of `apply`."""
    reason = pc.if_else(table[DUP], pa.scalar(DUPLICATE_IMAGE), pa.scalar(None, pa.string()))
    return with_reason(table.drop_columns([DUP]), reason)


def flat_int64(columns: list) -> pa.Array:
    chunks = [chunk for column in columns for chunk in column.chunks]
    return pa.concat_arrays(chunks) if chunks else pa.array([], pa.int64())


def set_column(table: pa.Table, name: str, values) -> pa.Table:
    if name in table.column_names:
        return table.set_column(table.schema.get_field_index(name), name, values)
    return table.append_column(name, values)


# --- stage and step ------------------------------------------------------------------------

class ImageDedupStage(Stage):
    """`process` dedups one table (with `_pos`) in memory; the step does it globally."""
    name = "image_dedup"

    def process(self, table: pa.Table) -> pa.Table:
        distance = int(self.settings.phash_distance)
        columns = [c for c in (POS, "sha256", "jpg") if c in table.column_names]
        images = table.select(columns).append_column(PART, pa.array(np.zeros(table.num_rows, np.int32)))
        hashes = hash_images(images)
        keys = key_rows(hashes, distance)
        dup_pos = flat_int64([pc.filter(keys[POS], key_duplicates(keys, distance))])
        return mark_duplicates(attach(table, hashes, dup_pos))


class ImageDedupStep(Step):
    def __init__(self, settings, key_rows_per_bucket: int = KEY_ROWS_PER_BUCKET):
        super().__init__(ImageDedupStage, settings)
        band_masks(int(settings.phash_distance))  # validates the distance
        self.key_rows_per_bucket = key_rows_per_bucket

    def run(self, ctx: StepContext, inputs: list[str]) -> list[str]:
        distance = int(self.settings.phash_distance)
        for path in inputs[:1]:
            if "jpg" not in pq.read_schema(path).names:
                raise UserError("image_dedup: the rows have no `jpg` column (enable `download`)")
        count = len(inputs)
        rows = sum(pq.read_metadata(p).num_rows for p in inputs)
        buckets = max(1, count, -(-rows * (distance + 2) // self.key_rows_per_bucket))
        ctx.run_phase("hash", [ReadImages(p, i) for i, p in enumerate(inputs)], hash_images,
                      counted=False)
        hashed = ctx.data_paths("hash", count)
        scatter = ctx.run_phase("scatter", [ReadKeys(p, distance) for p in hashed],
                                AssignBuckets(buckets), row_group_key=BUCKET, counted=False)
        readers = [bucket_reader(ctx.data_paths("scatter", count), scatter, b) for b in range(buckets)]
        pairs = ctx.run_phase("pairs", readers, FindDuplicates(distance), row_group_key=PART,
                              counted=False)
        pairs_paths = ctx.data_paths("pairs", buckets)
        marked = [ReadMarked(path, hashed[i], part_groups(pairs_paths, pairs, i))
                  for i, path in enumerate(inputs)]
        ctx.run_phase("apply", marked, mark_duplicates)
        return ctx.data_paths("apply", count)


def part_groups(paths: list[str], stats: list[dict], part: int) -> list[tuple[str, int]]:
    """(file, row group) of `part`'s rows in each pairs file that has some."""
    return [(path, s["row_groups"][str(part)]) for path, s in zip(paths, stats)
            if str(part) in s["row_groups"]]
