"""image_dedup: global exact (sha256) and near (perceptual hash) image deduplication.

A row is dropped as `duplicate_image` when an earlier row (smaller `_pos`) has the same
sha256, or a 64-bit `imagehash.phash` within `phash_distance` bits of its own. Kept rows
gain `phash` (16 hex digits, as `str(imagehash.phash(image))`; null when the image does
not decode). Near duplicates are found by banded LSH: the hash is cut into d+1 bands, and
two hashes within distance d agree exactly on at least one band (pigeonhole), so only rows
sharing a (band, value) key are compared. Four phases, no engine shuffle:

    hash     per part:   phash + sha256 of each image (small rows, input order)
    scatter  per part:   d+2 key rows per image -> row groups by bucket of hash(band, value)
    pairs    per bucket: compare rows within each key group -> `_dup` per key row,
                         written as row groups by the input part it belongs to
    apply    per part:   its own rows of every pairs file -> `_reason`

Only `apply` enters the row accounting; the others move auxiliary rows (one out per row in).
Cost: with random hashes a key group holds about rows / 2**(64 / (d+1)) rows and is compared
pairwise, so keep d small (<= ~8) at scale.
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.core import parts
from pipeline.core.hashing import splitmix64
from pipeline.core.stage import Stage, with_reason
from pipeline.core.steps import Step, StepContext
from pipeline.stages.dedup import bucket_reader
from pipeline.stages.ingest import POS
from pipeline.errors import UserError

DUPLICATE_IMAGE = "duplicate_image"
PART, BUCKET, BAND, KEY, VALUE, DUP = "_part", "_bucket", "_band", "_key", "_value", "_dup"
SHA_BAND = -1               # the key row of an image's sha256 (bits 0..63 key, 64..127 value)
KEY_ROWS_PER_BUCKET = 2_000_000
PAIRS_PER_CHUNK = 1 << 21   # bounds the memory of one vectorised comparison (~100 MB)
_BYTE_BITS = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


# --- pure functions: hashing, keys, comparison ---------------------------------------------

def phash_of(jpg: Optional[bytes]) -> Optional[int]:
    """`imagehash.phash` of encoded image bytes as an unsigned 64-bit int, None if undecodable."""
    if not jpg:
        return None
    import imagehash
    from PIL import Image

    try:
        with Image.open(io.BytesIO(jpg)) as image:
            return int(str(imagehash.phash(image)), 16)
    except Exception:  # pylint: disable=broad-except  # a bad image never crashes the run
        return None


def phash_hex(values: np.ndarray, valid: np.ndarray) -> pa.Array:
    return pa.array([f"{v:016x}" if ok else None for v, ok in zip(values.tolist(), valid.tolist())],
                    pa.string())


def sha_halves(sha_hex: list[Optional[str]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bits 0..63 and 64..127 of each hex sha256 (as uint64), and which rows have one."""
    valid = np.array([bool(s) for s in sha_hex], dtype=bool)
    joined = "".join((s or "0" * 32)[:32] for s in sha_hex)
    words = np.frombuffer(bytes.fromhex(joined), dtype=">u8").astype(np.uint64).reshape(-1, 2)
    return words[:, 0], words[:, 1], valid


