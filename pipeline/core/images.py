"""Images are stored once: in the parts of the step that produced them (download).

Every later read of such a part replaces the `jpg` column by a reference to where the bytes
are, `_image_file` and `_image_row` (the file and the row number in it), so later steps write
only the columns they add plus the reference. A phase that needs the bytes (`images=True`,
e.g. CLIP scoring) gets them back with `attach_images`, reading only the row groups that
hold its rows; its output is written without them again.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import pyarrow as pa

from pipeline.core import parts

IMAGE = "jpg"
IMAGE_FILE, IMAGE_ROW = "_image_file", "_image_row"
ROWS_PER_ROW_GROUP = 256   # row groups of image parts: a reader of a few rows reads little more


def read_detached(ref: parts.PartRef, columns: Optional[list[str]] = None) -> pa.Table:
    """A part's rows with image bytes replaced by references (asking for `jpg` in `columns`
    gives the references)."""
    names = parts.read_schema(ref).names
    wanted = list(names) if columns is None else list(columns)
    if IMAGE not in names:
        if IMAGE in wanted:
            wanted = [c for c in wanted if c != IMAGE] + [IMAGE_FILE, IMAGE_ROW]
        return parts.read_ref(ref, [c for c in wanted if c in names])
    table = parts.read_ref(ref, [c for c in wanted if c != IMAGE])
    if IMAGE not in wanted:
        return table
    rows = parts.file_rows_of(ref)
    table = table.append_column(IMAGE_FILE, pa.array([ref.path] * len(rows), pa.string()))
    return table.append_column(IMAGE_ROW, pa.array(rows, pa.int64()))


def has_references(table: pa.Table) -> bool:
    return IMAGE_FILE in table.column_names


def attach_images(table: pa.Table) -> pa.Table:
    """`table` with its `jpg` column read from where its references point."""
    if not has_references(table) or IMAGE in table.column_names:
        return table
    files = table[IMAGE_FILE].combine_chunks()
    rows = table[IMAGE_ROW].to_numpy()
    encoded = files.dictionary_encode()
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    pieces, order = [], []
    for code, path in enumerate(encoded.dictionary.to_pylist()):
        where = np.flatnonzero(codes == code)
        pieces.append(parts.read_file_rows(path, rows[where], [IMAGE])[IMAGE].combine_chunks())
        order.append(where)
    if not pieces:
        return table.append_column(IMAGE, pa.array([], pa.binary()))
    gathered = pa.concat_arrays(pieces)
    inverse = np.argsort(np.concatenate(order), kind="stable")
    return table.append_column(IMAGE, gathered.take(pa.array(inverse)))


def without_stored_images(table: pa.Table) -> pa.Table:
    """Drop `jpg` from rows whose bytes are stored elsewhere already (they have references)."""
    if has_references(table) and IMAGE in table.column_names:
        return table.drop_columns([IMAGE])
    return table


def without_references(table: pa.Table) -> pa.Table:
    """Drop the image references (the images now live elsewhere, e.g. in tars)."""
    return table.drop_columns([c for c in (IMAGE_FILE, IMAGE_ROW) if c in table.column_names])


def image_row_groups(table: pa.Table) -> Optional[int]:
    """Row group size for writing `table`: small when it holds image bytes."""
    return ROWS_PER_ROW_GROUP if IMAGE in table.column_names else None


__all__ = ["IMAGE", "IMAGE_FILE", "IMAGE_ROW", "read_detached", "attach_images",
           "without_stored_images", "without_references", "has_references", "image_row_groups"]
