"""image_dedup: global exact (sha256) and near (perceptual hash) image deduplication.

A row is dropped as `duplicate_image` when an earlier row (smaller `_pos`) has the same
sha256, or a 64-bit `imagehash.phash` within `phash_distance` bits of its own. Kept rows
gain `phash` (16 hex digits, as `str(imagehash.phash(image))`; null when the image does
not decode). Near duplicates are found by banded LSH: the hash is cut into d+1 bands, and
two hashes within distance d agree exactly on at least one band (pigeonhole), so only rows
sharing a (band, value) key are compared (`phash_lsh`). Four phases, no engine shuffle:

    hash     per part:   phash + sha256 of each image (small rows, input order)
    scatter  per group:  d+2 key rows per image -> row groups by bucket of hash(band, value)
    pairs    per bucket: compare rows within each key group -> `_dup` per key row,
                         written as row groups by the group its part belongs to
    apply    per group:  its rows of every pairs file -> `_reason`, a row group per part

A group is consecutive parts holding up to `task_rows` rows and buckets hold up to
`key_rows_per_bucket` key rows, so the pairs and apply reads (groups x buckets) follow data
volume, not the number of parts.

Only `apply` enters the row accounting; the others move auxiliary rows. Every task keeps
its row count (the core checks it), so `scatter` gets its d+2 key rows per image from its
reader (`ReadKeys`) and `pairs` flags key rows instead of filtering them.

With `exclude`, an `earlier` phase scatters the key rows of the earlier runs' indexes (their
sha256 and phash, `core.run_index`) into the same buckets, and each `pairs` task flags `_old`
the key rows that match one of its bucket's earlier key rows (`phash_lsh.matches_earlier`):
such an image goes as `in_earlier_run` (before `duplicate_image`). No image of an earlier
run is read.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Annotated

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core import images, parts, run_index
from pipeline.core.constraints import Between
from pipeline.core.images import IMAGE
from pipeline.core.parts import PartRef
from pipeline.core.stage import POS, Stage, set_column, with_reason
from pipeline.core.steps import Step, StepContext, bucket_refs, group_by_rows, rows_of
from pipeline.core.tasks import SOURCE_PART, ReadParts
from pipeline.stages.phash_lsh import (
    SHA_BAND,
    band_keys,
    band_masks,
    key_bucket,
    later_duplicates,
    matches_earlier,
    phash_of,
    sha_halves,
)

SECTION = "image_dedup"


@dataclass
class ImageDedupSettings:
    phash_distance: Annotated[int, Between(0, 63)] = 0   # bits of the 64-bit pHash
    enabled: bool = True


SETTINGS = ImageDedupSettings


DUPLICATE_IMAGE = "duplicate_image"
PART, BUCKET, BAND, KEY, VALUE, DUP = "_part", "_bucket", "_band", "_key", "_value", "_dup"
GROUP, OLD = "_group", "_old"
KEY_ROWS_PER_BUCKET = 2_000_000


# --- readers and ops of the phases, in order ------------------------------------------------

def phash_hex(hashes: pa.Table) -> pa.Array:
    """The `phash` column of a `hash` table as 16 hex digits (null where none)."""
    values = hashes["phash"].to_pylist()
    valid = hashes["has_phash"].to_pylist()
    return pa.array([f"{v:016x}" if ok else None for v, ok in zip(values, valid)], pa.string())


@dataclass
class ReadImages:
    """Reader: position, sha256 and image reference of each row of one part, tagged with
    the part index (the `hash` phase gets the bytes)."""
    ref: PartRef
    part: int

    def __call__(self) -> pa.Table:
        names = parts.read_schema(self.ref).names
        table = images.read_detached(self.ref, [c for c in (POS, "sha256") if c in names] + [IMAGE])
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
    """Reader: the key rows of some parts' hashes (one sha256 row, d+1 band rows per image)."""
    refs: list
    distance: int

    def __call__(self) -> pa.Table:
        return key_rows(ReadParts(self.refs)(), self.distance)