def band_masks(distance: int) -> list[tuple[int, np.uint64]]:
    """(shift, mask) of each of the d+1 bands that partition the 64 bits."""
    if not 0 <= distance < 64:
        raise UserError(f"image_dedup.phash_distance must be in 0..63, got {distance}")
    bands = distance + 1
    bounds = [b * 64 // bands for b in range(bands + 1)]
    return [(lo, np.uint64((1 << (hi - lo)) - 1)) for lo, hi in zip(bounds, bounds[1:])]


def band_keys(phash: np.ndarray, distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row index, band, band value) of every band of every hash: d+1 key rows per hash."""
    masks = band_masks(distance)
    rows = np.tile(np.arange(len(phash), dtype=np.int64), len(masks))
    band = np.repeat(np.arange(len(masks), dtype=np.int8), len(phash))
    value = np.concatenate([(phash >> np.uint64(lo)) & mask for lo, mask in masks])
    return rows, band, value.astype(np.uint64)


def key_bucket(band: np.ndarray, key: np.ndarray, buckets: int) -> np.ndarray:
    salt = splitmix64((band.astype(np.int64) + 2).astype(np.uint64))
    return (splitmix64(key ^ salt) % np.uint64(buckets)).astype(np.int64)


def popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2
        return np.bitwise_count(x)
    return _BYTE_BITS[np.ascontiguousarray(x).view(np.uint8)].reshape(-1, 8).sum(axis=1)


def later_duplicates(band: np.ndarray, key: np.ndarray, value: np.ndarray, pos: np.ndarray,
                     distance: int, chunk_pairs: int = PAIRS_PER_CHUNK) -> np.ndarray:
    """Per key row: does an earlier row (smaller pos) of its (band, key) group duplicate it?

    Sha rows duplicate when key and value (all 128 bits) are equal; band rows when their
    values (whole phashes) are within `distance` bits. Rows equal to an earlier row of the
    group are settled first, so only distinct hashes are compared pairwise.
    """
    order = np.lexsort((pos, value, key, band))
    b, k, v = band[order], key[order], value[order]
    same_group = np.zeros(len(order), dtype=bool)
    same_group[1:] = (b[1:] == b[:-1]) & (k[1:] == k[:-1])
    repeated = same_group.copy()
    repeated[1:] &= v[1:] == v[:-1]
    found = np.zeros(len(order), dtype=bool)
    found[order] = repeated
    if distance > 0:
        compare = order[~repeated & (b != SHA_BAND)]
        compare = compare[np.lexsort((pos[compare], key[compare], band[compare]))]
        found[compare] |= near_earlier(band[compare], key[compare], value[compare], distance,
                                       chunk_pairs)
    return found


def near_earlier(band: np.ndarray, key: np.ndarray, value: np.ndarray, distance: int,
                 chunk_pairs: int = PAIRS_PER_CHUNK) -> np.ndarray:
    """Rows sorted by group then position: is any earlier row of the group within distance?"""
    n = len(value)
    if n == 0:
        return np.zeros(0, dtype=bool)
    starts = np.ones(n, dtype=bool)
    starts[1:] = (band[1:] != band[:-1]) | (key[1:] != key[:-1])
    group_start = np.maximum.accumulate(np.where(starts, np.arange(n), 0))
    earlier = np.arange(n) - group_start              # how many earlier rows in the group
    before = np.concatenate([[0], np.cumsum(earlier)])
    found = np.zeros(n, dtype=bool)
    first = int(np.argmax(earlier > 0)) if earlier.any() else n
    while first < n:
        last = int(np.searchsorted(before, before[first] + chunk_pairs, side="right")) - 1
        last = min(max(last, first + 1), n)
        counts = earlier[first:last]
        rows = np.repeat(np.arange(first, last), counts)
        within = np.arange(len(rows)) - np.repeat(before[first:last] - before[first], counts)
        partners = group_start[rows] + within
        close = popcount(value[rows] ^ value[partners]) <= distance
        found[rows[close]] = True
        first = last
    return found


# --- readers and ops of the phases ---------------------------------------------------------

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
    """Reader: one part's rows with `phash` and `_dup` (any key row of it found a duplicate)."""
    path: str
    hashes_path: str
    pairs: list  # (pairs file, row group of this part)

    def __call__(self) -> pa.Table:
        table = parts.read_parquet(self.path)
        hashes = pq.read_table(self.hashes_path, columns=["phash", "has_phash"])
        hex_hashes = phash_hex(hashes["phash"].to_numpy(),
                               hashes["has_phash"].to_numpy(zero_copy_only=False))
        found = [parts.read_parquet(path, [group]) for path, group in self.pairs]
        dup_pos = [pc.filter(t[POS], t[DUP]) for t in found]
        table = set_column(table, "phash", hex_hashes)
        return table.append_column(DUP, pc.is_in(table[POS], value_set=flat_int64(dup_pos)))


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
    """`process` dedups one table in memory (all phases at once); the step does it globally."""
    name = "image_dedup"

    def process(self, table: pa.Table) -> pa.Table:
        distance = int(self.settings.phash_distance)
        positions = table[POS] if POS in table.column_names else pa.array(np.arange(table.num_rows))
        images = {PART: pa.array(np.zeros(table.num_rows, np.int32)), POS: positions,
                  "jpg": table["jpg"]}
        if "sha256" in table.column_names:
            images["sha256"] = table["sha256"]
        hashes = hash_images(pa.table(images))
        keys = key_rows(hashes, distance)
        dup_pos = pc.filter(keys[POS], key_duplicates(keys, distance))
        table = set_column(table, "phash", phash_hex(
            hashes["phash"].to_numpy(), hashes["has_phash"].to_numpy(zero_copy_only=False)))
        is_dup = pc.is_in(positions, value_set=flat_int64([dup_pos]))
        reason = pc.if_else(is_dup, pa.scalar(DUPLICATE_IMAGE), pa.scalar(None, pa.string()))
        return with_reason(table, reason)


class ImageDedupStep(Step):
    def __init__(self, settings):
        super().__init__(ImageDedupStage, settings)
        band_masks(int(settings.phash_distance))  # validates the distance

    def run(self, ctx: StepContext, inputs: list[str]) -> list[str]:
        distance = int(self.settings.phash_distance)
        for path in inputs[:1]:
            if "jpg" not in pq.read_schema(path).names:
                raise UserError("image_dedup: the rows have no `jpg` column (enable `download`)")
        count = len(inputs)
        rows = sum(pq.read_metadata(p).num_rows for p in inputs)
        buckets = max(1, count, -(-rows * (distance + 2) // KEY_ROWS_PER_BUCKET))
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
