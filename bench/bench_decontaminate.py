"""Decontamination cost per pool row against EVAL (default 10,000) evaluation images.

Evaluation images: scikit-image's real photo tiles plus synthetic textures (smooth random
colour fields with fine grain, 96 px: as distinct in hash space as photos, where the
generated world's flat shapes collide); their index (phash + dhash of each image and its 75 crops) is built once
through the stage's own code and cached (`bench/results/decontaminate-cache`; the build
time is reported, a rerun reads the cache). Pool: POOL rows, a tenth augmented copies of
evaluation images (5-10% crop, resize, colour shift, JPEG q20-35), the rest other world
textures.

    stage  the `match` op of the step (`MatchEval.mark`) on one table: decode and hash each
           pool image, banded lookup, reasons, ledger detail, example pairs
    raw    the libraries doing the same work in the same process: `imagehash.phash` and
           `imagehash.dhash` per pool image, then faiss `IndexBinaryFlat.range_search`
           (radius `phash_distance`) over every variant phash, then the dhash check

Prints rows/s of both, their ratio, and recall/precision of both on the planted copies.

    .venv/bin/python bench/bench_decontaminate.py [--eval 10000] [--pool 4000]
"""
from __future__ import annotations

import argparse
import io
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, parse_args, report  # noqa: E402
from pipeline.decontam.index import EvalIndex, build_index, hash_set  # noqa: E402
from pipeline.stages.decontaminate import DecontaminateSettings, EvalSetSettings, MatchEval  # noqa: E402


def textures(count: int, seed: int) -> list[bytes]:
    from PIL import Image

    from pipeline.testing.photos import jpeg

    rng = np.random.default_rng(seed)
    found = []
    for _ in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize((96, 96), Image.BICUBIC)
        grain = rng.normal(0, 12, (96, 96, 3))
        found.append(jpeg(Image.fromarray(np.clip(np.asarray(coarse) + grain, 0, 255).astype(np.uint8))))
    return found


def eval_images(count: int) -> list[bytes]:
    from pipeline.testing.photos import jpeg, photo_tiles

    photos = [jpeg(t) for t in photo_tiles()]
    return photos + textures(count - len(photos), seed=11)


def pool_images(held: list[bytes], rows: int, seed: int = 0) -> tuple[list[bytes], np.ndarray]:
    """Pool images, and the evaluation image each copies (-1: none)."""
    from PIL import Image

    from pipeline.testing.photos import augment

    rng = np.random.default_rng(seed)
    copies = rows // 10
    sources = rng.choice(len(held), copies, replace=False)
    images = []
    for i in sources:
        with Image.open(io.BytesIO(held[i])) as image:
            images.append(augment(image.convert("RGB"), rng))
    others = textures(rows - copies, seed=12)
    return images + others, np.concatenate([sources, np.full(rows - copies, -1)])


def _hash_chunk(chunk: list[bytes]) -> dict:
    return hash_set(chunk)   # the module's own (build() swaps the index module's for a pooled one)


def build(held: list[bytes], cache: Path) -> tuple[dict, float, bool]:
    """The index arrays (in 2 processes when not cached), seconds, and whether cached."""
    keys = [str(i) for i in range(len(held))]
    started = time.perf_counter()

    def compute() -> dict:
        chunks = [held[i:i + 500] for i in range(0, len(held), 500)]
        with Pool(2) as pool:
            parts = pool.map(_hash_chunk, chunks)
        return {k: np.concatenate([p[k] for p in parts]) for k in ("hashes", "valid")}

    from pipeline.decontam import index as index_module

    original = index_module.hash_set
    index_module.hash_set = lambda data, variants=True: compute()
    try:
        arrays, hits = build_index(keys, held, True, None, str(cache))
    finally:
        index_module.hash_set = original
    return arrays, time.perf_counter() - started, hits["hashes"]


