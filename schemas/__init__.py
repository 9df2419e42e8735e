"""Arrow schemas of what a run writes (versioned). Columns a stage adds are listed with the
stage; `kept/` also carries every column of the input. Tests check runs against these."""
from __future__ import annotations

import pyarrow as pa

VERSION = 1

LEDGER_V1 = pa.schema([("uid", pa.string()), ("url", pa.string()),
                       ("stage", pa.string()), ("reason", pa.string())])

INDEX_V1 = pa.schema([("uid", pa.string()), ("sha256", pa.string()), ("phash", pa.string())])
"""`index/`: what a run holds (its kept rows), read by later runs' `exclude`."""

INGEST_V1 = pa.schema([("uid", pa.string()), ("url", pa.string()), ("text", pa.string())])

STAGE_COLUMNS_V1 = {
    "language": pa.schema([("language", pa.string()), ("language_score", pa.float32())]),
    "metadata": pa.schema([("entry_ids", pa.list_(pa.int32()))]),
    "download": pa.schema([("width", pa.int32()), ("height", pa.int32()),
                           ("original_width", pa.int32()), ("original_height", pa.int32()),
                           ("sha256", pa.string())]),
    "clip_score": pa.schema([("clip_score", pa.float32())]),
    "shard": pa.schema([("shard", pa.string()), ("key", pa.string())]),
    "face_blur": pa.schema([("faces", pa.int32())]),   # added by shard when face_blur is on
    "crawl": pa.schema([("title", pa.string()), ("figcaption", pa.string()),
                        ("page_url", pa.string())]),
}

ENTRY_COUNTS_V1 = pa.schema([("entry_id", pa.int32()), ("entry", pa.string()),
                             ("count_before", pa.int64()), ("count_after", pa.int64())])


def kept_schema(stages: list[str]) -> pa.Schema:
    """The columns `kept/` must have after running `stages` (input columns come on top)."""
    fields = list(INGEST_V1)
    for stage in stages:
        fields.extend(STAGE_COLUMNS_V1.get(stage, pa.schema([])))
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
