"""shard: the kept pairs as WebDataset tars that open_clip reads as is (`<run>/shards/`).

Global and engine-agnostic, and linear in the number of parts: the kept rows, in part order,
are cut into shards of `samples_per_shard` rows (shard s holds rows [s*n, (s+1)*n), all shards
full but the last); each task writes a run of consecutive shards (up to `task_rows` rows),
reading only the parts that hold them, and the image bytes of each shard from where download
(or ingest, for images in the input) stored them; a task whose rows point all over those
files (a global step reordered them) gathers its images once, each row group read once
(`task_images`). Each image goes through the run's image transforms (`ImageTransform`, such
as the face blurrer, which add their columns). Within a shard, samples are in the order of a
hash of (uid, seed), with fixed mtimes (byte-identical on every engine and rerun). The rows
go on without their image bytes, with the `shard` and `key` where each one landed;
`sizes.json` gives each tar's sample count.
Tars are numbered from `start_index`; `auto` continues after the last tar of the runs in
`exclude` (their `sizes.json`), so releases combine in one brace pattern.
"""
from __future__ import annotations

import logging
import math
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Callable, Iterator, Literal, Optional, Union

import numpy as np
import pyarrow as pa

from pipeline.core import images, parts, storage
from pipeline.core.constraints import AtLeast
from pipeline.core.parts import PartRef
from pipeline.core.stage import Stage, set_column
from pipeline.core.steps import Step, StepContext, rows_of
from pipeline.errors import UserError
from pipeline.shards import (
    MIN_SHARDS,
    SIZES_FILE,
    as_table,
    record_sha256,
    shard_keys,
    shard_name,
    shuffled_order,
    sync_files,
    write_sizes_json,
    write_tar,
)

SECTION = "shard"


@dataclass
class ShardSettings:
    samples_per_shard: Annotated[int, AtLeast(1)] = 10_000
    start_index: Union[Annotated[int, AtLeast(0)], Literal["auto"]] = 0   # auto: after the excluded runs' last tar
    enabled: bool = True


SETTINGS = ShardSettings


SHARD = "_shard"
log = logging.getLogger(__name__)


class ShardStage(Stage):
    name = "shard"
    inputs = ("uid", "text", "jpg")
    label = "shard"
    filters = False
    writes_images = True
    outputs = (("shard", pa.string()), ("key", pa.string()))   # and the image transforms' outputs
    inputs_from = "download"


@dataclass
class ReadShardRows:
    """Reader: global rows [start, stop) of the kept rows (parts in order), with `_shard`."""
    refs: list
    counts: list
    start: int
    stop: int
    samples_per_shard: int

    def __call__(self) -> pa.Table:
        tables, offset = [], 0
        for ref, rows in zip(self.refs, self.counts):
            lo, hi = max(self.start, offset), min(self.stop, offset + rows)
            if lo < hi:
                tables.append(images.read_detached(ref).slice(lo - offset, hi - lo))
            offset += rows
        if not tables:  # no rows: still the columns
            tables.append(images.read_detached(self.refs[0]).slice(0, 0))
        table = parts.concat(tables)
        shard = (self.start + np.arange(table.num_rows)) // self.samples_per_shard
        return table.append_column(SHARD, pa.array(shard.astype(np.int64)))


