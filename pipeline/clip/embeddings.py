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
