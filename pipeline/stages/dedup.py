"""dedup: exact, global deduplication on the configured keys (default url + text).

Two phases, no engine shuffle: `scatter` hashes each row's key into one of N buckets (written
as row groups of the part file), then `reduce` reads bucket b from every part and keeps the
first occurrence in input order (smallest `_pos`). Drops: `duplicate`.
"""
from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.core.hashing import bucket_of, hash_strings
from pipeline.core.stage import REASON, Stage
from pipeline.core.steps import Step, StepContext
from pipeline.core.tasks import ReadParts
from pipeline.stages.ingest import POS

KEY, BUCKET = "_key", "_bucket"


class DedupStage(Stage):
    name = "dedup"


@dataclass
class ScatterByKey:
    keys: list
    buckets: int

    def __call__(self, table: pa.Table) -> pa.Table:
        key = key_hashes(table, self.keys)
        table = table.append_column(KEY, pa.array(key, pa.string()))
        table = table.append_column(BUCKET, pa.array(bucket_of(key, self.buckets)))
        return table.sort_by([(BUCKET, "ascending"), (POS, "ascending")])


def key_hashes(table: pa.Table, keys: list) -> list[str]:
    if list(keys) == ["url", "text"]:
        return table["uid"].to_pylist()   # uid is already the hash of url and text
    columns = [table[k].cast(pa.string()).to_pylist() for k in keys]
    joined = ["\x1f".join("" if v is None else v for v in values) for values in zip(*columns)]
    return hash_strings(joined)


def drop_duplicates(table: pa.Table) -> pa.Table:
    """Mark all but the first occurrence (smallest `_pos`) of each key as `duplicate`."""
    table = table.sort_by([(POS, "ascending")])
    firsts = table.group_by(KEY, use_threads=False).aggregate([(POS, "min")])[f"{POS}_min"]
    is_first = pc.is_in(table[POS], value_set=firsts)
    reason = pc.if_else(is_first, pa.scalar(None, pa.string()), pa.scalar("duplicate"))
    return table.drop_columns([KEY, BUCKET]).append_column(REASON, reason)


class DedupStep(Step):
    """Also evens out part sizes: the output has about `part_rows` rows per part."""

    def __init__(self, settings, part_rows: int):
        super().__init__(DedupStage, settings)
        self.part_rows = part_rows

    def run(self, ctx: StepContext, inputs: list[str]) -> list[str]:
        rows = sum(pq.read_metadata(p).num_rows for p in inputs)
        buckets = max(1, len(inputs), -(-rows // self.part_rows))
        stats = ctx.run_phase("scatter", [ReadParts([p]) for p in inputs],
                              ScatterByKey(self.settings.keys, buckets), row_group_key=BUCKET)
        scattered = ctx.data_paths("scatter", len(inputs))
        readers = [bucket_reader(scattered, stats, b) for b in range(buckets)]
        ctx.run_phase("reduce", readers, drop_duplicates)
        return ctx.data_paths("reduce", buckets)


def bucket_reader(paths: list[str], stats: list[dict], bucket: int) -> ReadParts:
    chosen, groups = [], []
    for path, part in zip(paths, stats):
        index = part["row_groups"].get(str(bucket))
        if index is not None:
            chosen.append(path)
            groups.append([index])
    if not chosen:  # an empty bucket still yields a table with the right columns
        return ReadParts(paths[:1], [[]])
    return ReadParts(chosen, groups)
