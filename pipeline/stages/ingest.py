"""ingest: read URL-caption lists into `url`, `text`, the input's other columns, and a `uid`.

Rows whose URL cannot be fetched (null, empty, not http(s), no host) are dropped as
`invalid_url`; rows the file format could not parse are dropped as `malformed_row`. With
`exclude` and no dedup step to join them (`pipeline.core.run_index`), rows whose uid an
earlier run holds are dropped as `in_earlier_run`. Rows whose URL, or a domain its host is
under, is on a `blocklist` go as `blocklisted` (`pipeline.blocklist`).

With `input.uid_col` (a DataComp pool's `uid`), that column's values are the rows' uids, not
re-hashed; a value that is not 32 lowercase hex digits drops its row as `invalid_uid` (known
in the ledger by the hash of its url and text). With `input.uids` (a uids.npy), rows whose
uid it does not hold go as `not_in_uids` (`pipeline.core.uid_arrays`).

With `input.embeddings` (names of arrays in the `.npz` beside each parquet file: a DataComp
pool's `l14_img`, ...), the reader adds each as the column `pool_<name>`, row i of the file
getting row i of the array (`pipeline.stages.pool_embeddings`); the driver checks every npz
when it plans the input.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import blocklist
from pipeline.blocklist import BlocklistSettings
from pipeline.core.hashing import uids_of
from pipeline.core.parts import INTERNAL_PREFIX
from pipeline.core.run_index import KeySet, earlier_files, matched_reasons
from pipeline.core.stage import POS, PUBLIC_COLUMNS, Stage, with_reason
from pipeline.core.steps import Step, StepContext
from pipeline.core.tasks import SOURCE_STATS, StageOp
from pipeline.core.uid_arrays import UID_PATTERN, UidSubset, halves
from pipeline.errors import UserError
from pipeline.stages import pool_embeddings
from pipeline.stages.sources import (
    MALFORMED,
    SourceSlice,
    detect_format,
    find_files,
    merge_counts,
    plan_slices,
    read_slice,
)

ARCHIVES = ("warc", "wat")   # their pairs come as `url` and `text`, whatever input.url_col says
INPUT_PREFIX = "input_"   # an input column named as one the pipeline uses gets it (see input_names)
MAX_FIELD_CHARS = 1 << 20   # a url or caption longer than this goes as oversized_field
POOL_UID = "_pool_uid"      # the input's own uids (input.uid_col), until ingest checks them
UID_SHAPE = f"^{UID_PATTERN}$"
INVALID_UID, NOT_IN_UIDS = "invalid_uid", "not_in_uids"

# scheme http(s), optional user info, a host (name or [v6]), optional port, then path/query.
URL_SHAPE = (r"^[hH][tT][tT][pP][sS]?://([^/?#@\s]*@)?(\[[0-9A-Fa-f:.]+\]|[^/?#:@\s\[\]]+)"
             r"(:[0-9]{1,5})?([/?#]\S*)?$")
HOST_HAS_ALNUM = r"^[^:]+://([^/?#@\s]*@)?[^/?#]*[\p{L}\p{N}]"


@dataclass
class ReadSource:
    """Reader for one input slice, mapping the user's columns to `url` and `text`."""
    piece: SourceSlice
    url_col: str
    text_col: str
    part: int
    reserved: frozenset = frozenset()   # the columns the pipeline adds (`declared_outputs`)
    uid_col: Optional[str] = None       # the input's own uids, kept as the rows' uids
    embeddings: tuple = ()              # (column, Arrow type) of the pool embeddings (`embedding_fields`)

    def __call__(self) -> pa.Table:
        raw, malformed, counts = read_slice(self.piece)
        table = normalize(raw, self.url_col, self.text_col, self.part, self.piece.path, self.reserved,
                          self.uid_col)
        for name, values in pool_columns(self.piece, self.embeddings, raw.num_rows):
            table = table.append_column(name, values)
        if malformed is not None:
            table = table.append_column(MALFORMED, malformed)
        source = {"path": self.piece.path, "format": self.piece.format, **counts}
        return table.replace_schema_metadata({SOURCE_STATS: json.dumps(source)})


