"""Embedding columns: the image and text embeddings of a CLIP model, one fixed-size list of
float16 per row (the list size is the model's embedding width). clip_score writes them;
the stages and outputs that read them (heads, semantic_dedup, the embeddings layout) take
them from here, never from each other."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

IMAGE_EMBEDDING = "image_embedding"
TEXT_EMBEDDING = "text_embedding"
EMBEDDING_TYPE = pa.list_(pa.float16())   # declared type: fixed-size in the data (the model's width)


def embedding_array(embeddings: np.ndarray) -> pa.FixedSizeListArray:
    values = np.ascontiguousarray(embeddings, dtype=np.float16)
    return pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), values.shape[1])


def embedding_rows(column) -> tuple[np.ndarray, np.ndarray]:
    """An embedding column (`embedding_array`'s fixed-size lists) as float32 rows,
    re-normalised (float16 rounding), and which rows have one (not null, not zero: an
    undecodable image's rows are zeros)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], column.type)
    dim = column.type.list_size
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    x = np.zeros((len(column), dim), dtype=np.float32)
    if valid.any():
        present = column.filter(pa.array(valid)).flatten().to_numpy(zero_copy_only=False)
        x[valid] = present.astype(np.float32).reshape(-1, dim)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
    return x, valid & (norms[:, 0] > 0)


# --- which embedding column a stage reads (clip_score's, or a pool's) -------------------------

POOL_PREFIX = "pool_"   # pool_embeddings.PREFIX: a pool array `l14_img` is the column `pool_l14_img`


def is_pool_column(column: str) -> bool:
    return column.startswith(POOL_PREFIX) and len(column) > len(POOL_PREFIX)


def check_embedding_name(key: str, column: str, own: tuple) -> None:
    """`column` is one of clip_score's `own` columns or a pool column; a one-line UserError
    naming the setting `key` otherwise."""
    from pipeline.errors import UserError

    if column in own or is_pool_column(column):
        return
    raise UserError(f"{key} must be {' or '.join(own)} (clip_score's) or a pool's column pool_<array> "
                    f"(an array listed in input.embeddings, e.g. pool_l14_img), got {column!r}")


def missing_hint(column: str) -> str:
    """How a run gets the embedding column `column`."""
    if is_pool_column(column):
        return f"list {column[len(POOL_PREFIX):]} in input.embeddings: the pool's .npz arrays"
    return "add a clip_score section before it"


def embedding_width(fields: dict, column: str):
    """The width of `column` where the run's column plan (`fields`: column -> (Arrow type,
    step)) declares it as fixed-size lists, else None."""
    type_ = fields.get(column, (None, ""))[0]
    return type_.list_size if type_ is not None and pa.types.is_fixed_size_list(type_) else None

