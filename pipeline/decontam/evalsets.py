"""Evaluation sets: the images a run must not train on, read from a folder of images, a
WebDataset tar or a parquet file of image bytes.

Each image has a key (its path inside the folder, its member name in the tar, its row's
`key_col` value or row number in the parquet file). `check` opens every set once, before
the run starts, so a missing folder or an unreadable tar is a one-line `UserError` naming
the file; `read` returns the keys and bytes (the `eval` phase's reader).
"""
from __future__ import annotations

import io
import tarfile
from typing import Optional

from pipeline.core import storage
from pipeline.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
FORMATS = ("folder", "tar", "parquet")


def format_of(path: str, declared: Optional[str]) -> str:
    """`declared`, else by the path: a folder, `.tar`, `.parquet`."""
    if declared:
        return declared
    lowered = path.lower().rstrip("/")
    if lowered.endswith(".tar"):
        return "tar"
    if lowered.endswith((".parquet", ".pq")):
        return "parquet"
    return "folder"


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def check(name: str, path: str, format: Optional[str] = None, image_col: str = "jpg") -> int:
    """How many images the set holds; a `UserError` naming the file when it cannot be read
    or holds none."""
    kind = format_of(path, format)
    where = f"decontaminate.sets[{name}]: {path}"
    if kind == "folder":
        if not storage.isdir(path):
            raise UserError(f"{where}: no such folder" if not storage.exists(path) else f"{where}: not a folder")
        count = len([f for f in storage.files_under(path) if is_image_name(f)])
    elif kind == "tar":
        if not storage.isfile(path):
            raise UserError(f"{where}: no such file")
        try:
            with storage.open_input(path, sequential=True) as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
                count = sum(1 for m in tar if m.isfile() and is_image_name(m.name))
        except (tarfile.TarError, OSError, EOFError) as exc:
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UserError(f"{where}: not a readable tar ({detail})") from None
    else:
        if not storage.isfile(path):
            raise UserError(f"{where}: no such file")
        import pyarrow.parquet as pq

        try:
            with storage.open_input(path) as stream:
                schema = pq.read_schema(stream)
                stream.seek(0)
                count = pq.ParquetFile(stream).metadata.num_rows
        except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
            raise UserError(f"{where}: not a readable parquet file ({str(exc).splitlines()[0]})") from None
        if image_col not in schema.names:
            raise UserError(f"{where}: no column {image_col!r} (set image_col; columns: {', '.join(schema.names)})")
    if count == 0:
        raise UserError(f"{where}: holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return count


def read(path: str, format: Optional[str] = None, image_col: str = "jpg",
         key_col: Optional[str] = None) -> tuple[list[str], list[bytes]]:
    """(keys, encoded image bytes) of a set, in a stable order (sorted by key for a folder,
    member order for a tar, row order for a parquet file)."""
    kind = format_of(path, format)
    if kind == "folder":
        root = storage.normalize(path).rstrip("/")
        files = sorted(f for f in storage.files_under(root) if is_image_name(f))
        return [f[len(root) + 1:] for f in files], [storage.read_bytes(f) for f in files]
    if kind == "tar":
        keys, data = [], []
        with storage.open_input(path, sequential=True) as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
            for member in tar:
                if member.isfile() and is_image_name(member.name):
                    keys.append(member.name)
                    data.append(tar.extractfile(member).read())
        return keys, data
    import pyarrow.parquet as pq

    with storage.open_input(path) as stream:
        table = pq.read_table(io.BytesIO(stream.read()), columns=[c for c in (image_col, key_col) if c])
    column = table[image_col]
    if column.type.num_fields if hasattr(column.type, "num_fields") else 0:   # {bytes, path} (Hugging Face)
        column = column.combine_chunks().field("bytes")
    data = column.to_pylist()
    keys = [str(k) for k in table[key_col].to_pylist()] if key_col else [str(i) for i in range(len(data))]
    return keys, [d or b"" for d in data]
