"""The stage contract: a pure transformation of Arrow tables.

A stage receives a `pyarrow.Table` (one part of the data set) and returns a table with the
same rows in the same order, with the columns it adds, plus an optional string column
`_reason`: null keeps the row, a value drops it with that reason. The framework splits kept
and dropped rows, writes the ledger and the stats; stage code never imports Ray or Spark.

`setup()` runs once per worker process before the first `process()` (load a model there).
`resources` declares what one task of the stage needs from the engine.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import pyarrow as pa

from pipeline.core.images import IMAGE, IMAGE_FILE
from pipeline.errors import UserError

REASON = "_reason"
DETAIL = "_detail"   # optional: what a dropped row's reason refers to (e.g. the evaluation set it copies),
                     # kept in the ledger's `detail` column
POS = "_pos"   # a row's position in the input (part << 32 | row), for deterministic ties
DEFERRED = "_deferred"   # a `_reason` meaning "not reached in this task": the step runs the
                         # task's last rows again as smaller tasks (a suffix; see core.steps)


@dataclass(frozen=True)
class Resources:
    cpus: float = 1.0
    gpus: float = 0.0
    stateful: bool = False   # setup() loads a model: engines keep long-lived workers for it


PUBLIC_COLUMNS = ("uid", "url", "text")   # every row's identity and pair, set by ingest


class Stage:
    """A stage declares the columns it reads and adds; the run is planned from these
    declarations (`pipeline.core.columns`): which columns each step carries, which names an
    input file may not use, and what the part task checks that a stage added."""
    name: ClassVar[str] = ""
    label: ClassVar[str] = ""              # what people call it (report, the demo's ablation)
    filters: ClassVar[bool] = True         # it keeps rows by a criterion (an ablation removes it)
    inputs: ClassVar[tuple] = ()           # the columns process() reads
    outputs: ClassVar[tuple] = ()          # (name, Arrow type) of every public column it adds
    optional: ClassVar[tuple] = ()         # names among `outputs` added only when wanted (`wants`)
    inputs_from: ClassVar[str] = ""        # the stage that makes its inputs (for messages)
    resources: ClassVar[Resources] = Resources()
    reads_images: ClassVar[bool] = False   # process() needs the image bytes (`jpg`)
    writes_images: ClassVar[bool] = False  # its step writes the images out (applies ImageTransforms)
    withheld_reasons: ClassVar[frozenset] = frozenset()   # drop reasons whose URL the ledger withholds

    @classmethod
    def input_columns(cls, settings: Any) -> tuple:
        """The columns it reads with `settings`."""
        return cls.inputs

    @classmethod
    def output_fields(cls, settings: Any) -> tuple:
        """(name, Arrow type) of the columns it adds with `settings` (an optional one only
        when `settings` asks for it)."""
        return cls.outputs

    @classmethod
    def output_columns(cls, settings: Any) -> tuple:
        return tuple(name for name, _ in cls.output_fields(settings))

    @classmethod
    def kept_columns(cls, settings: Any) -> tuple:
        """Optional outputs its settings ask to keep in the run's result (`kept/`, tars)."""
        return ()

    @classmethod
    def wants(cls, settings: Any, columns: frozenset) -> Any:
        """Its settings, made to add the optional `columns` (a later stage reads them)."""
        return settings

    @classmethod
    def check_columns(cls, names) -> None:
        """One clear error when rows lack a declared input (`jpg` may be a reference)."""
        check_columns(cls.name, cls.inputs, names, cls.inputs_from)

    def __init__(self, settings: Any, seed: int = 0):
        self.settings = settings
        self.seed = seed

    @classmethod
    def rest_settings(cls, settings: Any) -> Any:
        """The settings of the tasks that run rows this stage deferred (see core.steps)."""
        return settings

    def setup(self) -> None:
        """Load models or tables once per worker."""

    def process(self, table: pa.Table) -> pa.Table:
        raise NotImplementedError


class ImageTransform:
    """Changes the images a step writes out (`Step.writes_images`: the shard step, as it
    writes the tars), e.g. blurring faces; declares the columns it adds to those rows. A
    section of its own, with no step: its module exposes `image_transform(settings)`."""
    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    outputs: ClassVar[tuple] = ()   # (name, Arrow type) of the columns `apply` adds

    def __init__(self, settings: Any):
        self.settings = settings

    def apply(self, table: pa.Table) -> pa.Table:
        """`table` (with the image bytes, `jpg`) with its images changed and `outputs` added."""
        raise NotImplementedError


def check_columns(stage: str, needed, names, inputs_from: str = "") -> None:
    present = set(names)
    if IMAGE_FILE in present:
        present.add(IMAGE)
    missing = [c for c in needed if c not in present]
    if missing:
        hint = f" (add a {inputs_from} section before {stage})" if inputs_from else ""
        raise UserError(f"{stage}: the rows have no {', '.join(repr(c) for c in missing)} "
                        f"column{'s' if len(missing) > 1 else ''}{hint}")


def set_column(table: pa.Table, name: str, values) -> pa.Table:
    """`table` with column `name` set to `values` (replaced or appended)."""
    index = table.schema.get_field_index(name)
    if index >= 0:
        return table.set_column(index, name, values)
    return table.append_column(name, values)


def with_reason(table: pa.Table, reasons: pa.Array) -> pa.Table:
    """Attach drop reasons (null = keep) to a table, combining with any earlier reason."""
    if REASON in table.column_names:
        import pyarrow.compute as pc

        reasons = pc.coalesce(table[REASON], reasons)
        return table.set_column(table.schema.get_field_index(REASON), REASON, reasons)
    return table.append_column(REASON, reasons)


def first_reason(checks: list, rows: int) -> pa.Array:
    """The reason of the first check that is true for each row (null when none is):
    `checks` are (condition, reason) pairs in order."""
    import pyarrow.compute as pc

    reason = pa.nulls(rows, pa.string())
    for condition, name in reversed(checks):
        reason = pc.if_else(pc.fill_null(condition, False), pa.scalar(name), reason)
    return reason
