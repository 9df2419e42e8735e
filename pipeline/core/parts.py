"""Parts: parquet files or some of their row groups (`PartRef`), read and written (through
`storage`, atomically), and the schema helpers that join them."""
from __future__ import annotations

import functools
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.core import storage

INTERNAL_PREFIX = "_"   # the framework's own columns; an input column never starts with it


@dataclass(frozen=True)
class PartRef:
    """One part of a step's output: a parquet file, or some of its row groups. Global steps
    write one file per task with one row group per output part, so the number of files
    follows the number of tasks (data volume), not the number of parts."""
    path: str
    row_groups: Optional[tuple] = None   # None: the whole file
    joined: bool = False   # rows a task deferred: read with the part before (steps.logical_parts)
    hidden: tuple = ()     # columns the file holds that no later reader gets (their last reader ran)

    def to_json(self) -> Union[str, dict]:
        if self.row_groups is None and not self.joined and not self.hidden:
            return self.path
        found: dict = {"path": self.path}
        if self.row_groups is not None:
            found["row_groups"] = list(self.row_groups)
        if self.joined:
            found["joined"] = True
        if self.hidden:
            found["hidden"] = list(self.hidden)
        return found


def as_ref(value: Union[str, Path, dict, PartRef]) -> PartRef:
    """A `PartRef` from itself, a path, or its JSON form."""
    if isinstance(value, PartRef):
        return value
    if isinstance(value, dict):
        groups = value.get("row_groups")
        return PartRef(value["path"], None if groups is None else tuple(groups), bool(value.get("joined")),
                       tuple(value.get("hidden", ())))
    return PartRef(str(value))


def as_refs(values: Sequence) -> list[PartRef]:
    return [as_ref(v) for v in values]


@functools.lru_cache(maxsize=2048)   # a driver reads every part of a step (and of the phase before)
def _footer(path: str, version: tuple) -> tuple[pq.FileMetaData, np.ndarray]:
    with _parquet_source(path) as source:
        meta = pq.read_metadata(source)
    sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    return meta, np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def footer(path: str) -> tuple[pq.FileMetaData, np.ndarray]:
    """A parquet file's metadata and the first row of each row group (and the row count
    last), parsed once per process: a task over many row-group parts of one file would
    otherwise parse its footer once per part. Local files are known by mtime and size;
    objects (never changed once their marker exists) by name and how often this
    process wrote them."""
    path = str(path)
    if storage.is_local(path):
        stat = os.stat(path)
        return _footer(path, (stat.st_mtime_ns, stat.st_size))
    return _footer(path, (storage.version(path),))


@contextmanager
def _parquet_source(path: str) -> Iterator:
    """What pyarrow reads a parquet file from: its local path, or a remote file object."""
    if storage.is_local(path):
        yield path
    else:
        with storage.open_input(path) as stream:
            yield stream


def num_rows(ref: Union[str, PartRef]) -> int:
    ref = as_ref(ref)
    _, starts = footer(ref.path)
    if ref.row_groups is None:
        return int(starts[-1])
    return int(sum(starts[i + 1] - starts[i] for i in ref.row_groups))


def read_schema(ref: Union[str, PartRef]) -> pa.Schema:
    ref = as_ref(ref)
    schema = footer(ref.path)[0].schema.to_arrow_schema()
    if ref.hidden:
        schema = pa.schema([f for f in schema if f.name not in ref.hidden], metadata=schema.metadata)
    return schema


def file_rows_of(ref: PartRef) -> np.ndarray:
    """The row numbers (in its file) of each row of a part, in order."""
    _, starts = footer(ref.path)
    if ref.row_groups is None:
        return np.arange(starts[-1], dtype=np.int64)
    pieces = [np.arange(starts[i], starts[i + 1], dtype=np.int64) for i in ref.row_groups]
    return np.concatenate(pieces) if pieces else np.zeros(0, np.int64)


def read_ref(ref: Union[str, PartRef], columns: Optional[list[str]] = None) -> pa.Table:
    ref = as_ref(ref)
    meta, _ = footer(ref.path)
    groups = range(meta.num_row_groups) if ref.row_groups is None else ref.row_groups
    if ref.hidden:
        names = read_schema(ref).names if columns is None else columns
        columns = [c for c in names if c not in ref.hidden]
    with _parquet_source(ref.path) as source:
        return pq.ParquetFile(source, metadata=meta, pre_buffer=True).read_row_groups(
            list(groups), columns=columns)


