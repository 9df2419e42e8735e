"""Near-duplicate search of 64-bit perceptual hashes by banded LSH, in numpy (no engine).

The 64 bits are cut into d+1 bands: two hashes within Hamming distance d agree exactly on at
least one band (pigeonhole), so only rows sharing a (band, band value) key are compared.
Key rows come in groups keyed by (band, key); `later_duplicates` says, per key row, whether
an earlier row (smaller position) of its group duplicates it. Sha256 key rows (band -1:
bits 0..63 as key, 64..127 as value) duplicate only when equal.

`matches_earlier` compares key rows with those of earlier runs (`exclude`) in the same way.

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
    group_start = _group_starts(band, key)
    earlier = np.arange(n) - group_start              # how many earlier rows in the group
    return any_close(value, group_start, earlier, np.full(n, distance), chunk_pairs)


def matches_earlier(band: np.ndarray, key: np.ndarray, value: np.ndarray, old_band: np.ndarray,
                    old_key: np.ndarray, old_value: np.ndarray, distance: int,
                    chunk_pairs: int = PAIRS_PER_CHUNK) -> np.ndarray:
    """Per key row: does a key row of an earlier run (`old_*`) in its (band, key) group match
    it? Sha rows match when equal, band rows when within `distance` bits. Each row is
    compared with the earlier rows of its group only (not with its own run's rows)."""
    n, m = len(band), len(old_band)
    if n == 0 or m == 0:
        return np.zeros(n, dtype=bool)
    is_new = np.concatenate([np.zeros(m, dtype=bool), np.ones(n, dtype=bool)])
    b, k = np.concatenate([old_band, band]), np.concatenate([old_key, key])
    order = np.lexsort((is_new, k, b))                # by group, its earlier rows first
    b, k, v, new = b[order], k[order], np.concatenate([old_value, value])[order], is_new[order]
    group_start = _group_starts(b, k)
    olds = np.cumsum(~new)                            # earlier rows up to and including each row
    olds_in_group = olds - (olds[group_start] - (~new[group_start]))
    counts = np.where(new, olds_in_group, 0)
    limit = np.where(b == SHA_BAND, 0, distance)
    found = np.zeros(n + m, dtype=bool)
    found[order] = any_close(v, group_start, counts, limit, chunk_pairs)
    return found[m:]


def _group_starts(band: np.ndarray, key: np.ndarray) -> np.ndarray:
    """Rows sorted by group: the index of the first row of each row's group."""
    n = len(band)
    starts = np.ones(n, dtype=bool)
    starts[1:] = (band[1:] != band[:-1]) | (key[1:] != key[:-1])
    return np.maximum.accumulate(np.where(starts, np.arange(n), 0))


def any_close(value: np.ndarray, first: np.ndarray, counts: np.ndarray, limit: np.ndarray,
              chunk_pairs: int = PAIRS_PER_CHUNK) -> np.ndarray:
    """Per row i: is any of rows first[i] .. first[i] + counts[i] - 1 within limit[i] bits
    of row i? Pairs are compared in chunks of about `chunk_pairs` (bounded memory)."""
    n = len(value)
    before = np.concatenate([[0], np.cumsum(counts)])
    found = np.zeros(n, dtype=bool)
    start = int(np.argmax(counts > 0)) if counts.any() else n
    while start < n:
        last = int(np.searchsorted(before, before[start] + chunk_pairs, side="right")) - 1
        last = min(max(last, start + 1), n)
        taken = counts[start:last]
        rows = np.repeat(np.arange(start, last), taken)
        within = np.arange(len(rows)) - np.repeat(before[start:last] - before[start], taken)
        partners = first[rows] + within
        close = popcount(value[rows] ^ value[partners]) <= limit[rows]
        found[rows[close]] = True
        start = last
    return found
