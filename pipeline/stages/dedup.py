"""dedup: exact, global deduplication on the configured keys (default url + text).

Two phases, no engine shuffle: `scatter` hashes each row's key into one of B buckets (B from
the row count and `part_rows`: the output has about `part_rows` rows per part), written as row
groups of one file per task; then each `reduce` task takes a range of buckets (up to
`task_rows` rows), reads it from every scatter file as one contiguous run of row groups, and
keeps the first occurrence of each key in input order (smallest `_pos`), writing one row
group per bucket. Both phases have about rows / `task_rows` tasks whatever the number of
input parts, so the reduce reads (scatter files x reduce tasks) follow data volume only.
Drops: `duplicate`; with `exclude` (keys `url, text`, whose hash is the uid) also
`in_earlier_run`: an `earlier` phase scatters the earlier runs' index uids into the same
buckets, and each reduce task reads its buckets' share of them (a hash join riding on this
shuffle: the earlier uids are read once and written once per run, and a task holds only its
share). Every copy of an earlier uid goes as `in_earlier_run`, before `duplicate`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core import parts
from pipeline.core.constraints import NonEmpty
from pipeline.core.hashing import bucket_of, hash_strings
from pipeline.core.parts import PartRef, read_schema
from pipeline.core.run_index import IN_EARLIER_RUN, earlier_files
from pipeline.core.stage import POS, REASON, Stage, check_columns
from pipeline.core.steps import Step, StepContext, bucket_ranges, bucket_refs, group_by_rows, rows_of
from pipeline.core.tasks import ReadParts

KEY, BUCKET, EARLIER = "_key", "_bucket", "_earlier"
SECTION = "dedup"


@dataclass
class DedupSettings:
    keys: Annotated[list[str], NonEmpty()] = field(default_factory=lambda: ["url", "text"])
    enabled: bool = True


SETTINGS = DedupSettings


class DedupStage(Stage):
    name = "dedup"
    label = "dedup"
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
    """Mark all but the first occurrence (smallest `_pos`) of each key as `duplicate`, and
    rows flagged `_earlier` as `in_earlier_run` (`_bucket` stays: the reduce output is
    written by bucket)."""
    table = table.sort_by([(POS, "ascending")])
    firsts = table.group_by(KEY, use_threads=False).aggregate([(POS, "min")])[f"{POS}_min"]
    is_first = pc.is_in(table[POS], value_set=firsts)
    reason = pc.if_else(is_first, pa.scalar(None, pa.string()), pa.scalar("duplicate"))
    if EARLIER in table.column_names:
        reason = pc.if_else(table[EARLIER], pa.scalar(IN_EARLIER_RUN), reason)
        table = table.drop_columns([EARLIER])
    return table.drop_columns([KEY]).append_column(REASON, reason)


@dataclass
class ScatterUids:
    """Op of `earlier`: index uids with their bucket, sorted by bucket."""
    buckets: int

    def __call__(self, table: pa.Table) -> pa.Table:
        uid = table["uid"]
        return pa.table({"uid": uid, BUCKET: bucket_of(uid.to_pylist(), self.buckets)}).sort_by(BUCKET)


@dataclass
class ReadExcluding:
    """Reader: some buckets' rows, flagged `_earlier` where the uid is among the earlier
    uids scattered into the same buckets (`earlier`: their row groups)."""
    refs: list
    earlier: list

    def __call__(self) -> pa.Table:
        table = ReadParts(self.refs)()
        held = [parts.read_ref(ref, ["uid"])["uid"] for ref in parts.as_refs(self.earlier)]
        chunks = [chunk for column in held for chunk in column.chunks]
        value_set = pa.concat_arrays(chunks) if chunks else pa.array([], pa.string())
        return table.append_column(EARLIER, pc.is_in(table["uid"], value_set=value_set))


class DedupStep(Step):
    """Also evens out part sizes: the output has about `part_rows` rows per part."""

    def __init__(self, settings, part_rows: int, exclude: list[str] = ()):
        super().__init__(DedupStage, settings)
        self.part_rows = part_rows
        self.drops_earlier_uids = joins_uids(settings)
        self.exclude = list(exclude) if self.drops_earlier_uids else []

    def run(self, ctx: StepContext, inputs: list[PartRef]) -> list[PartRef]:
        check_columns(self.name, self.settings.keys, read_schema(inputs[0]).names)
        counts = rows_of(inputs)
        rows = sum(counts)
        buckets = max(1, -(-rows // self.part_rows))
        groups = group_by_rows(inputs, ctx.task_rows, counts)
        stats = ctx.run_phase("scatter", [ReadParts(g) for g in groups],
                              ScatterByKey(self.settings.keys, buckets), row_group_key=BUCKET)
        scattered = ctx.data_parts("scatter", len(groups))
        earlier, held = self.scatter_earlier(ctx, buckets)
        ranges = bucket_ranges(buckets, -(-(rows + held) // ctx.task_rows))
        readers = [ReadExcluding(bucket_refs(scattered, stats, r), earlier(r)) if self.exclude
                   else ReadParts(bucket_refs(scattered, stats, r)) for r in ranges]
        reduced = ctx.run_phase("reduce", readers, drop_duplicates, row_group_key=BUCKET)
        return ctx.keyed_parts("reduce", reduced, [list(r) for r in ranges])

    def scatter_earlier(self, ctx: StepContext, buckets: int):
        """The earlier runs' uids in this step's buckets: (bucket range -> their row groups,
        how many uids)."""
        if not self.exclude:
            return (lambda keys: []), 0
        files = parts.as_refs(earlier_files(self.exclude))
        if not files:
            return (lambda keys: []), 0
        counts = rows_of(files)
        groups = group_by_rows(files, ctx.task_rows, counts)
        stats = ctx.run_phase("earlier", [ReadParts(g, columns=["uid"]) for g in groups],
                              ScatterUids(buckets), row_group_key=BUCKET, counted=False)
        scattered = ctx.data_parts("earlier", len(groups))
        return (lambda keys: bucket_refs(scattered, stats, keys)), sum(counts)


def joins_uids(settings: DedupSettings) -> bool:
    """Whether this dedup drops the uids of excluded runs (its key hash is the uid)."""
    return list(settings.keys) == ["url", "text"]


def build_step(settings: DedupSettings, run) -> DedupStep:
    return DedupStep(settings, run.input.part_rows, run.exclude)


STAGE = DedupStage