def read_file_rows(path: str, rows: np.ndarray, columns: list[str]) -> pa.Table:
    """Rows `rows` (row numbers in the file, any order) of `columns`, reading only the row
    groups that hold them."""
    meta, starts = footer(path)
    group_of = np.searchsorted(starts, rows, side="right") - 1
    groups = np.unique(group_of)
    with _parquet_source(path) as source:
        table = pq.ParquetFile(source, metadata=meta, pre_buffer=True).read_row_groups(
            groups.tolist(), columns=columns)
    group_sizes = starts[groups + 1] - starts[groups]
    group_starts = np.concatenate([[0], np.cumsum(group_sizes)]).astype(np.int64)
    position = group_starts[np.searchsorted(groups, group_of)]
    within = rows - starts[group_of]
    return table.take(pa.array(position + within))


def write_parquet(table: pa.Table, path: str | Path, row_group_key: str | None = None,
                  row_group_rows: int | None = None) -> dict:
    """Write `table` atomically. With `row_group_key`, rows are written one row group per
    distinct key value, in key order (a stable sort keeps the order within a key); returns
    {value: row_group_index}. Otherwise row groups of `row_group_rows` (default: one)."""
    groups: dict = {}
    with storage.committing(path) as tmp, pq.ParquetWriter(tmp, table.schema, compression="zstd") as writer:
        if row_group_key is None or table.num_rows == 0:
            writer.write_table(table, row_group_size=max(row_group_rows or table.num_rows, 1))
        else:
            table = table.take(pc.sort_indices(table[row_group_key]))
            keys = table[row_group_key].to_numpy()
            bounds = _run_bounds(keys)
            for index, (start, stop) in enumerate(bounds):
                writer.write_table(table.slice(start, stop - start), row_group_size=stop - start)
                groups[int(keys[start])] = index
    return groups


def _run_bounds(sorted_keys) -> list[tuple[int, int]]:
    if len(sorted_keys) == 0:
        return []
    change = np.flatnonzero(np.diff(sorted_keys)) + 1
    starts = np.concatenate([[0], change])
    stops = np.concatenate([change, [len(sorted_keys)]])
    return list(zip(starts.tolist(), stops.tolist()))


def concat(tables: list[pa.Table]) -> pa.Table:
    tables = [t for t in tables if t is not None]
    if not tables:
        return pa.table({})
    if len(tables) == 1:
        return tables[0]
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowTypeError, pa.ArrowInvalid):  # e.g. a column int in one file, text in another
        schema = unify_schemas([t.schema for t in tables])
        return pa.concat_tables([conform(t, schema) for t in tables])


def unify_schemas(schemas: list[pa.Schema]) -> pa.Schema:
    """One schema for all: types promoted where Arrow can, else the column becomes text."""
    try:
        return pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        names = list(dict.fromkeys(f.name for s in schemas for f in s))
        fields = []
        for name in names:
            found = [s.field(name) for s in schemas if name in s.names]
            try:
                fields.append(pa.unify_schemas([pa.schema([f]) for f in found],
                                               promote_options="permissive").field(0))
            except (pa.ArrowTypeError, pa.ArrowInvalid):
                fields.append(pa.field(name, pa.string()))
        return pa.schema(fields)


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Cast to `schema`, adding null columns the table lacks (values that cannot be cast
    to text are written as their JSON)."""
    columns = []
    for field in schema:
        if field.name not in table.column_names:
            columns.append(pa.nulls(table.num_rows, field.type))
            continue
        column = table[field.name]
        try:
            columns.append(column.cast(field.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            columns.append(pa.array([None if v is None else json.dumps(v, default=str)
                                     for v in column.to_pylist()], field.type))
    return pa.table(columns, schema=schema)


def public_columns(table: pa.Table) -> pa.Table:
    """Drop the framework's internal columns (names starting with '_')."""
    keep = [n for n in table.column_names if not n.startswith(INTERNAL_PREFIX)]
    return table.select(keep)
