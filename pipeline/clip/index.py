"""A run's CLIP embeddings in clip-retrieval's layout, a faiss index of them, and search.

With `clip_score.keep_embeddings`, the clip_score step writes the rows it kept, one file
triple per output part `i` (zero-filled as clip-retrieval names its partitions):

    <run>/embeddings/img_emb/img_emb_<i>.npy      float32 [n, dim], L2-normalised
    <run>/embeddings/text_emb/text_emb_<i>.npy    float32 [n, dim], L2-normalised
    <run>/embeddings/metadata/metadata_<i>.parquet  uid, url, caption, clip_score (same rows)
    <run>/embeddings/_SUCCESS                      the marker: parts, rows, dim, files, sizes

so `autofaiss build_index --embeddings <run>/embeddings/img_emb` (or clip-retrieval's
`clip_index`) reads it as is. A part with no kept rows writes no files (as clip-retrieval
skips empty partitions). Each part task writes its files, then its marker
(`steps/NN_clip_score/embeddings/done/part-N.json`) last; a rerun skips parts with a marker.
The scorer keeps float16 embedding columns; the files hold them as float32, renormalised.

`build_index` writes `<run>/embeddings/index/`: `knn.index` (faiss flat inner product over
the image embeddings, so scores are cosine similarities), `metadata.parquet` (row i of the
index is row i there) and `index_infos.json` (written last). `search` embeds a text query
with the run's own clip_score model and returns the nearest images.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.clip.embeddings import IMAGE_EMBEDDING, TEXT_EMBEDDING
from pipeline.core import parts, storage
from pipeline.core.tasks import part_path
from pipeline.errors import UserError

FOLDER = "embeddings"
INDEX_FOLDER = "index"
INDEX_FILE = "knn.index"
INDEX_METADATA = "metadata.parquet"
INDEX_INFOS = "index_infos.json"


@dataclass
class EmbeddingPart:
    """Task: write one clip_score output part's kept rows as a file triple."""
    ref: dict          # the part (PartRef JSON)
    index: int         # its number among the step's output parts
    count: int         # how many output parts (sets the zero fill)
    folder: str        # <run>/embeddings
    marker: str        # its done marker

    def relative(self, kind: str, suffix: str) -> str:
        width = int(math.log10(max(self.count, 1))) + 1      # as clip-retrieval's writer
        return f"{kind}/{kind}_{str(self.index).zfill(width)}{suffix}"


def write_embedding_part(task: EmbeddingPart) -> dict:
    """Idempotent: returns the part's marker, writing its files first unless it exists."""
    done = storage.read_marker(task.marker)
    if done is not None:
        return done
    columns = ["uid", "url", "text", "clip_score", IMAGE_EMBEDDING, TEXT_EMBEDDING]
    table = parts.read_ref(parts.as_ref(task.ref), columns)
    files: dict[str, int] = {}
    if table.num_rows:
        outputs = {task.relative("img_emb", ".npy"): _npy(unit_rows(table[IMAGE_EMBEDDING])),
                   task.relative("text_emb", ".npy"): _npy(unit_rows(table[TEXT_EMBEDDING]))}
        for relative, data in outputs.items():
            path = storage.join(task.folder, relative)
            storage.remove_stale_temporaries(path)
            storage.write_bytes(path, data)
            files[relative] = len(data)
        relative = task.relative("metadata", ".parquet")
        path = storage.join(task.folder, relative)
        storage.remove_stale_temporaries(path)
        metadata = pa.table({"uid": table["uid"], "url": table["url"], "caption": table["text"],
                             "clip_score": table["clip_score"]})
        parts.write_parquet(metadata, path)
        files[relative] = storage.size(path)
    dim = table.schema.field(IMAGE_EMBEDDING).type.list_size
    marker = {"part": task.index, "rows": table.num_rows, "dim": dim, "files": files}
    storage.write_json(marker, task.marker)
    return marker


