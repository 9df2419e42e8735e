"""Near-duplicate matching of pool images against evaluation images, in numpy.

Perceptual hashes. A 5-10% crop moves a 64-bit `imagehash.phash` by 10-30 bits, as far as
unrelated images lie, so each evaluation image is hashed as it is and as 75 crops (5, 7.5
and 10% cut, the kept window at 5 x 5 places from corner to corner): a crop of the pool's
lands within a few bits of one of them. The pool side stays one (phash, dhash) per row.
A pool image matches a variant when the phashes are within `distance` bits and phash plus
dhash distance is at most `total` bits; candidates come from a faiss binary index (range
search on the phash).

Embedding. Rows of unit vectors: a pool row matches the evaluation image of largest cosine
similarity when that is at least the threshold (blocks of rows x every evaluation image).

`pr_curve` measures precision and recall over thresholds (how the defaults were chosen).
"""
from __future__ import annotations

import io
from typing import Optional

import numpy as np

CROP_FRACTIONS = (0.05, 0.075, 0.10)
ANCHORS = (0.0, 0.25, 0.5, 0.75, 1.0)   # where the kept window sits, from left/top to right/bottom
VARIANTS = 1 + len(CROP_FRACTIONS) * len(ANCHORS) ** 2   # the image itself, then its crops
BLOCK = 4096
_BYTE_BITS = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2
        return np.bitwise_count(x)
    return _BYTE_BITS[np.ascontiguousarray(x).view(np.uint8)].reshape(-1, 8).sum(axis=1)


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


PREPARE_SIDE = 256   # images are reduced to this side (grey) before hashing: the hashes shrink them anyway


def image_hashes(image, boxes) -> np.ndarray:
    """(phash, dhash) of each box of a PIL image, uint64 [boxes, 2]: `imagehash.phash` and
    `imagehash.dhash` of the cropped box, bit for bit, computed for all boxes at once."""
    from PIL import Image
    from scipy.fftpack import dct

    width, height = image.size
    image = image.convert("L")
    scale = min(1.0, PREPARE_SIDE / max(width, height))
    if scale < 1.0:
        image = image.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.LANCZOS)
    boxes = [(round(left * scale), round(top * scale), max(round(left * scale) + 1, round(right * scale)),
              max(round(top * scale) + 1, round(bottom * scale))) for left, top, right, bottom in boxes]
    big = np.stack([np.asarray(image.crop(box).resize((32, 32), Image.LANCZOS)) for box in boxes]).astype(float)
    low = dct(dct(big, axis=1), axis=2)[:, :8, :8].reshape(len(boxes), 64)
    phash = low > np.median(low, axis=1, keepdims=True)
    small = np.stack([np.asarray(image.crop(box).resize((9, 8), Image.LANCZOS)) for box in boxes]).astype(np.int16)
    dhash = (small[:, :, 1:] > small[:, :, :-1]).reshape(len(boxes), 64)
    return np.stack([bits_to_uint64(phash), bits_to_uint64(dhash)], axis=1)


def bits_to_uint64(bits: np.ndarray) -> np.ndarray:
    """Rows of 64 booleans, the first the most significant bit (as `str(ImageHash)` reads)."""
    return np.packbits(bits.astype(np.uint8), axis=1).view(">u8").astype(np.uint64).ravel()


def variant_hashes(jpg: Optional[bytes], variants: bool = True) -> Optional[np.ndarray]:
    """(phash, dhash) of an image and (with `variants`) of its crops, uint64 [VARIANTS, 2]
    (the image's own hashes repeated without); None where the bytes do not decode."""
    if not jpg:
        return None
    from PIL import Image

    try:
        with Image.open(io.BytesIO(jpg)) as image:
            image.load()
            boxes = crop_boxes(*image.size) if variants else [(0, 0, *image.size)]
            hashes = image_hashes(image, boxes)
    except Exception:  # noqa: BLE001 - a bad image never crashes the run
        return None
    return np.concatenate([hashes, np.repeat(hashes[:1], VARIANTS - len(hashes), axis=0)])


def pool_hashes(jpgs: list) -> tuple[np.ndarray, np.ndarray]:
    """The pool side: (phash, dhash) of each image as it is, uint64 [n, 2], and which decode."""
    hashes = np.zeros((len(jpgs), 2), dtype=np.uint64)
    valid = np.zeros(len(jpgs), dtype=bool)
    for i, jpg in enumerate(jpgs):
        found = variant_hashes(jpg, variants=False)
        if found is not None:
            hashes[i], valid[i] = found[0], True
    return hashes, valid


class HashIndex:
    """Evaluation images' variant hashes in a faiss binary index (`IndexBinaryFlat`: an
    exhaustive SIMD Hamming scan, faster here than banded lookup in numpy). A pool image
    matches a variant when their phashes are within `distance` bits and their phash and
    dhash distances add up to at most `total` bits (two hashes of the same crop: what the
    phash alone lets through among unrelated photos, the dhash rules out)."""

    def __init__(self, hashes: np.ndarray, distance: int, total: int, valid: Optional[np.ndarray] = None):
        """`hashes`: uint64 [images, VARIANTS, 2]; `valid`: which images have hashes."""
        import faiss

        self.distance, self.total = int(distance), int(total)
        hashes = np.asarray(hashes, dtype=np.uint64).reshape(len(hashes), -1, 2)
        owner = np.repeat(np.arange(len(hashes), dtype=np.int64), hashes.shape[1])
        keep = np.repeat(np.ones(len(hashes), bool) if valid is None else np.asarray(valid, bool), hashes.shape[1])
        flat = hashes.reshape(-1, 2)[keep]
        self.owner, self.second = owner[keep], flat[:, 1].copy()
        self.index = faiss.IndexBinaryFlat(64)
        if len(flat):
            self.index.add(as_codes(flat[:, 0]))

    def match(self, query: np.ndarray, valid: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
        """Per pool row ((phash, dhash), uint64 [n, 2]): the evaluation image with the
        nearest matching variant (-1: none; ties: the smaller index) and the phash + dhash
        distance to it (129: none)."""
        query = np.asarray(query, dtype=np.uint64).reshape(-1, 2)
        best = np.full(len(query), 129, dtype=np.int64)
        owner = np.full(len(query), -1, dtype=np.int64)
        rows_ok = np.flatnonzero(np.ones(len(query), bool) if valid is None else np.asarray(valid, bool))
        if not len(rows_ok) or self.index.ntotal == 0:
            return owner, best
        lims, near, found = self.index.range_search(as_codes(query[rows_ok, 0]), self.distance + 1)
        rows = rows_ok[np.repeat(np.arange(len(rows_ok)), np.diff(lims).astype(np.int64))]
        found = found.astype(np.int64)
        total = near.astype(np.int64) + popcount(query[rows, 1] ^ self.second[found]).astype(np.int64)
        ok = total <= self.total
        rows, total, who = rows[ok], total[ok], self.owner[found[ok]]
        pick = np.lexsort((who, total, rows))   # the nearest per row, ties by owner
        rows, total, who = rows[pick], total[pick], who[pick]
        head = np.ones(len(rows), bool)
        head[1:] = rows[1:] != rows[:-1]
        best[rows[head]], owner[rows[head]] = total[head], who[head]
        return owner, best


def as_codes(values: np.ndarray) -> np.ndarray:
    """uint64 hashes as faiss binary codes (8 bytes a row)."""
    return np.ascontiguousarray(np.asarray(values, dtype=np.uint64).astype(">u8")).view(np.uint8).reshape(-1, 8)


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