def normalize(raw: pa.Table, url_col: str, text_col: str, part: int, path: str,
              reserved: frozenset = frozenset(), uid_col: Optional[str] = None) -> pa.Table:
    """`url`, `text`, the input's other columns (renamed by `input_names`) and `_pos`; with
    `uid_col`, that column as `_pool_uid` (ingest makes it the uid)."""
    rows = raw.num_rows
    names = [n for n in raw.column_names if n not in (url_col, text_col, uid_col)]
    arrays = [_as_text(raw, url_col, rows, path), _as_text(raw, text_col, rows, path)]
    arrays += [raw[n] for n in names]
    arrays.append(pa.array((np.int64(part) << 32) + np.arange(rows, dtype=np.int64)))
    renamed = input_names(names, reserved | set(PUBLIC_COLUMNS))
    table = pa.Table.from_arrays(arrays, ["url", "text", *[renamed[n] for n in names], POS])
    return table if uid_col is None else table.append_column(POOL_UID, _as_text(raw, uid_col, rows, path))


def pool_columns(piece: SourceSlice, fields: tuple, rows: int) -> list[tuple[str, pa.Array]]:
    """The pool embedding columns of a slice's rows: its rows of the npz beside its file
    (nulls for a file without one: crawled pairs)."""
    if not fields:
        return []
    names = [name for name, _, _ in piece.arrays]
    if not names:
        return [(column, pa.nulls(rows, type_)) for column, type_ in fields]
    if piece.rows is not None and piece.rows != rows:
        raise UserError(f"{piece.path}: read {rows} rows where the footer says {piece.rows} (file changed?)")
    found = pool_embeddings.read_rows(pool_embeddings.npz_path(piece.path), names, piece.first_row, rows)
    return [(column, pool_embeddings.embedding_column(found[name], type_))
            for name, (column, type_) in zip(names, fields)]


def embedding_fields(settings, planned: Optional[list[SourceSlice]]) -> tuple:
    """(column, Arrow type) of each `input.embeddings` array: fixed-size lists of the width
    the planned files' arrays have (any width when not planned yet)."""
    fields = []
    for name in getattr(settings, "embeddings", None) or []:
        found = {(dim, dtype) for piece in planned or [] for array, dim, dtype in piece.arrays if array == name}
        dims = {dim for dim, _ in found}
        type_ = pool_embeddings.arrow_type([dtype for _, dtype in found], dims.pop() if len(dims) == 1 else None)
        fields.append((pool_embeddings.column_name(name), type_))
    return tuple(fields)


def input_names(names: list[str], reserved) -> dict[str, str]:
    """The name each input column goes by. A name the pipeline uses, internal (starting
    with `_`) or one a stage adds (`reserved`: `uid`, `jpg`, `key`, `clip_score`, ...),
    gets `input_` in front, again until it is free; every other name stays."""
    def clashes(name: str) -> bool:
        return name.startswith(INTERNAL_PREFIX) or name in reserved

    taken = {n for n in names if not clashes(n)} | set(reserved)
    renamed = {}
    for name in names:
        target = name
        while clashes(target) or (target != name and target in taken):
            target = INPUT_PREFIX + target
        taken.add(target)
        renamed[name] = target
    return renamed