def unit_rows(column: pa.ChunkedArray) -> np.ndarray:
    """Fixed-size-list embeddings as float32 rows of norm 1 (zero rows stay zero)."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    dim = array.type.list_size
    values = array.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    rows = values.reshape(len(array), dim)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return np.ascontiguousarray(rows / np.where(norms > 0, norms, 1), dtype=np.float32)


def _npy(array: np.ndarray) -> bytes:
    stream = io.BytesIO()
    np.save(stream, array)
    return stream.getvalue()


def write_embeddings(engine, outputs: list, run_dir: str, marker_dir: str) -> dict:
    """Write the triples of `outputs` (the step's kept parts) on the engine, then the
    folder's `_SUCCESS` naming them; returns a summary for the step's stats."""
    folder = storage.join(run_dir, FOLDER)
    refs = parts.as_refs(outputs)
    tasks = [EmbeddingPart(ref.to_json(), i, len(refs), folder, part_path(marker_dir, "done", i, ".json"))
             for i, ref in enumerate(refs)]
    markers = [storage.read_marker(t.marker) for t in tasks]   # finished parts: no task
    pending = [i for i, m in enumerate(markers) if m is None]
    for i, marker in zip(pending, engine.map(write_embedding_part, [tasks[i] for i in pending])):
        markers[i] = marker
    files = {name: size for m in markers for name, size in m["files"].items()}
    triples = [{"rows": m["rows"], **{kind: next(f for f in m["files"] if f.startswith(kind + "/"))
                                      for kind in ("img_emb", "text_emb", "metadata")}}
               for m in markers if m["rows"]]
    dim = next((m["dim"] for m in markers if m["rows"]), 0)
    rows = sum(t["rows"] for t in triples)
    storage.write_json({"rows": rows, "dim": dim, "dtype": "float32", "parts": triples, "files": files},
                       storage.join(folder, storage.SUCCESS))
    return {"rows": rows, "dim": dim, "files": len(files)}


# --- reading: index and search --------------------------------------------------------------

def embeddings_manifest(run_dir: str) -> dict:
    """The run's `embeddings/_SUCCESS`, or a one-line error saying what is missing."""
    run_dir = storage.normalize(run_dir)
    if storage.read_marker(storage.join(run_dir, "config.json")) is None:
        raise UserError(f"{run_dir}: not a run folder (no config.json)")
    manifest = storage.read_marker(storage.join(run_dir, FOLDER, storage.SUCCESS))
    if manifest is None:
        raise UserError(f"{run_dir}: has no embeddings (run it with clip_score.keep_embeddings: "
                        f"true, to the end of the clip_score step)")
    return manifest


def _faiss():
    try:
        import faiss
    except ImportError:
        raise UserError("faiss is not installed: pip install faiss-cpu") from None
    return faiss


def build_index(run_dir: str) -> dict:
    """Write `<run>/embeddings/index/` (flat inner-product index over the image embeddings,
    its metadata in index order, then `index_infos.json`); returns the infos."""
    faiss = _faiss()
    manifest = embeddings_manifest(run_dir)
    if not manifest["rows"]:
        raise UserError(f"{run_dir}: clip_score kept no rows, nothing to index")
    folder = storage.join(storage.normalize(run_dir), FOLDER)
    out = storage.join(folder, INDEX_FOLDER)
    storage.remove(storage.join(out, INDEX_INFOS))
    index = faiss.IndexFlatIP(manifest["dim"])
    metadata_path = storage.join(out, INDEX_METADATA)
    with storage.committing(metadata_path) as tmp:
        writer = None
        for triple in manifest["parts"]:
            index.add(np.load(io.BytesIO(storage.read_bytes(storage.join(folder, triple["img_emb"])))))
            table = parts.read_ref(storage.join(folder, triple["metadata"]))
            writer = writer or pq.ParquetWriter(tmp, table.schema, compression="zstd")
            writer.write_table(table)
        writer.close()
    with storage.committing(storage.join(out, INDEX_FILE)) as tmp:
        faiss.write_index(index, str(tmp))
    infos = {"index_key": "Flat", "metric": "inner_product", "rows": int(index.ntotal),
             "dim": manifest["dim"], "embeddings": "img_emb", "built_with": f"faiss {faiss.__version__}"}
    storage.write_json(infos, storage.join(out, INDEX_INFOS))
    return infos


@dataclass
class Hit:
    uid: str
    url: str
    caption: str
    similarity: float


def search(run_dir: str, query: str, k: int = 10, device: str = "cpu") -> list[Hit]:
    """The `k` images of the run nearest to `query`, embedded by the run's clip_score model."""
    if k < 1:
        raise UserError("-k: must be at least 1")
    faiss = _faiss()
    embeddings_manifest(run_dir)
    out = storage.join(storage.normalize(run_dir), FOLDER, INDEX_FOLDER)
    if storage.read_marker(storage.join(out, INDEX_INFOS)) is None:
        raise UserError(f"{run_dir}: has no index; run `curate index {run_dir}` first")
    with storage.local_file(storage.join(out, INDEX_FILE)) as local:
        index = faiss.read_index(local)
    vector = embed_query(run_dir, query, device)
    scores, ids = index.search(vector, min(k, index.ntotal))
    found = [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]
    metadata = parts.read_ref(storage.join(out, INDEX_METADATA), ["uid", "url", "caption"])
    rows = metadata.take(pa.array([i for i, _ in found], pa.int64())).to_pylist()
    return [Hit(r["uid"], r["url"], r["caption"], s) for r, (_, s) in zip(rows, found)]


def embed_query(run_dir: str, query: str, device: str = "cpu") -> np.ndarray:
    """`query`'s normalised text embedding [1, dim] by the model named in the run's config."""
    import torch

    from pipeline.clip.model import load_clip
    from pipeline.clip.score import ClipScorer

    config = storage.read_json(storage.join(storage.normalize(run_dir), "config.json"))
    section: Optional[dict] = config.get("clip_score")
    if not section:
        raise UserError(f"{run_dir}: its config has no clip_score section")
    clip = load_clip(section["model"], section.get("pretrained"), device=device, precision="fp32")
    with torch.inference_mode():
        return ClipScorer(clip, batch_size=1).encode_texts([query]).numpy().astype(np.float32)