@dataclass
class ReadEarlierKeys:
    """Reader: the key rows of some earlier runs' index files (`_part` -1: no part here)."""
    refs: list
    distance: int

    def __call__(self) -> pa.Table:
        index = parts.concat([run_index.index_table(parts.read_ref(ref, [
            c for c in ("sha256", "phash") if c in parts.read_schema(ref).names]))
            for ref in parts.as_refs(self.refs)])
        phash = index["phash"].to_pylist()
        hashes = pa.table({PART: pa.array(np.full(index.num_rows, -1, np.int32)),
                           POS: pa.array(np.full(index.num_rows, -1, np.int64)),
                           "sha256": index["sha256"],
                           "phash": pa.array([int(h, 16) if h else 0 for h in phash], pa.uint64()),
                           "has_phash": pa.array([bool(h) for h in phash], pa.bool_())})
        return key_rows(hashes, self.distance)


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
class ReadBucket:
    """Reader of `pairs`: a bucket's key rows, flagged `_old` where a key row of an earlier
    run in the same bucket (`earlier`: its row groups, none without `exclude`) matches."""
    refs: list
    earlier: list
    distance: int

    def __call__(self) -> pa.Table:
        table = ReadParts(self.refs)()
        old = ReadParts(self.earlier)() if self.earlier else None
        if old is None or old.num_rows == 0 or table.num_rows == 0:
            return table.append_column(OLD, pa.array(np.zeros(table.num_rows, dtype=bool)))
        new_cols = [table[c].to_numpy() for c in (BAND, KEY, VALUE)]
        old_cols = [old[c].to_numpy() for c in (BAND, KEY, VALUE)]
        return table.append_column(OLD, pa.array(matches_earlier(*new_cols, *old_cols, self.distance)))


@dataclass
class FindDuplicates:
    """Op of `pairs`: `_dup` per key row (and `_old`, as read), with the group of its part
    (`group_starts`: the first part of each group) for writing by group."""
    distance: int
    group_starts: list

    def __call__(self, table: pa.Table) -> pa.Table:
        group = np.searchsorted(np.asarray(self.group_starts), table[PART].to_numpy(), side="right") - 1
        old = table[OLD] if OLD in table.column_names else pa.array(np.zeros(table.num_rows, dtype=bool))
        return pa.table({GROUP: pa.array(group.astype(np.int32)), POS: table[POS],
                         DUP: key_duplicates(table, self.distance), OLD: old})


def key_duplicates(keys: pa.Table, distance: int) -> pa.Array:
    columns = (keys[c].to_numpy() for c in (BAND, KEY, VALUE, POS))
    return pa.array(later_duplicates(*columns, distance))


@dataclass
class ReadMarked:
    """Reader: a group of parts' rows (tagged by part) with `phash` and `_dup` (found a
    duplicate in some bucket)."""
    refs: list
    hashes: list     # the `hash` output of each of these parts
    pairs: list      # this group's row group of each pairs file

    def __call__(self) -> pa.Table:
        found = [parts.read_ref(ref, [POS, DUP, OLD]) for ref in self.pairs]
        dup_pos = flat_int64([pc.filter(t[POS], t[DUP]) for t in found])
        old_pos = flat_int64([pc.filter(t[POS], t[OLD]) for t in found])
        return attach(ReadParts(self.refs, tagged=True)(), ReadParts(self.hashes)(), dup_pos, old_pos)


def attach(table: pa.Table, hashes: pa.Table, dup_pos: pa.Array,
           old_pos: pa.Array = pa.array([], pa.int64())) -> pa.Table:
    """`table` with its `phash` (hashes are in the same row order) and `_dup`, `_old` flags."""
    table = set_column(table, "phash", phash_hex(hashes))
    table = table.append_column(DUP, pc.is_in(table[POS], value_set=dup_pos))
    return table.append_column(OLD, pc.is_in(table[POS], value_set=old_pos))


def mark_duplicates(table: pa.Table) -> pa.Table:
    """Op of `apply`: `in_earlier_run` before `duplicate_image`."""
    none = pa.scalar(None, pa.string())
    reason = pc.if_else(table[DUP], pa.scalar(DUPLICATE_IMAGE), none)
    if OLD in table.column_names:
        reason = pc.if_else(table[OLD], pa.scalar(run_index.IN_EARLIER_RUN), reason)
    return with_reason(table.drop_columns([c for c in (DUP, OLD) if c in table.column_names]), reason)


