"""An evaluation set's index: its variant hashes and (with a model) image embeddings,
computed once per set content and model and cached.

The cache key of the hashes is the sha256 of the set's (key, image sha256) list and the
hashing scheme; that of the embeddings adds the model (name, weights tag or checkpoint
path, size and modification time). A rerun, or another run naming the same set, reads
`<cache>/<key>.npz` instead of decoding the set again.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

from pipeline.core import storage
from pipeline.decontam.matching import ANCHORS, CROP_FRACTIONS, PREPARE_SIDE, VARIANTS, variant_hashes

HASH_SCHEME = {"hash": "imagehash.phash+dhash", "crops": list(CROP_FRACTIONS), "anchors": list(ANCHORS),
               "side": PREPARE_SIDE, "version": 2}


def default_cache() -> str:
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "curate", "decontaminate")


@dataclass(frozen=True)
class ModelSpec:
    """The CLIP model that embeds images (clip_score's settings, or the stage's own)."""
    model: str
    pretrained: Optional[str] = None
    device: str = "auto"
    precision: str = "auto"
    batch_size: int = 256

    def identity(self) -> dict:
        found = {"model": self.model, "pretrained": self.pretrained, "precision": self.precision}
        if self.pretrained and storage.is_local(self.pretrained) and os.path.isfile(self.pretrained):
            stat = os.stat(self.pretrained)
            found["weights"] = [os.path.abspath(self.pretrained), stat.st_size, stat.st_mtime_ns]
        return found


def content_digest(keys: list[str], data: list[bytes]) -> str:
    digest = hashlib.sha256()
    for key, blob in zip(keys, data):
        digest.update(key.encode() + b"\0" + hashlib.sha256(blob).digest())
    return digest.hexdigest()


def cache_key(content: str, what: dict) -> str:
    return hashlib.sha256((content + json.dumps(what, sort_keys=True)).encode()).hexdigest()[:32]


def cached(cache_dir: Optional[str], key: str, compute) -> tuple[dict, bool]:
    """`compute()`'s arrays, from `<cache_dir>/<key>.npz` when there (and True), else
    computed and written there."""
    path = storage.join(cache_dir, f"{key}.npz") if cache_dir else None
    if path and storage.isfile(path):
        try:
            with np.load(io.BytesIO(storage.read_bytes(path))) as data:
                return {k: data[k] for k in data.files}, True
        except (OSError, ValueError):   # a damaged entry is computed again
            pass
    arrays = compute()
    if path:
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        storage.write_bytes(path, buffer.getvalue())
    return arrays, False


def hash_set(data: list[bytes], variants: bool = True) -> dict:
    hashes = np.zeros((len(data), VARIANTS, 2), dtype=np.uint64)
    valid = np.zeros(len(data), dtype=bool)
    for i, blob in enumerate(data):
        found = variant_hashes(blob, variants)
        if found is not None:
            hashes[i], valid[i] = found, True
    return {"hashes": hashes, "valid": valid}


_MODELS: dict = {}


def embed_images(spec: ModelSpec, data: list[Optional[bytes]]) -> np.ndarray:
    """Unit float32 image embeddings (zero rows where an image does not decode); the model
    is loaded once per process."""
    import torch

    from pipeline.clip.model import load_clip
    from pipeline.clip.score import ClipScorer

    key = (spec.model, spec.pretrained, spec.device, spec.precision)
    if key not in _MODELS:
        _MODELS[key] = ClipScorer(load_clip(spec.model, spec.pretrained, spec.device, spec.precision),
                                  batch_size=spec.batch_size)
    scorer = _MODELS[key]
    out = None
    with torch.inference_mode():
        for start, pixels in scorer._decoded_batches(data):
            rows = [i for i, p in enumerate(pixels) if p is not None]
            if not rows:
                continue
            encoded = scorer.encode_images(torch.stack([pixels[i] for i in rows])).numpy()
            if out is None:
                out = np.zeros((len(data), encoded.shape[1]), dtype=np.float32)
            out[np.asarray(rows) + start] = encoded
    return out if out is not None else np.zeros((len(data), scorer.embed_dim()), dtype=np.float32)


def build_index(keys: list[str], data: list[bytes], variants: bool, spec: Optional[ModelSpec],
                cache_dir: Optional[str]) -> tuple[dict, dict]:
    """The set's arrays (`hashes`, `valid`, and with a model `embeddings`) and what the
    cache did ({"hashes": hit, "embeddings": hit})."""
    content = content_digest(keys, data)
    scheme = dict(HASH_SCHEME, variants=VARIANTS if variants else 1)
    arrays, hit = cached(cache_dir, cache_key(content, scheme), lambda: hash_set(data, variants))
    hits = {"hashes": hit}
    if spec is not None:
        found, hits["embeddings"] = cached(cache_dir, cache_key(content, spec.identity()),
                                           lambda: {"embeddings": embed_images(spec, data)})
        arrays["embeddings"] = found["embeddings"]
    return arrays, hits


class EvalIndex:
    """Every evaluation set's index, joined: image i belongs to set `set_of[i]`, row
    `row_of[i]` of it."""

    def __init__(self, arrays: list[dict], distance: int, total: int):
        from pipeline.decontam.matching import HashIndex

        sizes = [len(a["valid"]) for a in arrays]
        self.set_of = np.repeat(np.arange(len(arrays), dtype=np.int64), sizes)
        self.row_of = np.concatenate([np.arange(n, dtype=np.int64) for n in sizes]) if sizes else np.zeros(0, np.int64)
        hashes = np.concatenate([a["hashes"] for a in arrays]) if arrays else np.zeros((0, VARIANTS, 2), np.uint64)
        valid = np.concatenate([a["valid"] for a in arrays]) if arrays else np.zeros(0, bool)
        self.hashes = HashIndex(hashes, distance, total, valid)
        with_embeddings = [a for a in arrays if "embeddings" in a]
        self.embeddings = (np.concatenate([a["embeddings"] for a in arrays]).astype(np.float32)
                           if arrays and len(with_embeddings) == len(arrays) else None)

    def match(self, hashes: np.ndarray, has_hashes: np.ndarray, x: Optional[np.ndarray],
              threshold: float) -> dict:
        """Per pool row ((phash, dhash) [n, 2], which have them, unit embeddings or None):
        the evaluation image it copies (-1: none), how it matched (0 none, 1 perceptual
        hashes, 2 embedding) and the score (phash + dhash bits, or cosine)."""
        from pipeline.decontam.matching import embedding_match

        owner, dist = self.hashes.match(hashes, has_hashes)
        method = np.where(owner >= 0, 1, 0).astype(np.int8)
        score = np.where(owner >= 0, dist, 0).astype(np.float32)
        if x is not None and self.embeddings is not None:
            e_owner, e_sim = embedding_match(x, self.embeddings, threshold)
            by_embedding = (owner < 0) & (e_owner >= 0)
            owner = np.where(by_embedding, e_owner, owner)
            method[by_embedding], score[by_embedding] = 2, e_sim[by_embedding]
        return {"owner": owner, "method": method, "score": score}
