"""PDQ perceptual hashes (Meta's 256-bit image hash) and a Hamming-distance matcher for lists of them.

- `hash_image(data)`: the PDQ hash of an image's ORIGINAL bytes (decoded as they are, EXIF
  orientation ignored, alpha dropped, as PIL's `convert("RGB")` and the reference hasher do):
  64 lowercase hex digits, most significant bit first (ThreatExchange's layout), and PDQ's
  quality (0-100). (None, None) when the bytes do not decode. The hash is the reference
  algorithm (`pdqhash`'s C++: luma, two passes of a Jarosz box filter along each axis,
  decimation to 64 x 64, the 16 x 16 low DCT coefficients against their median, the
  gradient quality) computed only where it is sampled: each axis's two box passes at the 64
  decimated places are 64 weighted sums of a few input rows (one matrix-vector product
  each), so past the luma the image is read about once. Same bits and quality as
  `pdqhash.compute` (`reference_hash`; the unit tests compare them on real photos of many
  sizes; flat images, quality 0, differ in their noise bits), ~10-50x faster here.
- `read_pdq_list(files)`: the hashes of list files, one a line (text; `#` comments; the hash
  is a line's first token of 64 hex digits, so bare hashes, `pdq-photo-hasher`'s
  `hash,quality,filename` lines and ThreatExchange's `threatexchange dataset -P -s pdq`
  lines read as they are; or CSV under a header naming the column, `pdq`, `hash`,
  `signal_str` (ThreatExchange's `dataset -P --csv`, its rows of other signal types
  skipped), `signal_value` or `indicator`) or parquet (such a column, or its only text
  column). A line without a hash is one error naming the file and line.
- `PdqIndex(hashes).matches(queries, distance)`: per query, is a list hash within `distance`
  bits? Multi-index hashing: the bits are cut into m bands (16 of 16 bits; from 2M list
  hashes 12 of 21 bits, 4 bits left out), and a hash within d bits of the query has, by
  pigeonhole, a band within r = floor(d / m) bits of the query's band (m x (r + 1) > d).
  Each band is a counting-sorted table, probed with the query's band and its flips of up to
  r bits (17 probes a band at d = 31 with 16-bit bands, 232 with 21-bit ones), and the
  candidates are verified by exact popcount: the same answer as comparing with every list
  hash (the unit tests check it), at 1/240th (16-bit) or 1/750th (21-bit) of the
  comparisons on uniform hashes. Memory: 32 bytes of hash and 4 bytes per band per list hash
  (about 0.9 GB for 10M, with 100 MB of 21-bit tables). From r = 4 (d >= 64 or 48) it scans.
"""
from __future__ import annotations

import csv
import functools
import itertools
import re
from typing import Iterable, Optional, Sequence

import numpy as np
import pyarrow as pa

from pipeline.core import storage
from pipeline.errors import UserError

DISTANCE = 31        # the PDQ authors' match threshold (bits of 256)
MIN_QUALITY = 50     # PDQ's own advice: below it a hash is too unreliable to match on
BITS, BYTES = 256, 32
LARGE = 1 << 21            # lists this long use 21-bit bands (12 of them), shorter ones 16-bit (16)
CHUNK = 64                 # queries matched together
SCAN_FROM_RADIUS = 4       # a band radius from which a full scan is about as cheap as the probes
HEX = re.compile(r"^[0-9a-f]{64}$")
COLUMN_NAMES = ("pdq", "hash", "signal_str", "signal_value", "indicator")
TOKENS = re.compile(r"[\s,;'\"]+")


def decode(data: bytes) -> Optional[np.ndarray]:
    """An image's bytes as a BGR uint8 array as they are (EXIF orientation ignored), or None."""
    import cv2

    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    except cv2.error:
        return None
    return None if image is None or image.size == 0 else image


def hash_image(data: bytes) -> tuple[Optional[str], Optional[int]]:
    """The PDQ hash (64 hex digits) and quality of an image's bytes; (None, None) when they
    do not decode (the caller's own decode reports why)."""
    image = decode(data)
    return (None, None) if image is None else hash_pixels(image)