@dataclass
class WriteShards:
    """Op: one tar per `_shard` value of the table, images read shard by shard."""
    out_dir: str
    seed: int
    samples_per_shard: int
    start_index: int = 0
    transforms: tuple = ()   # ImageTransforms applied to the images on their way into the tars

    def __call__(self, table: pa.Table) -> pa.Table:
        shards = table[SHARD].to_numpy()
        bounds = np.flatnonzero(np.diff(shards)) + 1
        with task_images(table, shards) as gathered:
            written = [self.write_one(table.slice(a, b - a), int(shards[a]), gathered, a)
                       for a, b in zip([0, *bounds], [*bounds, len(shards)]) if b > a]
        sync_files([storage.join(self.out_dir, shard_name(self.start_index + int(shards[a])))
                    for a in [0, *bounds] if a < len(shards)])   # before the task's marker
        if not written:
            empty = images.without_references(table)
            for transform in self.transforms:
                for name, type_ in transform.outputs:
                    empty = set_column(empty, name, pa.array([], type_))
            return empty.append_column("shard", pa.array([], pa.string())) \
                        .append_column("key", pa.array([], pa.string()))
        return pa.concat_tables(written)

    def write_one(self, rows: pa.Table, shard: int, gathered=None, offset: int = 0) -> pa.Table:
        """Write shard `shard` of `rows` (the task's rows from `offset`); `gathered`, when
        the task gathered its images (`task_images`), gives them by the task's row."""
        order = shuffled_order(rows["uid"].to_pylist(), self.seed)
        ordered = rows.take(order)
        index = self.start_index + shard
        keys = shard_keys(index, ordered.num_rows, self.samples_per_shard)
        if gathered is None:
            samples = images.attach_images(ordered)
        else:
            samples = ordered.append_column(images.IMAGE, gathered(offset + order))
        for transform in self.transforms:
            samples = transform.apply(samples)
            for name, _ in transform.outputs:
                ordered = set_column(ordered, name, samples[name])
        record_sha256(self.out_dir, shard_name(index),
                      write_tar(storage.join(self.out_dir, shard_name(index)), samples, keys, durable=False))
        placed = images.without_references(ordered)
        return placed.append_column("shard", pa.array([shard_name(index)] * len(keys), pa.string())) \
                     .append_column("key", pa.array(keys, pa.string()))


SCATTERED = 1.5     # row-group reads per needed row group, shard by shard, above which a task gathers
GATHER_GROUPS = 32  # row groups one read of the gathering takes at most (its memory)


@contextmanager
def task_images(table: pa.Table, shards: np.ndarray) -> Iterator[Optional[Callable[[np.ndarray], pa.Array]]]:
    """None when the task reads its images shard by shard (`attach_images`), which reads
    each row group once where every shard's rows lie in row groups of their own (download's
    parts, in their order). Otherwise (rows whose references are scattered over the files,
    as after a global step that reorders rows whose images came in the input) a function
    from the task's row numbers to their `jpg`: the images gathered once into a local
    temporary Arrow file (memory-mapped), each needed row group read once, file by file."""
    if not images.has_references(table) or images.IMAGE in table.column_names or table.num_rows == 0:
        yield None
        return
    files = table[images.IMAGE_FILE].combine_chunks().dictionary_encode()
    codes = files.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    rows = table[images.IMAGE_ROW].to_numpy()
    paths = files.dictionary.to_pylist()
    groups = np.empty(len(rows), np.int64)
    for code, path in enumerate(paths):
        where = codes == code
        groups[where] = np.searchsorted(parts.footer(path)[1], rows[where], side="right") - 1
    keys = (codes << 32) | groups   # (file, row group)
    order = np.lexsort((keys, shards))
    reads = 1 + int(np.count_nonzero((np.diff(shards[order]) != 0) | (np.diff(keys[order]) != 0)))
    if reads <= SCATTERED * len(np.unique(keys)):
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="curate-shard-") as folder:
        yield gather_images(os.path.join(folder, "images.arrow"), paths, codes, rows, groups)


