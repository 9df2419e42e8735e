"""dedup: exact, global deduplication on the configured keys (default url + text).

Two phases, no engine shuffle: `scatter` hashes each row's key into one of B buckets (B from
the row count and `part_rows`: the output has about `part_rows` rows per part), written as row
groups of one file per task; then each `reduce` task takes a range of buckets (up to
`task_rows` rows), reads it from every scatter file as one contiguous run of row groups, and
keeps the first occurrence of each key in input order (smallest `_pos`), writing one row
group per bucket. Both phases have about rows / `task_rows` tasks whatever the number of
input parts, so the reduce reads (scatter files x reduce tasks) follow data volume only.
Drops: `duplicate`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.hashing import bucket_of, hash_strings
from pipeline.core.parts import PartRef, read_schema
from pipeline.core.stage import POS, REASON, Stage, check_columns
from pipeline.core.steps import Step, StepContext, bucket_refs, group_by_rows, rows_of
from pipeline.core.tasks import ReadParts

KEY, BUCKET = "_key", "_bucket"
SECTION = "dedup"


@dataclass
class DedupSettings:
    keys: list[str] = field(default_factory=lambda: ["url", "text"])
    enabled: bool = True


SETTINGS = DedupSettings


class DedupStage(Stage):
    name = "dedup"
    inputs = ("uid", POS)
    outputs = ()
    inputs_from = "ingest"


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
    """Mark all but the first occurrence (smallest `_pos`) of each key as `duplicate`
    (`_bucket` stays: the reduce output is written by bucket)."""
    table = table.sort_by([(POS, "ascending")])
    firsts = table.group_by(KEY, use_threads=False).aggregate([(POS, "min")])[f"{POS}_min"]
    is_first = pc.is_in(table[POS], value_set=firsts)
    reason = pc.if_else(is_first, pa.scalar(None, pa.string()), pa.scalar("duplicate"))
    return table.drop_columns([KEY]).append_column(REASON, reason)


class DedupStep(Step):
    """Also evens out part sizes: the output has about `part_rows` rows per part."""

    def __init__(self, settings, part_rows: int):
        super().__init__(DedupStage, settings)
        self.part_rows = part_rows

    def run(self, ctx: StepContext, inputs: list[PartRef]) -> list[PartRef]:
        check_columns(self.name, self.settings.keys, read_schema(inputs[0]).names)
        counts = rows_of(inputs)
        rows = sum(counts)
        buckets = max(1, -(-rows // self.part_rows))
        groups = group_by_rows(inputs, ctx.task_rows, counts)
        stats = ctx.run_phase("scatter", [ReadParts(g) for g in groups],
                              ScatterByKey(self.settings.keys, buckets), row_group_key=BUCKET)
        ranges = bucket_ranges(buckets, -(-rows // ctx.task_rows))
        scattered = ctx.data_parts("scatter", len(groups))
        readers = [ReadParts(bucket_refs(scattered, stats, r)) for r in ranges]
        reduced = ctx.run_phase("reduce", readers, drop_duplicates, row_group_key=BUCKET)
        return ctx.keyed_parts("reduce", reduced, [list(r) for r in ranges])


def bucket_ranges(buckets: int, tasks: int) -> list[range]:
    """`buckets` cut into `tasks` (at most `buckets`) consecutive ranges of about equal size."""
    tasks = max(1, min(tasks, buckets))
    bounds = [buckets * i // tasks for i in range(tasks + 1)]
    return [range(a, b) for a, b in zip(bounds, bounds[1:])]


def build_step(settings: DedupSettings, run) -> DedupStep:
    return DedupStep(settings, run.input.part_rows)
