"""Near-duplicate search of 64-bit perceptual hashes by banded LSH, in numpy (no engine).

The 64 bits are cut into d+1 bands: two hashes within Hamming distance d agree exactly on at
least one band (pigeonhole), so only rows sharing a (band, band value) key are compared.
Key rows come in groups keyed by (band, key); `later_duplicates` says, per key row, whether
an earlier row (smaller position) of its group duplicates it. Sha256 key rows (band -1:
bits 0..63 as key, 64..127 as value) duplicate only when equal.

Cost: with random hashes a group holds about rows / 2**(64 / (d+1)) rows, compared pairwise,
so keep d small (<= ~8) at scale.
"""
from __future__ import annotations

import io
from typing import Optional

import numpy as np

from pipeline.core.hashing import splitmix64
from pipeline.errors import UserError

SHA_BAND = -1               # the band of an image's sha256 key row
PAIRS_PER_CHUNK = 1 << 21   # bounds the memory of one vectorised comparison (~100 MB)
_BYTE_BITS = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def phash_of(jpg: Optional[bytes]) -> Optional[int]:
    """`imagehash.phash` of encoded image bytes as an unsigned 64-bit int, None if undecodable."""
    if not jpg:
        return None
    import imagehash
    from PIL import Image

    try:
        with Image.open(io.BytesIO(jpg)) as image:
            return int(str(imagehash.phash(image)), 16)
    except Exception:  # pylint: disable=broad-except  # a bad image never crashes the run
        return None


def sha_halves(sha_hex: list[Optional[str]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bits 0..63 and 64..127 of each hex sha256 (as uint64), and which rows have one."""
    valid = np.array([bool(s) for s in sha_hex], dtype=bool)
    joined = "".join((s or "0" * 32)[:32] for s in sha_hex)
    words = np.frombuffer(bytes.fromhex(joined), dtype=">u8").astype(np.uint64).reshape(-1, 2)
    return words[:, 0], words[:, 1], valid


def band_masks(distance: int) -> list[tuple[int, np.uint64]]:
    """(shift, mask) of each of the d+1 bands that partition the 64 bits."""
    if not 0 <= distance < 64:
        raise UserError(f"image_dedup.phash_distance must be in 0..63, got {distance}")
    bands = distance + 1
    bounds = [b * 64 // bands for b in range(bands + 1)]
    return [(lo, np.uint64((1 << (hi - lo)) - 1)) for lo, hi in zip(bounds, bounds[1:])]


def band_keys(phash: np.ndarray, distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row index, band, band value) of every band of every hash: d+1 key rows per hash."""
    masks = band_masks(distance)
    rows = np.tile(np.arange(len(phash), dtype=np.int64), len(masks))
    band = np.repeat(np.arange(len(masks), dtype=np.int8), len(phash))
    value = np.concatenate([(phash >> np.uint64(lo)) & mask for lo, mask in masks])
    return rows, band, value.astype(np.uint64)


def key_bucket(band: np.ndarray, key: np.ndarray, buckets: int) -> np.ndarray:
    salt = splitmix64((band.astype(np.int64) + 2).astype(np.uint64))
    return (splitmix64(key ^ salt) % np.uint64(buckets)).astype(np.int64)


def popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2
        return np.bitwise_count(x)
    return _BYTE_BITS[np.ascontiguousarray(x).view(np.uint8)].reshape(-1, 8).sum(axis=1)


def later_duplicates(band: np.ndarray, key: np.ndarray, value: np.ndarray, pos: np.ndarray,
                     distance: int, chunk_pairs: int = PAIRS_PER_CHUNK) -> np.ndarray:
    """Per key row: does an earlier row (smaller pos) of its (band, key) group duplicate it?

    Sha rows duplicate when key and value (all 128 bits) are equal; band rows when their
    values (whole phashes) are within `distance` bits. Rows equal to an earlier row of the
    group are settled first, so only distinct hashes are compared pairwise.
    """
    order = np.lexsort((pos, value, key, band))
    b, k, v = band[order], key[order], value[order]
    same_group = np.zeros(len(order), dtype=bool)
    same_group[1:] = (b[1:] == b[:-1]) & (k[1:] == k[:-1])
    repeated = same_group.copy()
    repeated[1:] &= v[1:] == v[:-1]
    found = np.zeros(len(order), dtype=bool)
    found[order] = repeated
    if distance > 0:
        compare = order[~repeated & (b != SHA_BAND)]
        compare = compare[np.lexsort((pos[compare], key[compare], band[compare]))]
        found[compare] |= near_earlier(band[compare], key[compare], value[compare], distance,
                                       chunk_pairs)
    return found


def near_earlier(band: np.ndarray, key: np.ndarray, value: np.ndarray, distance: int,
                 chunk_pairs: int = PAIRS_PER_CHUNK) -> np.ndarray:
    """Rows sorted by group then position: is any earlier row of the group within distance?"""
    n = len(value)
    if n == 0:
        return np.zeros(0, dtype=bool)
    starts = np.ones(n, dtype=bool)
    starts[1:] = (band[1:] != band[:-1]) | (key[1:] != key[:-1])
    group_start = np.maximum.accumulate(np.where(starts, np.arange(n), 0))
    earlier = np.arange(n) - group_start              # how many earlier rows in the group
    before = np.concatenate([[0], np.cumsum(earlier)])
    found = np.zeros(n, dtype=bool)
    first = int(np.argmax(earlier > 0)) if earlier.any() else n
    while first < n:
        last = int(np.searchsorted(before, before[first] + chunk_pairs, side="right")) - 1
        last = min(max(last, first + 1), n)
        counts = earlier[first:last]
        rows = np.repeat(np.arange(first, last), counts)
        within = np.arange(len(rows)) - np.repeat(before[first:last] - before[first], counts)
        partners = group_start[rows] + within
        close = popcount(value[rows] ^ value[partners]) <= distance
        found[rows[close]] = True
        first = last
    return found