def flat_int64(columns: list) -> pa.Array:
    chunks = [chunk for column in columns for chunk in column.chunks]
    return pa.concat_arrays(chunks) if chunks else pa.array([], pa.int64())


# --- stage and step ------------------------------------------------------------------------

class ImageDedupStage(Stage):
    """`process` dedups one table (with `_pos`) in memory; the step does it globally."""
    name = "image_dedup"
    label = "image dedup"
    inputs = ("jpg", POS)
    outputs = (("phash", pa.string()),)
    inputs_from = "download"

    def process(self, table: pa.Table) -> pa.Table:
        distance = int(self.settings.phash_distance)
        columns = [c for c in (POS, "sha256", "jpg") if c in table.column_names]
        images = table.select(columns).append_column(PART, pa.array(np.zeros(table.num_rows, np.int32)))
        hashes = hash_images(images)
        keys = key_rows(hashes, distance)
        dup_pos = flat_int64([pc.filter(keys[POS], key_duplicates(keys, distance))])
        return mark_duplicates(attach(table, hashes, dup_pos))


class ImageDedupStep(Step):
    def __init__(self, settings, key_rows_per_bucket: int = KEY_ROWS_PER_BUCKET,
                 exclude: list[str] = ()):
        super().__init__(ImageDedupStage, settings)
        band_masks(int(settings.phash_distance))  # validates the distance
        self.key_rows_per_bucket = key_rows_per_bucket
        self.exclude = list(exclude)

    def run(self, ctx: StepContext, inputs: list[PartRef]) -> list[PartRef]:
        distance = int(self.settings.phash_distance)
        counts = rows_of(inputs)
        groups = group_by_rows(inputs, ctx.task_rows, counts)
        starts = np.cumsum([0] + [len(g) for g in groups]).tolist()
        earlier = parts.as_refs(run_index.earlier_files(self.exclude)) if self.exclude else []
        earlier_counts = rows_of(earlier)
        rows = sum(counts) + sum(earlier_counts)
        buckets = max(1, -(-rows * (distance + 2) // self.key_rows_per_bucket))
        ctx.run_phase("hash", [ReadImages(ref, i) for i, ref in enumerate(inputs)], hash_images,
                      counted=False, images=True)
        hashed = ctx.data_parts("hash", len(inputs))
        hashed_groups = [hashed[a:b] for a, b in zip(starts, starts[1:])]
        scatter = ctx.run_phase("scatter", [ReadKeys(g, distance) for g in hashed_groups],
                                AssignBuckets(buckets), row_group_key=BUCKET, counted=False)
        scattered = ctx.data_parts("scatter", len(groups))
        held = self.scatter_earlier(ctx, earlier, earlier_counts, buckets)
        readers = [ReadBucket(bucket_refs(scattered, scatter, [b]), held(b), distance)
                   for b in range(buckets)]
        pairs = ctx.run_phase("pairs", readers, FindDuplicates(distance, starts[:-1]),
                              row_group_key=GROUP, counted=False)
        pairs_files = ctx.data_parts("pairs", buckets)
        marked = [ReadMarked(group, hashed_groups[g], bucket_refs(pairs_files, pairs, [g]))
                  for g, group in enumerate(groups)]
        applied = ctx.run_phase("apply", marked, mark_duplicates, row_group_key=SOURCE_PART)
        return ctx.mirrored_parts("apply", applied, groups)

    def scatter_earlier(self, ctx: StepContext, earlier: list, counts: list, buckets: int):
        """The earlier runs' key rows in the buckets: bucket -> their row groups."""
        if not earlier:
            return lambda bucket: []
        groups = group_by_rows(earlier, ctx.task_rows, counts)
        distance = int(self.settings.phash_distance)
        stats = ctx.run_phase("earlier", [ReadEarlierKeys(g, distance) for g in groups],
                              AssignBuckets(buckets), row_group_key=BUCKET, counted=False)
        scattered = ctx.data_parts("earlier", len(groups))
        return lambda bucket: bucket_refs(scattered, stats, [bucket])


def build_step(settings: ImageDedupSettings, run) -> ImageDedupStep:
    return ImageDedupStep(settings, exclude=run.exclude)


STAGE = ImageDedupStage