def _as_text(raw: pa.Table, name: str, rows: int, path: str) -> pa.ChunkedArray | pa.Array:
    """The column as text (numbers as their digits, bytes decoded as UTF-8 with U+FFFD for
    invalid sequences); a missing column is nulls."""
    if name not in raw.column_names:
        return pa.nulls(rows, pa.string())
    column = raw[name]
    if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
        return pa.array([None if v is None else v.decode("utf-8", "replace") for v in column.to_pylist()],
                        pa.string())
    try:
        return column.cast(pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise UserError(f"{path}: column '{name}' has type {column.type}, expected text") from None


@dataclass
class IngestOptions:
    earlier: tuple = ()                          # index files of earlier runs whose uids to drop
    blocklist: Optional[BlocklistSettings] = None
    uids: Optional[str] = None                   # a uids.npy: keep only the rows whose uid it holds
    embeddings: tuple = ()                       # (column, Arrow type): pool embeddings its reader adds


class IngestStage(Stage):
    """Settings: `IngestOptions` (or None)."""
    name = "ingest"
    label = "ingest"
    filters = False
    inputs = ()
    outputs = (("uid", pa.string()), ("url", pa.string()), ("text", pa.string()))
    withheld_reasons = frozenset({blocklist.BLOCKLISTED})

    @classmethod
    def output_fields(cls, settings) -> tuple:
        """uid, url, text, and the pool embeddings its reader adds (`input.embeddings`)."""
        return cls.outputs + tuple(getattr(settings, "embeddings", ()) or ())

    def __init__(self, settings=None, seed: int = 0):
        super().__init__(settings, seed)
        self.earlier = None
        self.blocked = None
        self.subset = None

    def setup(self) -> None:
        options = self.settings or IngestOptions()
        self.earlier = KeySet.of_files(options.earlier, "uid") if options.earlier else None
        self.blocked = blocklist.matcher(options.blocklist)
        self.subset = UidSubset(options.uids) if options.uids else None

    def process(self, table: pa.Table) -> pa.Table:
        url = pc.utf8_trim_whitespace(table["url"])
        table = table.set_column(table.schema.get_field_index("url"), "url", url)
        malformed = table[MALFORMED] if MALFORMED in table.column_names else None
        reasons = pc.if_else(valid_url(url), pa.scalar(None, pa.string()), pa.scalar("invalid_url"))
        if POOL_UID in table.column_names:   # the input's own uids, where they are well formed
            own = table[POOL_UID].combine_chunks().cast(pa.string())
            shaped = pc.fill_null(pc.match_substring_regex(own, UID_SHAPE), False)
            unshaped = pc.invert(shaped).combine_chunks() if isinstance(shaped, pa.ChunkedArray) else pc.invert(shaped)
            pick = (lambda column: None if column is None else pc.filter(column, unshaped))   # noqa: E731
            hashed = hashed_uids(pick(url), pick(table["text"]), pick(malformed))   # only rows without one
            uid = pc.replace_with_mask(own, unshaped, hashed)
            reasons = pc.if_else(shaped, reasons, pa.scalar(INVALID_UID))
            table = table.drop_columns([POOL_UID])
        else:
            uid = hashed_uids(url, table["text"], malformed)
        table = table.add_column(0, "uid", uid)
        reasons = pc.if_else(oversized(url, table["text"]), pa.scalar("oversized_field"), reasons)
        if malformed is not None:
            reasons = pc.if_else(pc.is_valid(malformed), pa.scalar("malformed_row"), reasons)
            table = table.drop_columns([MALFORMED])
        table = with_reason(table, reasons)
        if self.blocked is not None:
            found = self.blocked.urls_blocked(url.to_pylist())
            table = with_reason(table, pa.array(np.where(found, blocklist.BLOCKLISTED, None).tolist(), pa.string()))
        if self.subset is not None:
            held = self.subset.contains(*halves(table["uid"]))
            table = with_reason(table, pa.array(np.where(held, None, NOT_IN_UIDS).tolist(), pa.string()))
        if self.earlier is not None:
            table = with_reason(table, matched_reasons(self.earlier.contains(uid)))
        return table


def hashed_uids(url, text, malformed) -> pa.Array:
    """The url+text uid of each row; a row that could not be parsed is known by its raw text."""
    urls = url.to_pylist()
    if malformed is not None:
        urls = [raw if raw is not None else u for u, raw in zip(urls, malformed.to_pylist())]
    return pa.array(uids_of(urls, text.to_pylist()), pa.string())


def oversized(url, text) -> pa.ChunkedArray:
    """True where the url or the caption is longer than MAX_FIELD_CHARS."""
    return pc.fill_null(pc.or_(pc.greater(pc.utf8_length(url), MAX_FIELD_CHARS),
                               pc.greater(pc.utf8_length(text), MAX_FIELD_CHARS)), False)


def valid_url(url: pa.ChunkedArray) -> pa.ChunkedArray:
    """True for fetchable http(s) URLs with a host; False for null, empty and everything else."""
    shaped = pc.match_substring_regex(url, URL_SHAPE)
    has_host = pc.match_substring_regex(url, HOST_HAS_ALNUM)
    return pc.fill_null(pc.and_(shaped, has_host), False)


class IngestStep(Step):
    """Plans the input slices on the driver (checking every file), then reads them as parts.
    `crawled` files (from the crawl step) join the input with columns `url` and `text`;
    `exclude`: earlier run folders whose uids to drop here."""

    def __init__(self, settings, crawled: list[str] = (), exclude: list[str] = (),
                 blocked: Optional[BlocklistSettings] = None, reserved: frozenset = frozenset(),
                 planned: Optional[list[SourceSlice]] = None):
        super().__init__(IngestStage, IngestOptions(embeddings=embedding_fields(settings, planned)))
        self.input = settings
        self.planned = planned   # the input's slices, when the driver planned them already
        self.reserved = frozenset(reserved)
        self.crawled = list(crawled)
        self.exclude = list(exclude)
        self.blocked = blocked if blocked is not None and blocked.any("urls", "domains") else None

    def run(self, ctx: StepContext, inputs: list[str]) -> list[str]:
        named = (self.input.url_col, self.input.text_col, self.input.uid_col)
        pairs = ("url", "text", None)   # archives and crawled pairs: uids hashed from url and text
        planned = self.planned if self.planned is not None else plan_input(self.input, bool(self.crawled))
        sources = [(piece, pairs if piece.format in ARCHIVES else named) for piece in planned]
        sources += [(piece, pairs) for path in self.crawled
                    for piece in plan_slices(path, "parquet", ["url", "text"], self.input.part_rows)]
        fields = embedding_fields(self.input, planned)
        readers = [ReadSource(piece, url_col, text_col, i, self.reserved, uid_col, fields)
                   for i, (piece, (url_col, text_col, uid_col)) in enumerate(sources)]
        earlier = tuple(earlier_files(self.exclude)) if self.exclude else ()
        options = IngestOptions(earlier, self.blocked, self.input.uids, fields)
        stats = ctx.run_phase("map", readers, StageOp(IngestStage, options, ctx.seed))
        ctx.record["sources"] = merge_counts([s["source"] for s in stats])
        return ctx.data_parts("map", len(readers))


def plan_input(settings, optional: bool = False) -> list[SourceSlice]:
    if not settings.path:
        if optional:
            return []
        raise UserError("input.path: no input given (or add a crawl section)")
    slices = []
    arrays = list(getattr(settings, "embeddings", None) or [])
    pool_embeddings.check_names(arrays)
    for path in find_files(settings.path):
        fmt = detect_format(path, settings.format)
        columns = [] if fmt in ARCHIVES else [settings.url_col, settings.text_col, *own_uids(settings)]
        planned = plan_slices(path, fmt, columns, settings.part_rows)
        slices.extend(with_arrays(planned, arrays) if arrays else planned)
    if arrays:
        check_widths(slices, arrays)
    return slices


def with_arrays(planned: list[SourceSlice], arrays: list[str]) -> list[SourceSlice]:
    """A parquet file's slices with the headers of its npz's arrays (checked: there, 2-d
    floats, as many rows as the file)."""
    path = planned[0].path
    if planned[0].format != "parquet":
        raise UserError(f"{path}: input.embeddings reads the .npz beside each parquet file (DataComp's "
                        f"metadata); this input is {planned[0].format}")
    rows = planned[-1].first_row + (planned[-1].rows or 0)
    headers = pool_embeddings.read_headers(pool_embeddings.npz_path(path), arrays, rows)
    found = tuple((name, headers[name].dim, headers[name].dtype) for name in arrays)
    return [dataclasses.replace(piece, arrays=found) for piece in planned]


def check_widths(slices: list[SourceSlice], arrays: list[str]) -> None:
    """Every file's array of one name has one width (the column's list size)."""
    first: dict = {}
    for piece in slices:
        for name, dim, _ in piece.arrays:
            path, width = first.setdefault(name, (piece.path, dim))
            if width != dim:
                raise UserError(f"{pool_embeddings.npz_path(piece.path)}: array '{name}' is {dim} wide, "
                                f"in {pool_embeddings.npz_path(path)} {width}")


def own_uids(settings) -> list[str]:
    """The input's uid column, when it has one (`input.uid_col`)."""
    return [settings.uid_col] if settings.uid_col else []
