"""Pool embeddings: the arrays of the `.npz` beside each parquet file of a DataComp pool.

DataComp ships `00000000.npz` beside `00000000.parquet`, with row-aligned float16 arrays
(`b32_img`, `b32_txt` [rows, 512], `l14_img`, `l14_txt` [rows, 768]). With
`input.embeddings: [l14_img, ...]` ingest adds each named array as the column
`pool_<name>` (a fixed-size list of float16, or float32 for float32/float64 arrays; the
prefix keeps them apart from clip_score's `image_embedding` / `text_embedding` and from the
input's own columns). Row i of a parquet file gets row i of its arrays, whatever ingest
drops later and however the file is cut into parts (each slice knows its first row).

Reading. The driver reads only the zip directory and each member's `.npy` header (a few
small reads per file, local or in a bucket) to check names, shapes and row counts before
the run. A part task reads only its own rows: for an uncompressed member (`np.savez`, as
DataComp ships) one byte range per array, found from the zip's local header; for a
compressed one (`np.savez_compressed`) the member is decompressed as a stream up to the
part's rows (memory bounded, time grows with the part's position in the file). No task
holds more than its own rows of one file's arrays.
"""
from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pyarrow as pa

from pipeline.core import storage
from pipeline.errors import UserError

PREFIX = "pool_"                 # a pool array `l14_img` is the column `pool_l14_img`
NAME = re.compile(r"[A-Za-z0-9_]+")
LOCAL_HEADER = 30                # bytes of a zip local file header before its name and extra field


def column_name(array: str) -> str:
    """The column a pool array becomes."""
    return PREFIX + array


def npz_path(parquet_path: str) -> str:
    """The `.npz` beside a parquet file (same stem)."""
    for suffix in (".parquet", ".pq"):
        if parquet_path.lower().endswith(suffix):
            return parquet_path[: -len(suffix)] + ".npz"
    return parquet_path + ".npz"


@dataclass(frozen=True)
class ArrayHeader:
    """One member of an npz: its shape and dtype, and where its data starts."""
    name: str
    rows: int
    dim: int
    dtype: str              # numpy dtype string, e.g. <f2
    fortran: bool
    data_start: int         # offset of the data inside the member (after the .npy header)
    file_offset: int        # offset of the member's data in the zip (-1: compressed)


def arrow_type(dtypes: list[str], dim: Optional[int]) -> pa.DataType:
    """The column type for arrays of these dtypes: float16 if all are, else float32."""
    value = pa.float16() if dtypes and all(np.dtype(d) == np.float16 for d in dtypes) else pa.float32()
    return pa.list_(value, dim) if dim else pa.list_(value)


def check_names(names: list[str]) -> None:
    for name in names:
        if not NAME.fullmatch(name or ""):
            raise UserError(f"input.embeddings: {name!r} is not an array name (letters, digits and _, "
                            f"e.g. l14_img)")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UserError(f"input.embeddings: {', '.join(repeated)} listed twice")


def read_headers(path: str, names: list[str], rows: Optional[int] = None) -> dict[str, ArrayHeader]:
    """The headers of arrays `names` of the npz `path`, checked: each is there, 2-d, of
    floats, and (with `rows`) has that many rows. One-line `UserError`s naming the file."""
    try:
        with storage.open_input(path) as stream:
            archive = zipfile.ZipFile(stream)
            return {name: _header(archive, stream, path, name, rows) for name in names}
    except FileNotFoundError:
        raise UserError(f"{path}: no such file (input.embeddings reads the .npz beside each parquet "
                        f"file)") from None
    except zipfile.BadZipFile as exc:
        raise UserError(f"{path}: not a .npz file ({exc})") from None
    except storage.StorageError:
        raise
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _header(archive: zipfile.ZipFile, stream, path: str, name: str, rows: Optional[int]) -> ArrayHeader:
    members = [n[:-4] for n in archive.namelist() if n.endswith(".npy")]
    if f"{name}.npy" not in archive.namelist():
        raise UserError(f"{path}: no array '{name}' (arrays: {', '.join(members) or 'none'})")
    info = archive.getinfo(f"{name}.npy")
    with archive.open(info) as member:
        try:
            version = np.lib.format.read_magic(member)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(member)
        except ValueError as exc:
            raise UserError(f"{path}: array '{name}' is not a .npy array ({exc})") from None
        data_start = member.tell()
    if len(shape) != 2 or dtype.kind != "f":
        raise UserError(f"{path}: array '{name}' is {dtype} of shape {list(shape)}, expected 2-d floats "
                        f"[rows, dim]")
    if rows is not None and shape[0] != rows:
        raise UserError(f"{path}: array '{name}' has {shape[0]} rows, its parquet file {rows}")
    offset = -1
    if info.compress_type == zipfile.ZIP_STORED:
        stream.seek(info.header_offset)
        local = stream.read(LOCAL_HEADER)
        if local[:4] != b"PK\x03\x04":
            raise UserError(f"{path}: array '{name}': broken zip entry")
        offset = (info.header_offset + LOCAL_HEADER + int.from_bytes(local[26:28], "little")
                  + int.from_bytes(local[28:30], "little") + data_start)
    return ArrayHeader(name, int(shape[0]), int(shape[1]), dtype.str, bool(fortran), data_start, offset)


def read_rows(path: str, names: list[str], start: int, count: int) -> dict[str, np.ndarray]:
    """Rows [start, start + count) of arrays `names` of the npz `path` (their own dtype)."""
    found = {}
    with storage.open_input(path) as stream:
        archive = zipfile.ZipFile(stream)
        for name in names:
            header = _header(archive, stream, path, name, None)
            if start + count > header.rows:
                raise UserError(f"{path}: array '{name}' has {header.rows} rows, its parquet file more")
            found[name] = _rows(archive, stream, path, header, start, count)
    return found


def _rows(archive: zipfile.ZipFile, stream, path: str, header: ArrayHeader, start: int,
          count: int) -> np.ndarray:
    dtype = np.dtype(header.dtype)
    row_bytes = header.dim * dtype.itemsize
    if header.fortran:   # columns first: no row range to read; the whole array (rare)
        with archive.open(f"{header.name}.npy") as member:
            return np.lib.format.read_array(member)[start:start + count]
    if header.file_offset >= 0:   # stored: one byte range
        stream.seek(header.file_offset + start * row_bytes)
        data = stream.read(count * row_bytes)
    else:                         # compressed: decompressed as a stream up to the rows
        with archive.open(f"{header.name}.npy") as member:
            member.seek(header.data_start + start * row_bytes)
            data = member.read(count * row_bytes)
    if len(data) != count * row_bytes:
        raise UserError(f"{path}: array '{header.name}' ends early (truncated file?)")
    return np.frombuffer(data, dtype).reshape(count, header.dim)


def embedding_column(values: np.ndarray, type_: pa.DataType) -> pa.Array:
    """Rows of an array as the column type (`arrow_type`)."""
    numpy_type = np.float16 if type_.value_type == pa.float16() else np.float32
    values = np.ascontiguousarray(values, dtype=numpy_type)
    column = pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), values.shape[1])
    return column if column.type == type_ else column.cast(type_)
