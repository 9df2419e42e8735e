"""shard: the kept pairs as WebDataset tars that open_clip reads as is (`<run>/shards/`).

Global and engine-agnostic, and linear in the number of parts: the kept rows, in part order,
are cut into shards of `samples_per_shard` rows (shard s holds rows [s*n, (s+1)*n), all shards
full but the last); each task writes a run of consecutive shards (up to `task_rows` rows),
reading only the parts that hold them, and the image bytes of each shard from where download
stored them (each through the run's image transforms, `ImageTransform`, such as the face
blurrer, which add their columns). Within a shard, samples are in the order of a hash of (uid, seed), with fixed
mtimes (byte-identical on every engine and rerun). The rows go on without their image bytes,
with the `shard` and `key` where each one landed; `sizes.json` gives each tar's sample count.
Tars are numbered from `start_index`; `auto` continues after the last tar of the runs in
`exclude` (their `sizes.json`), so releases combine in one brace pattern.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Annotated, Literal, Union

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
        written = [self.write_one(table.slice(a, b - a), int(shards[a]))
                   for a, b in zip([0, *bounds], [*bounds, len(shards)]) if b > a]
        if not written:
            empty = images.without_references(table)
            for transform in self.transforms:
                for name, type_ in transform.outputs:
                    empty = set_column(empty, name, pa.array([], type_))
            return empty.append_column("shard", pa.array([], pa.string())) \
                        .append_column("key", pa.array([], pa.string()))
        return pa.concat_tables(written)

    def write_one(self, rows: pa.Table, shard: int) -> pa.Table:
        ordered = rows.take(shuffled_order(rows["uid"].to_pylist(), self.seed))
        index = self.start_index + shard
        keys = shard_keys(index, ordered.num_rows, self.samples_per_shard)
        samples = images.attach_images(ordered)
        for transform in self.transforms:
            samples = transform.apply(samples)
            for name, _ in transform.outputs:
                ordered = set_column(ordered, name, samples[name])
        record_sha256(self.out_dir, shard_name(index),
                      write_tar(storage.join(self.out_dir, shard_name(index)), samples, keys))
        placed = images.without_references(ordered)
        return placed.append_column("shard", pa.array([shard_name(index)] * len(keys), pa.string())) \
                     .append_column("key", pa.array(keys, pa.string()))


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
