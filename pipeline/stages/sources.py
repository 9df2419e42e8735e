"""Input files: find them, check them (one clear error per problem), read them in slices.

Every problem a user can make with an input file (missing, unreadable, wrong columns) is a
`UserError` raised at planning time, before any work starts.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import re
from dataclasses import dataclass
from typing import Optional

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core import parts, storage
from pipeline.errors import UserError

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".tsv": "tsv",
           ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
           ".warc": "warc", ".wat": "wat"}
MALFORMED = "_malformed"   # internal column: the raw text of a row that could not be parsed
csv.field_size_limit(2**31 - 1)   # a long field is a long value (ingest drops it as oversized_field)
LONE_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class SourceSlice:
    path: str
    format: str
    row_groups: Optional[tuple[int, ...]] = None   # parquet only; None = the whole file
    first_row: int = 0                             # parquet: the file's row the slice starts at
    rows: Optional[int] = None                     # parquet: rows in the slice
    arrays: tuple = ()   # pool embeddings (`pool_embeddings`): (name, dim, dtype) of the npz beside it


def find_files(paths: list[str]) -> list[str]:
    """Expand files, folders (recursively) and globs, local or in a bucket, into a sorted
    list of data files (the only listing the pipeline makes: of the user's input)."""
    found: list[str] = []
    for path in paths:
        if any(ch in path for ch in "*?["):
            matches = storage.glob(path)
            if not matches:
                raise UserError(f"{path}: no input files match")
            found.extend(matches)
        elif storage.isfile(path):
            found.append(path)
        elif storage.isdir(path):
            inside = [p for p in storage.files_under(path) if detect_format(p, None, strict=False)]
            if not inside:
                raise UserError(f"{path}: folder holds no parquet, csv, tsv, jsonl, warc or wat files")
            found.extend(inside)
        else:
            raise UserError(f"{path}: no such file or folder")
    return found


def detect_format(path: str, declared: Optional[str], strict: bool = True) -> Optional[str]:
    if declared:
        return declared
    name = path.lower()
    for suffix in (".gz", ".zst", ".bz2"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    for suffix, fmt in FORMATS.items():
        if name.endswith(suffix):
            return fmt
    if name.endswith(".arc"):   # not skipped in a folder either: its pages would be lost silently
        from pipeline.crawl.archive import arc_unsupported
        raise arc_unsupported(path)
    if strict:
        raise UserError(f"{path}: unknown file type (use .parquet, .csv, .tsv, .jsonl, .warc.gz, "
                        f".wat.gz or set input.format)")
    return None


def plan_slices(path: str, fmt: str, columns: list[str], part_rows: int) -> list[SourceSlice]:
    """Check one file and cut it into slices of about `part_rows` rows."""
    if fmt == "parquet":
        return _plan_parquet(path, columns, part_rows)
    if fmt in ("csv", "tsv"):
        _check_columns(path, _csv_header(path, fmt), columns)
    elif fmt == "jsonl":
        _check_columns(path, _jsonl_keys(path), columns)
    elif fmt not in ("warc", "wat"):
        raise UserError(f"{path}: unsupported input format '{fmt}'")
    return [SourceSlice(path, fmt)]


def _plan_parquet(path: str, columns: list[str], part_rows: int) -> list[SourceSlice]:
    try:
        with storage.open_input(path) as stream:
            file = pq.ParquetFile(stream)
            meta, names = file.metadata, file.schema_arrow.names
    except storage.StorageError:
        raise
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise UserError(f"{path}: not a readable parquet file ({_first_line(exc)})") from None
    _check_columns(path, names, columns)
    for column in columns:
        _check_text_type(path, column, file.schema_arrow.field(column).type)
    slices, group, rows, first = [], [], 0, 0
    for index in range(meta.num_row_groups):
        group.append(index)
        rows += meta.row_group(index).num_rows
        if rows >= part_rows:
            slices.append(SourceSlice(path, "parquet", tuple(group), first, rows))
            group, first, rows = [], first + rows, 0
    if group or not slices:
        slices.append(SourceSlice(path, "parquet", tuple(group), first, rows))
    return slices


def _check_columns(path: str, names: list[str], needed: list[str]) -> None:
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise UserError(f"{path}: column name{'s' if len(repeated) > 1 else ''} "
                        f"{', '.join(repr(n) for n in repeated)} appear{'' if len(repeated) > 1 else 's'} "
                        f"more than once (rename them)")
    for column in needed:
        if column not in names:
            shown = ", ".join(names[:20]) or "none"
            raise UserError(f"{path}: missing column '{column}' (columns: {shown})")


def _check_text_type(path: str, column: str, type_: pa.DataType) -> None:
    """The url and caption columns hold text, or scalars that read as text (numbers)."""
    if pa.types.is_nested(type_) or pa.types.is_dictionary(type_) and pa.types.is_nested(type_.value_type):
        raise UserError(f"{path}: column '{column}' has type {type_}, expected text")


def _open_text(path: str):
    try:
        stream = storage.open_input(path, sequential=True)
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if path.endswith(".gz"):
        stream = gzip.GzipFile(fileobj=stream, mode="rb")
    elif path.endswith((".bz2", ".zst")):
        stream = pa.CompressedInputStream(pa.PythonFile(stream, mode="r"), "bz2" if path.endswith(".bz2") else "zstd")
    return io.TextIOWrapper(stream, encoding="utf-8", errors="replace", newline="")


def _csv_header(path: str, fmt: str) -> list[str]:
    try:
        with _open_text(path) as fh:
            header = next(csv.reader(fh, delimiter="\t" if fmt == "tsv" else ","), None)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise UserError(f"{path}: cannot read ({_first_line(exc)})") from None
    if not header:
        raise UserError(f"{path}: empty file (no header row)")
    return header


def _jsonl_keys(path: str) -> list[str]:
    try:
        with _open_text(path) as fh:
            for line in fh:
                if line.strip():
                    record = json.loads(line)
                    if not isinstance(record, dict):
                        raise UserError(f"{path}: line 1 is not a JSON object")
                    return list(record)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: first line is not valid JSON ({_first_line(exc)})") from None
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise UserError(f"{path}: cannot read ({_first_line(exc)})") from None
    raise UserError(f"{path}: empty file")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def read_slice(piece: SourceSlice) -> tuple[pa.Table, Optional[pa.Array], dict]:
    """Read one slice: a table with the file's own columns; the raw text of each row that
    could not be parsed (null for the others; None when every row parsed); and what was
    read: `rows`, and for archives the reader's counts (records, pages, ...)."""
    counts: dict = {}
    malformed = None
    if piece.format == "parquet":
        table = parts.read_ref(parts.PartRef(piece.path, tuple(piece.row_groups or ())))
    elif piece.format in ("csv", "tsv"):
        table, malformed = _read_csv(piece.path, "\t" if piece.format == "tsv" else ",")
    elif piece.format == "jsonl":
        table, malformed = _read_jsonl(piece.path)
    else:
        table = _read_archive(piece, counts)
    return table, malformed, {"rows": table.num_rows, **counts}


def _read_archive(piece: SourceSlice, counts: dict) -> pa.Table:
    from pipeline.crawl.archive import ARCHIVE_SCHEMA, iter_warc_pairs, iter_wat_pairs

    with storage.local_file(piece.path) as path:
        batches = (iter_wat_pairs if piece.format == "wat" else iter_warc_pairs)(path, counts=counts)
        return pa.Table.from_batches(list(batches), schema=ARCHIVE_SCHEMA)


def merge_counts(sources: list[dict]) -> list[dict]:
    """One entry per input file (its slices' counts summed), in input order."""
    merged: dict[str, dict] = {}
    for source in sources:
        entry = merged.setdefault(source["path"], {"path": source["path"], "format": source["format"]})
        for key, value in source.items():
            if isinstance(value, int) and not isinstance(value, bool):
                entry[key] = entry.get(key, 0) + value
    return list(merged.values())


def _read_csv(path: str, delimiter: str) -> tuple[pa.Table, Optional[pa.Array]]:
    with _open_text(path) as fh:
        reader = csv.reader(fh, delimiter=delimiter)
        header = next(reader, [])
        rows, malformed = [], []
        for record in reader:
            if len(record) == len(header):
                rows.append(record)
                malformed.append(None)
            elif record:
                rows.append([None] * len(header))
                malformed.append(delimiter.join(record))
    return _rows_to_table(header, rows, malformed)


def _read_jsonl(path: str) -> tuple[pa.Table, Optional[pa.Array]]:
    records, malformed = [], []
    with _open_text(path) as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError
                records.append({encodable(k): _scalar(v) for k, v in record.items()})
                malformed.append(None)
            except ValueError:
                records.append({})
                malformed.append(line.rstrip("\n"))
    names = list(dict.fromkeys(k for r in records for k in r))
    rows = [[r.get(k) for k in names] for r in records]
    return _rows_to_table(names, rows, malformed)


def _scalar(value):
    """A JSON value as text: strings as they are, objects and lists as JSON, others by str."""
    if value is None:
        return value
    if not isinstance(value, str):
        value = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
    return encodable(value)


def encodable(text: str) -> str:
    """`text` with each lone surrogate (from a JSON `\\ud800` escape; not valid UTF-8)
    replaced by U+FFFD, as a decoder replaces invalid bytes."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return LONE_SURROGATE.sub("\ufffd", text)


def _rows_to_table(names: list[str], rows: list[list], malformed: list) -> tuple[pa.Table, Optional[pa.Array]]:
    arrays = [pa.array([r[i] for r in rows], pa.string()) for i in range(len(names))]
    if names:
        table = pa.Table.from_arrays(arrays, names)
    else:   # no columns, but one row per line read
        table = pa.table({"rows": pa.nulls(len(malformed))}).drop_columns(["rows"])
    raw = pa.array(malformed, pa.string()) if any(m is not None for m in malformed) else None
    return table, raw