def gather_images(path: str, paths: list, codes: np.ndarray, rows: np.ndarray,
                  groups: np.ndarray) -> Callable[[np.ndarray], pa.Array]:
    """Write the rows' images to the Arrow file `path`, file by file and row group by row
    group (GATHER_GROUPS per read); returns a function from row numbers (of `rows`) to
    their images, read from the memory-mapped file."""
    type_ = parts.read_schema(paths[0]).field(images.IMAGE).type
    position = np.empty(len(rows), np.int64)
    written = 0
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, pa.schema([(images.IMAGE, type_)])) as writer:
        for code, source in enumerate(paths):
            where = np.flatnonzero(codes == code)
            where = where[np.argsort(rows[where], kind="stable")]
            ordered = groups[where]   # ascending, as the rows are
            needed = np.unique(ordered)
            for first in range(0, len(needed), GATHER_GROUPS):
                batch = needed[first:first + GATHER_GROUPS]
                chosen = where[np.searchsorted(ordered, batch[0]):np.searchsorted(ordered, batch[-1], side="right")]
                found = parts.read_file_rows(source, rows[chosen], [images.IMAGE])[images.IMAGE]
                writer.write_batch(pa.record_batch([found.combine_chunks().cast(type_)], names=[images.IMAGE]))
                position[chosen] = written + np.arange(len(chosen))
                written += len(chosen)
    reader = pa.ipc.open_file(pa.memory_map(path))
    chunks = [reader.get_batch(i).column(0) for i in range(reader.num_record_batches)]
    starts = np.cumsum([0] + [len(c) for c in chunks])

    def take(indices: np.ndarray) -> pa.Array:
        at = position[indices]
        chunk = np.searchsorted(starts, at, side="right") - 1
        pieces, order = [], []
        for c in np.unique(chunk):
            where = np.flatnonzero(chunk == c)
            pieces.append(chunks[c].take(pa.array(at[where] - starts[c])))
            order.append(where)
        if not pieces:
            return pa.array([], type_)
        return pa.concat_arrays(pieces).take(pa.array(np.argsort(np.concatenate(order), kind="stable")))

    return take


class ShardStep(Step):
    def __init__(self, settings, start_index: int = 0):
        super().__init__(ShardStage, settings)
        self.start_index = start_index

    def run(self, ctx: StepContext, inputs: list[PartRef]) -> list[PartRef]:
        counts = rows_of(inputs)
        rows, per = sum(counts), self.settings.samples_per_shard
        shards = max(1, math.ceil(rows / per))
        step = max(1, ctx.task_rows // per)   # shards per task
        ranges = [range(a, min(a + step, shards)) for a in range(0, shards, step)]
        out_dir = storage.join(ctx.run_dir, "shards")
        readers = [ReadShardRows(inputs, counts, r.start * per, min(rows, r.stop * per), per)
                   for r in ranges]
        write = WriteShards(out_dir, ctx.seed, per, self.start_index, tuple(self.image_transforms))
        written = ctx.run_phase("write", readers, write, row_group_key=SHARD)
        finish_shard_folder(out_dir, [min(per, rows - s * per) for s in range(shards)], self.start_index)
        return ctx.keyed_parts("write", written, [list(r) for r in ranges])


def finish_shard_folder(out_dir: str, sizes: list[int], start_index: int = 0) -> None:
    """Empty tars for empty shards (so brace patterns have no holes), and sizes.json."""
    for index, size in enumerate(sizes, start_index):
        if size == 0:
            name = shard_name(index)
            record_sha256(out_dir, name, write_tar(storage.join(out_dir, name), as_table([]), []))
    write_sizes_json(out_dir, {shard_name(i): n for i, n in enumerate(sizes, start_index)})
    if len(sizes) < MIN_SHARDS:
        log.warning("%d shard(s) in %s: fewer than a typical trainer's %d dataloader workers; "
                    "lower shard.samples_per_shard", len(sizes), out_dir, MIN_SHARDS)


def first_index(settings: ShardSettings, exclude: list[str]) -> int:
    """The first tar's number: `start_index`, or with `auto` one after the highest tar of
    the excluded runs (0 when they have none)."""
    if settings.start_index != "auto":
        if settings.start_index < 0:
            raise UserError(f"shard.start_index: must be >= 0 or auto, got {settings.start_index}")
        return settings.start_index
    last = -1
    for run in exclude:
        sizes = storage.read_marker(storage.join(run, "shards", SIZES_FILE)) or {}
        last = max([last] + [int(name.split(".")[0]) for name in sizes])
    return last + 1


def build_step(settings: ShardSettings, run) -> ShardStep:
    return ShardStep(settings, first_index(settings, [storage.absolute(r) for r in run.exclude]))


STAGE = ShardStage
