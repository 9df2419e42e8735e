"""Arrow schemas of what a run writes (versioned). The columns each stage adds are generated
from the stages' declarations (`schemas/columns.py`, `python -m schemas.generate`); `kept/`
also carries every column of the input. Tests check runs against these."""
from __future__ import annotations

import pyarrow as pa

from schemas.columns import OPTIONAL_V1, STAGE_COLUMNS_V1

VERSION = 1

LEDGER_V1 = pa.schema([("uid", pa.string()), ("url", pa.string()),
                       ("stage", pa.string()), ("reason", pa.string()),
                       ("detail", pa.string())])   # what the reason refers to (decontaminate: the eval set), or null

INDEX_V1 = pa.schema([("uid", pa.string()), ("sha256", pa.string()), ("phash", pa.string()),
                      ("pdq", pa.string()), ("pdq_quality", pa.int32())])
"""`index/`: what a run holds (its kept rows), read by later runs' `exclude` and by
`curate takedown` (PDQ lists checked without downloading again)."""

IMAGE = "jpg"   # the image bytes: in the tars when a shard step ran, else in kept/

INGEST_V1 = pa.schema([("uid", pa.string()), ("url", pa.string()), ("text", pa.string())])

ENTRY_COUNTS_V1 = pa.schema([("entry_id", pa.int32()), ("entry", pa.string()),
                             ("count_before", pa.int64()), ("count_after", pa.int64())])


def kept_schema(stages: list[str]) -> pa.Schema:
    """The columns `kept/` must have after running `stages` (input columns come on top)."""
    fields = list(INGEST_V1)
    for stage in stages:
        fields.extend(f for f in STAGE_COLUMNS_V1.get(stage, pa.schema([]))
                      if f.name not in OPTIONAL_V1 and f.name != IMAGE)
    return pa.schema(fields)


def missing_or_mistyped(actual: pa.Schema, expected: pa.Schema) -> list[str]:
    problems = []
    for field in expected:
        index = actual.get_field_index(field.name)
        if index < 0:
            problems.append(f"missing {field.name}")
        elif actual.field(index).type != field.type:
            problems.append(f"{field.name}: {actual.field(index).type} != {field.type}")
    return problems
