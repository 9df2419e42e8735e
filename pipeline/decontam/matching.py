"""Near-duplicate matching of pool images against evaluation images, in numpy.

Perceptual hash. A 5-10% crop moves a 64-bit `imagehash.phash` by 10-30 bits, as far as
unrelated images lie, so each evaluation image is hashed as it is and as `CROP_VARIANTS`
crops (5, 7.5 and 10% cut, anchored at each corner, edge middle and centre): a crop of
the pool's lands within a few bits of one of them. The pool side stays one hash per row.
A pool hash matches an evaluation image when one of its variants is within `distance`
bits; candidates are found by banded lookup (d+1 bands: two hashes within d bits agree on
at least one band), so a row is compared with the few variants that share a band value.

Embedding. Rows of unit vectors: a pool row matches the evaluation image of largest cosine
similarity when that is at least the threshold (blocks of rows x every evaluation image).

`pr_curve` measures precision and recall over thresholds (how the defaults were chosen).
"""
from __future__ import annotations

import io
from typing import Optional

import numpy as np

from pipeline.stages.phash_lsh import band_masks, popcount

CROP_FRACTIONS = (0.05, 0.075, 0.10)
ANCHORS = (0.0, 0.5, 1.0)   # where the kept window sits: left/top, middle, right/bottom
VARIANTS = 1 + len(CROP_FRACTIONS) * len(ANCHORS) ** 2   # the image itself, then its crops
BLOCK = 4096


def crop_boxes(width: int, height: int) -> list[tuple[int, int, int, int]]:
    """The image and its `CROP_FRACTIONS` x `ANCHORS`^2 crops, as PIL boxes."""
    boxes = [(0, 0, width, height)]
    for f in CROP_FRACTIONS:
        for ax in ANCHORS:
            for ay in ANCHORS:
                left, top = round(f * ax * width), round(f * ay * height)
                boxes.append((left, top, left + max(1, round((1 - f) * width)),
                              top + max(1, round((1 - f) * height))))
    return boxes


def phash_int(image) -> int:
    import imagehash

    return int(str(imagehash.phash(image)), 16)


def variant_hashes(jpg: Optional[bytes], variants: bool = True) -> Optional[np.ndarray]:
    """The phash of an image and (with `variants`) of its crops (uint64 [VARIANTS]; the
    image's own hash repeated without); None where the bytes do not decode."""
    if not jpg:
        return None
    from PIL import Image

    try:
        with Image.open(io.BytesIO(jpg)) as image:
            image = image.convert("RGB")
            boxes = crop_boxes(*image.size) if variants else [(0, 0, *image.size)]
            hashes = [phash_int(image.crop(box)) for box in boxes]
    except Exception:  # noqa: BLE001 - a bad image never crashes the run
        return None
    return np.array(hashes + hashes[:1] * (VARIANTS - len(hashes)), dtype=np.uint64)


def pool_hash(jpg: Optional[bytes]) -> Optional[int]:
    """The pool side: the phash of the image as it is (`image_dedup`'s `phash`)."""
    from pipeline.stages.phash_lsh import phash_of

    return phash_of(jpg)


class HashIndex:
    """Evaluation images' variant hashes, sorted per band for lookup."""

    def __init__(self, hashes: np.ndarray, distance: int, valid: Optional[np.ndarray] = None):
        """`hashes`: uint64 [images, VARIANTS]; `valid`: which images have hashes."""
        self.distance = int(distance)
        hashes = np.asarray(hashes, dtype=np.uint64).reshape(len(hashes), -1)
        owner = np.repeat(np.arange(len(hashes), dtype=np.int64), hashes.shape[1])
        keep = np.repeat(np.ones(len(hashes), bool) if valid is None else np.asarray(valid, bool), hashes.shape[1])
        self.owner, self.values = owner[keep], hashes.ravel()[keep]
        self.bands = []
        for lo, mask in band_masks(self.distance):
            keys = (self.values >> np.uint64(lo)) & mask
            order = np.argsort(keys, kind="stable")
            self.bands.append((lo, mask, keys[order], order))

    def match(self, query: np.ndarray, valid: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
        """Per query hash: the evaluation image with the nearest variant within `distance`
        bits (-1: none; ties: the smaller index) and that distance (65: none)."""
        query = np.asarray(query, dtype=np.uint64)
        best = np.full(len(query), 65, dtype=np.int64)
        owner = np.full(len(query), -1, dtype=np.int64)
        rows_ok = np.ones(len(query), bool) if valid is None else np.asarray(valid, bool)
        for lo, mask, keys, order in self.bands:
            q = (query >> np.uint64(lo)) & mask
            start = np.searchsorted(keys, q, side="left")
            stop = np.searchsorted(keys, q, side="right")
            counts = np.where(rows_ok, stop - start, 0)
            if not counts.any():
                continue
            rows = np.repeat(np.arange(len(query)), counts)
            offsets = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
            candidates = order[np.repeat(start, counts) + offsets]
            dist = popcount(query[rows] ^ self.values[candidates]).astype(np.int64)
            who = self.owner[candidates]
            # the nearest per row, ties by owner: sort by (row, dist, owner), take firsts
            pick = np.lexsort((who, dist, rows))
            rows, dist, who = rows[pick], dist[pick], who[pick]
            first = np.ones(len(rows), bool)
            first[1:] = rows[1:] != rows[:-1]
            rows, dist, who = rows[first], dist[first], who[first]
            better = (dist < best[rows]) | ((dist == best[rows]) & (who < owner[rows]))
            best[rows[better]], owner[rows[better]] = dist[better], who[better]
        far = best > self.distance
        owner[far], best[far] = -1, 65
        return owner, best


def embedding_match(x: np.ndarray, eval_x: np.ndarray, threshold: float,
                    block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """Per row of `x` (unit rows; zero rows never match): the evaluation row of largest
    cosine similarity when at least `threshold` (-1: none) and that similarity."""
    owner = np.full(len(x), -1, dtype=np.int64)
    best = np.full(len(x), -np.inf, dtype=np.float32)
    if len(eval_x) == 0 or len(x) == 0:
        return owner, best
    valid = np.linalg.norm(x, axis=1) > 0
    for start in range(0, len(x), block):
        sims = x[start:start + block] @ eval_x.T
        j = sims.argmax(axis=1)
        best[start:start + block] = sims[np.arange(len(j)), j]
        owner[start:start + block] = j
    hit = valid & (best >= threshold)
    owner[~hit] = -1
    return owner, best


def pr_curve(scores_pos: np.ndarray, scores_neg: np.ndarray, thresholds, higher_matches: bool):
    """(threshold, recall, precision) rows: positives are planted copies (their score
    against their own evaluation image), negatives the other rows (their best score against
    any evaluation image)."""
    rows = []
    for t in thresholds:
        tp = int((scores_pos >= t).sum() if higher_matches else (scores_pos <= t).sum())
        fp = int((scores_neg >= t).sum() if higher_matches else (scores_neg <= t).sum())
        recall = tp / max(1, len(scores_pos))
        precision = tp / (tp + fp) if tp + fp else 1.0
        rows.append((t, recall, precision))
    return rows
