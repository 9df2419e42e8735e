"""shard: the kept pairs as WebDataset tars that open_clip reads as is (`<run>/shards/`).

Global and engine-agnostic: `assign` puts each row in shard hash(uid, seed) mod S, where
S = ceil(rows / samples_per_shard), written as row groups; `write` builds each shard from its
row group in every part, in the order of a hash of (uid, seed), with fixed mtimes
(byte-identical on every engine and rerun). The rows go on without their image bytes, with
the `shard` and `key` where each one landed; `sizes.json` gives each tar's sample count.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.hashing import uid_to_u64, uniform
from pipeline.core.stage import Stage
from pipeline.core.steps import Step, StepContext
from pipeline.core.tasks import ReadParts
from pipeline.errors import UserError
from pipeline.shards import MIN_SHARDS, shard_name, shuffled_order, write_shards, write_sizes_json, write_tar
from pipeline.stages.dedup import bucket_reader

SHARD = "_shard"
IMAGE_COLUMNS = ("jpg",)
log = logging.getLogger(__name__)


class ShardStage(Stage):
    name = "shard"


@dataclass
class AssignShard:
    shards: int
    seed: int

    def __call__(self, table: pa.Table) -> pa.Table:
        draws = uniform(uid_to_u64(table["uid"].to_pylist()), 0x5AD, self.seed)
        shard = np.minimum((draws * self.shards).astype(np.int64), self.shards - 1)
        return table.append_column(SHARD, pa.array(shard)).sort_by([(SHARD, "ascending"), ("uid", "ascending")])


@dataclass
class WriteShard:
    out_dir: str
    seed: int

    def __call__(self, table: pa.Table) -> pa.Table:
        if table.num_rows == 0:
            return table.drop_columns([c for c in (SHARD, *IMAGE_COLUMNS) if c in table.column_names])
        index = int(table[SHARD][0].as_py())
        table = table.drop_columns([SHARD])
        placed = write_shards(table, self.out_dir, samples_per_shard=table.num_rows, seed=self.seed,
                              start_index=index, write_sizes=False, warn_few=False)
        ordered = table.take(shuffled_order(table["uid"].to_pylist(), self.seed))
        assert ordered["uid"].to_pylist() == placed["uid"].to_pylist()
        ordered = ordered.drop_columns([c for c in IMAGE_COLUMNS if c in ordered.column_names])
        return ordered.append_column("shard", placed["shard"]).append_column("key", placed["key"])


class ShardStep(Step):
    def __init__(self, settings):
        super().__init__(ShardStage, settings)

    def run(self, ctx: StepContext, inputs: list[str]) -> list[str]:
        if inputs and "jpg" not in pq.read_schema(inputs[0]).names:
            raise UserError("shard: the rows have no images; add a download section before shard")
        rows = sum(pq.read_metadata(p).num_rows for p in inputs)
        shards = max(1, math.ceil(rows / self.settings.samples_per_shard))
        stats = ctx.run_phase("assign", [ReadParts([p]) for p in inputs],
                              AssignShard(shards, ctx.seed), row_group_key=SHARD)
        out_dir = ctx.step_dir.parents[1] / "shards"
        readers = [bucket_reader(ctx.data_paths("assign", len(inputs)), stats, s) for s in range(shards)]
        written = ctx.run_phase("write", readers, WriteShard(str(out_dir), ctx.seed))
        finish_shard_folder(out_dir, [s["rows_out"] for s in written])
        return ctx.data_paths("write", shards)


def finish_shard_folder(out_dir: Path, sizes: list[int]) -> None:
    """Empty tars for empty shards (so brace patterns have no holes), and sizes.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for index, size in enumerate(sizes):
        if size == 0:
            write_tar(out_dir / shard_name(index), pa.table({"uid": pa.array([], pa.string())}), [])
    write_sizes_json(out_dir, {shard_name(i): n for i, n in enumerate(sizes)})
    if len(sizes) < MIN_SHARDS:
        log.warning("%d shard(s) in %s: fewer than a typical trainer's %d dataloader workers; "
                    "lower shard.samples_per_shard", len(sizes), out_dir, MIN_SHARDS)