def hash_pixels(bgr: np.ndarray) -> tuple[str, int]:
    """PDQ of a BGR uint8 image (see the module's docstring)."""
    import cv2

    luma = cv2.cvtColor(bgr.astype(np.float32), cv2.COLOR_BGR2GRAY)    # 0.299 R + 0.587 G + 0.114 B
    down = filtered(luma, sampled_filter(luma.shape[0]))                  # (64, width)
    sampled = filtered(down.T, sampled_filter(luma.shape[1])).T           # the 64 x 64 buffer
    coefficients = (DCT @ sampled @ DCT.T).ravel()                         # 16 x 16, row-major
    median = np.sort(coefficients)[(len(coefficients) - 1) // 2]           # Torben's: the lower median
    bits = (coefficients > median)[::-1]                                   # bit 255 (w[15]'s top) first
    return np.packbits(bits).tobytes().hex(), quality(sampled)


def reference_hash(bgr: np.ndarray) -> tuple[str, int]:
    """`pdqhash.compute` (the reference C++ code, ~50x slower here) in the same format."""
    import cv2
    import pdqhash

    bits, quality_ = pdqhash.compute(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    return np.packbits(np.asarray(bits, dtype=bool)).tobytes().hex(), int(quality_)


@functools.lru_cache(maxsize=4096)
def sampled_filter(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PDQ's two passes of a box filter along an axis of length n, at the 64 places that
    decimation samples (`int((i + 0.5) * n / 64)`): per place, the first input index, how many
    inputs, and their weights (zero-padded rows). The box of window w at j averages the input
    over [j - (w - half), j + half) clipped to the axis, half = (w + 2) // 2,
    w = (n + 127) // 128, as the reference's `box1DFloat` and `computeJaroszFilterWindowSize`."""
    window = (n + 2 * 64 - 1) // (2 * 64)
    half = (window + 2) // 2
    at = np.arange(n)
    low, high = np.maximum(0, at - (window - half)), np.minimum(n, at + half)
    places = ((np.arange(64) + 0.5) * n / 64).astype(np.int64)
    first, last = low[low[places]], high[high[places] - 1]       # the inputs a place depends on
    span = int((last - first).max())
    steps = np.zeros((64, span + 1))
    rows = np.arange(64)
    for k in range(window):               # the second pass's box at each place: first-pass outputs j,
        j = np.minimum(low[places] + k, n - 1)                      # each the mean of [low[j], high[j])
        weight = np.where(low[places] + k < high[places], 1.0 / (high[j] - low[j]), 0.0)
        weight /= high[places] - low[places]
        np.add.at(steps, (rows, low[j] - first), weight)
        np.add.at(steps, (rows, high[j] - first), -weight)
    return first, last - first, np.cumsum(steps, axis=1)[:, :span].astype(np.float32)


def filtered(values: np.ndarray, axis_filter: tuple) -> np.ndarray:
    """(64, m): the filter along the first axis of (n, m) `values`, at its 64 places."""
    first, count, weights = axis_filter
    out = np.empty((64, values.shape[1]), dtype=np.float32)
    for place in range(64):
        start, size = first[place], count[place]
        out[place] = weights[place, :size] @ values[start:start + size]
    return out


def quality(sampled: np.ndarray) -> int:
    """PDQ's quality: the summed absolute gradients of the 64 x 64 buffer (each scaled to
    percent of 255 and truncated), over 90, at most 100."""
    down = ((sampled[:-1, :] - sampled[1:, :]) * 100 / 255).astype(np.int32)
    across = ((sampled[:, :-1] - sampled[:, 1:]) * 100 / 255).astype(np.int32)
    return min(100, int((np.abs(down).sum() + np.abs(across).sum()) // 90))


DCT = (np.sqrt(2.0 / 64.0) * np.cos(np.pi / 2 / 64.0 * np.arange(1, 17)[:, None]
                                    * (2 * np.arange(64)[None, :] + 1))).astype(np.float32)


def codes_of(values: Iterable[Optional[str]]) -> tuple[np.ndarray, np.ndarray]:
    """Hex hashes (or None, or anything else) as (n, 32) uint8 codes, and which were valid."""
    values = values.to_pylist() if hasattr(values, "to_pylist") else list(values)
    valid = np.array([isinstance(v, str) and len(v) == 64 and HEX.match(v.lower()) is not None for v in values],
                     dtype=bool)
    joined = "".join(v if ok else "0" * 64 for v, ok in zip(values, valid))
    return np.frombuffer(bytes.fromhex(joined), np.uint8).reshape(len(values), BYTES).copy(), valid


def as_codes(hashes) -> np.ndarray:
    """(n, 32) uint8 codes from codes, (n, 4) uint64 words (big-endian bit order, as hex) or hex strings."""
    if isinstance(hashes, np.ndarray) and hashes.ndim == 2:
        if hashes.dtype == np.uint8 and hashes.shape[1] == BYTES:
            return np.ascontiguousarray(hashes)
        if hashes.dtype == np.uint64 and hashes.shape[1] == 4:
            return np.ascontiguousarray(hashes.astype(">u8")).view(np.uint8).reshape(-1, BYTES)
    codes, valid = codes_of(hashes)
    if not valid.all():
        raise ValueError(f"not a PDQ hash (64 hex digits): {list(hashes)[int(np.argmin(valid))]!r}")
    return codes


def words(codes: np.ndarray) -> np.ndarray:
    """(n, 32) uint8 codes as (n, 4) uint64 (for popcounts; byte order does not matter there)."""
    return np.ascontiguousarray(codes).view(np.uint64).reshape(-1, 4)


def distances(codes: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Hamming distances of (n, 32) codes to one (32,) code, or row by row to (n, 32)."""
    return np.bitwise_count(words(codes) ^ words(query.reshape(-1, BYTES))).sum(axis=1, dtype=np.int32)


def brute_force_matches(list_codes: np.ndarray, query_codes: np.ndarray, distance: int,
                        block: int = 1 << 15, queries: int = 32) -> np.ndarray:
    """Per query code: is a list code within `distance` bits? (every pair compared, `queries`
    queries by `block` list codes at a time)"""
    list_words = words(as_codes(list_codes))
    query_words = words(as_codes(query_codes))
    found = np.zeros(len(query_words), dtype=bool)
    for first in range(0, len(query_words), queries):
        chunk = query_words[first:first + queries, None, :]
        for start in range(0, len(list_words), block):
            near = np.bitwise_count(list_words[None, start:start + block] ^ chunk).sum(axis=2) <= distance
            found[first:first + queries] |= near.any(axis=1)
    return found


@functools.lru_cache(maxsize=16)
def flip_masks(radius: int, bits: int) -> np.ndarray:
    """Every `bits`-bit mask of at most `radius` set bits (the probes of one band)."""
    return np.array([sum(1 << i for i in chosen) for r in range(radius + 1)
                     for chosen in itertools.combinations(range(bits), r)], dtype=np.int64)


def band_keys(codes: np.ndarray, bits: int) -> np.ndarray:
    """(n, bands) int64: each 64-bit word of the codes cut into 64 // bits bands of `bits`
    bits (the leftover bits of each word are in no band)."""
    values = np.ascontiguousarray(codes).view(">u8").reshape(-1, 4)
    mask = np.uint64((1 << bits) - 1)
    return np.stack([(values[:, word] >> np.uint64(bits * band)) & mask
                     for word in range(4) for band in range(64 // bits)], axis=1).astype(np.int64)


def expand_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The concatenation of range(start, start + length) for each pair."""
    total = int(lengths.sum())
    if not total:
        return np.zeros(0, np.int64)
    ends = np.cumsum(lengths)
    return np.arange(total, dtype=np.int64) + np.repeat(starts - (ends - lengths), lengths)


class PdqIndex:
    """Exact Hamming-distance matching of PDQ hashes against a list (see the module's docstring)."""

    def __init__(self, hashes, band_bits: Optional[int] = None):
        codes = as_codes(hashes)
        if len(codes):
            codes = np.unique(codes.view(f"V{BYTES}").ravel()).view(np.uint8).reshape(-1, BYTES)
        self.codes = np.ascontiguousarray(codes)
        self.words = words(self.codes)       # (n, 4) uint64 views for popcounts
        n = len(self.codes)
        self.bits = band_bits or (21 if n >= LARGE else 16)
        keys = band_keys(self.codes, self.bits)
        self.bands = keys.shape[1]
        self.order = np.empty((self.bands, n), dtype=np.int32)      # rows, bucket by bucket, per band
        offset_type = np.int32 if self.bands * n < 2**31 else np.int64
        self.offsets = np.empty((self.bands, (1 << self.bits) + 1), dtype=offset_type)   # into order.ravel()
        for band in range(self.bands):
            self.order[band] = np.argsort(keys[:, band], kind="stable")
            counts = np.bincount(keys[:, band], minlength=1 << self.bits)
            self.offsets[band, 0] = band * n
            np.cumsum(counts, out=self.offsets[band, 1:])
            self.offsets[band, 1:] += band * n

    def __len__(self) -> int:
        return len(self.codes)

    def matches(self, queries: Sequence[Optional[str]], distance: int = DISTANCE) -> np.ndarray:
        """Per query (hex hash, or None: never a match): is a list hash within `distance` bits?"""
        codes, valid = codes_of(queries)
        found = np.zeros(len(codes), dtype=bool)
        if valid.any() and len(self.codes) and distance >= 0:
            asked = codes[valid]    # in chunks: candidates stay in cache, and memory bounded
            found[valid] = np.concatenate([self.match_codes(asked[i:i + CHUNK], int(distance))
                                           for i in range(0, len(asked), CHUNK)])
        return found

    def match_codes(self, queries: np.ndarray, distance: int) -> np.ndarray:
        radius = distance // self.bands     # bands x (radius + 1) > distance: the pigeonhole
        if radius >= SCAN_FROM_RADIUS:
            return brute_force_matches(self.codes, queries, distance)
        masks = flip_masks(radius, self.bits)
        probes = band_keys(queries, self.bits)[:, :, None] ^ masks[None, None, :]     # (q, band, probe)
        which = np.broadcast_to(np.arange(self.bands)[None, :, None], probes.shape)
        starts = self.offsets[which, probes].ravel().astype(np.int64)
        lengths = self.offsets[which, probes + 1].ravel() - starts
        rows = np.take(self.order.ravel(), expand_ranges(starts, lengths))
        owners = np.repeat(np.repeat(np.arange(len(queries)), self.bands * len(masks)), lengths)
        counts = np.bitwise_count(np.take(self.words, rows, axis=0) ^ np.take(words(queries), owners, axis=0))
        near = counts[:, 0].astype(np.int16) + counts[:, 1] + counts[:, 2] + counts[:, 3] <= distance
        return np.bincount(owners[near], minlength=len(queries)) > 0


def read_pdq_file(path: str) -> np.ndarray:
    """The hashes of one list file as (n, 32) uint8 codes; a bad file or entry is a one-line
    UserError naming the file (and line)."""
    try:
        if path.endswith(".parquet"):
            lines = [(i + 1, v) for i, v in enumerate(parquet_values(path)) if v is not None]
        else:
            with storage.open_input(path) as stream:
                text = stream.read().decode("utf-8")
            lines = text_values(text)
    except FileNotFoundError:
        raise UserError(f"blocklist.pdq: {path}: no such file") from None
    except UnicodeDecodeError:
        raise UserError(f"blocklist.pdq: {path}: not UTF-8 text (or name it .parquet)") from None
    except (OSError, pa.ArrowException) as error:
        raise UserError(f"blocklist.pdq: {path}: cannot be read ({error})") from None
    values = []
    for number, value in lines:
        value = value.strip().lower()
        if not HEX.match(value):
            raise UserError(f"blocklist.pdq: {path}:{number}: not a PDQ hash (64 hex digits): {value[:80]!r}")
        values.append(value)
    return codes_of(values)[0]


def text_values(text: str) -> list[tuple[int, str]]:
    """(line number, hash) of a text list: per line its first token of 64 hex digits (the line
    itself when none, for the error), or, under a CSV header naming a column (`pdq`, `hash`,
    `signal_str`, ...), that column of the rows whose `signal_type` (if any) is pdq."""
    lines = [(number, line.split("#", 1)[0].strip()) for number, line in enumerate(text.splitlines(), start=1)]
    lines = [(number, line) for number, line in lines if line]
    if not lines:
        return []
    names = [name.strip().lower() for name in next(csv.reader([lines[0][1]]))]
    column = next((names.index(name) for name in COLUMN_NAMES if name in names), None)
    if column is None or any(HEX.match(name) for name in names):
        return [(number, next((t for t in TOKENS.split(line) if HEX.match(t.lower())), line))
                for number, line in lines]
    kind = names.index("signal_type") if "signal_type" in names else None
    found = []
    for (number, _), fields in zip(lines[1:], csv.reader([line for _, line in lines[1:]])):
        if kind is not None and kind < len(fields) and fields[kind].strip().lower() != "pdq":
            continue
        found.append((number, fields[column] if column < len(fields) else ""))
    return found


def parquet_values(path: str) -> list:
    import pyarrow.parquet as pq

    with storage.open_input(path) as stream:
        table = pq.read_table(stream)
    names = [n for n in table.column_names if n.lower() in COLUMN_NAMES]
    if not names:
        names = [f.name for f in table.schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
        if len(names) != 1:
            raise UserError(f"blocklist.pdq: {path}: no column named 'pdq' and not exactly one text column "
                            f"({table.column_names})")
    return table[names[0]].to_pylist()


def read_pdq_list(files: Iterable[str], storage_options: Optional[dict] = None) -> np.ndarray:
    """Every hash of some list files as (n, 32) uint8 codes (in file order, duplicates kept);
    `storage_options` (the config's) when the files are on an object store and this process
    was not configured yet."""
    if storage_options is not None:
        storage.configure(storage_options)
    codes = [read_pdq_file(path) for path in files]
    return np.concatenate(codes) if codes else np.zeros((0, BYTES), np.uint8)
