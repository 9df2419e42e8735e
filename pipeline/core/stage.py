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

REASON = "_reason"


@dataclass(frozen=True)
class Resources:
    cpus: float = 1.0
    gpus: float = 0.0
    stateful: bool = False   # setup() loads a model: engines keep long-lived workers for it


class Stage:
    name: ClassVar[str] = ""
    resources: ClassVar[Resources] = Resources()
    reads_images: ClassVar[bool] = False   # process() needs the image bytes (`jpg`)

    def __init__(self, settings: Any, seed: int = 0):
        self.settings = settings
        self.seed = seed

    def setup(self) -> None:
        """Load models or tables once per worker."""

    def process(self, table: pa.Table) -> pa.Table:
        raise NotImplementedError


def with_reason(table: pa.Table, reasons: pa.Array) -> pa.Table:
    """Attach drop reasons (null = keep) to a table, combining with any earlier reason."""
    if REASON in table.column_names:
        import pyarrow.compute as pc

        reasons = pc.coalesce(table[REASON], reasons)
        return table.set_column(table.schema.get_field_index(REASON), REASON, reasons)
    return table.append_column(REASON, reasons)