def raw_match(pool: list[bytes], arrays: dict, distance: int, total: int) -> np.ndarray:
    """imagehash + faiss: the evaluation image each pool image copies (-1: none)."""
    import faiss
    import imagehash
    from PIL import Image

    variants = arrays["hashes"]   # [images, VARIANTS, 2]
    images, per = variants.shape[:2]
    as_bytes = lambda v: np.ascontiguousarray(v.astype(">u8")).view(np.uint8).reshape(len(v), 8)  # noqa: E731
    index = faiss.IndexBinaryFlat(64)
    index.add(as_bytes(variants[:, :, 0].ravel()))
    second = variants[:, :, 1].ravel()
    phash, dhash = np.zeros(len(pool), np.uint64), np.zeros(len(pool), np.uint64)
    for i, jpg in enumerate(pool):
        with Image.open(io.BytesIO(jpg)) as image:
            phash[i] = int(str(imagehash.phash(image)), 16)
            dhash[i] = int(str(imagehash.dhash(image)), 16)
    lims, dist, ids = index.range_search(as_bytes(phash), distance + 1)
    owner = np.full(len(pool), -1, np.int64)
    for row in range(len(pool)):
        found = ids[lims[row]:lims[row + 1]]
        if len(found):
            sums = dist[lims[row]:lims[row + 1]] + np.bitwise_count(dhash[row] ^ second[found])
            ok = sums <= total
            if ok.any():
                owner[row] = found[ok][np.argmin(sums[ok])] // per
    return owner


def quality(owner: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    hit = owner >= 0
    true = hit & (owner == truth)
    return true.sum() / max(1, (truth >= 0).sum()), true.sum() / max(1, hit.sum())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--eval", type=int, default=10_000)
    parser.add_argument("--pool", type=int, default=4_000)
    args = parse_args(parser, smoke={"eval": 50, "pool": 40})
    settings = DecontaminateSettings(sets=[EvalSetSettings("bench", "-")], embeddings=False, examples=8)
    held = eval_images(args.eval)
    arrays, build_seconds, cached = build(held, RESULTS / "decontaminate-cache")
    pool, truth = pool_images(held, args.pool)
    table = pa.table({"uid": [f"{i:08d}" for i in range(len(pool))], "jpg": pa.array(pool, pa.binary())})

    index = EvalIndex([arrays], settings.phash_distance, settings.hash_distance)
    op = MatchEval("", ["bench"], settings, None, False)
    started = time.perf_counter()
    marked, _ = op.mark(table, index)
    stage_seconds = time.perf_counter() - started
    reasons = marked["_reason"].to_pylist()
    stage_owner = np.array([0 if r else -1 for r in reasons])
    stage_owner[stage_owner == 0] = truth[stage_owner == 0]   # the stage names the set, not the image

    started = time.perf_counter()
    owner = raw_match(pool, arrays, settings.phash_distance, settings.hash_distance)
    raw_seconds = time.perf_counter() - started
    stage_rate, raw_rate = len(pool) / stage_seconds, len(pool) / raw_seconds
    recall, precision = quality(owner, truth)
    hits = np.array([r is not None for r in reasons])
    stage_recall = (hits & (truth >= 0)).sum() / max(1, (truth >= 0).sum())
    stage_precision = (hits & (truth >= 0)).sum() / max(1, hits.sum())
    report("decontaminate", {
        "eval_images": len(held), "variant_hashes": int(arrays["hashes"].shape[0] * arrays["hashes"].shape[1]),
        "index_build_seconds": round(build_seconds, 2), "index_cached": bool(cached),
        "pool_rows": len(pool), "planted_copies": int((truth >= 0).sum()),
        "stage_rows_per_s": round(stage_rate, 1), "raw_rows_per_s": round(raw_rate, 1),
        "stage_over_raw": round(stage_rate / raw_rate, 3),
        "stage_recall": round(float(stage_recall), 4), "stage_precision": round(float(stage_precision), 4),
        "raw_recall": round(float(recall), 4), "raw_precision": round(float(precision), 4),
    })


if __name__ == "__main__":
    main()
