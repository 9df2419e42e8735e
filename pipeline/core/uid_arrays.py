"""DataComp's `uids.npy`: a set of uids as a numpy array of dtype `u8,u8` (each uid's 32 hex
digits as its upper and lower 64 bits), sorted ascending, no uid twice.

Written by every run (`write_part` in each finalize task, then `merge_parts` on the driver:
a k-way merge of the sorted parts, written to the file in order, so the driver holds blocks
of the parts and never the whole set); read by `input.uids` (`check_file` on the driver, in
blocks; `UidSubset` in each worker: the file memory-mapped, a vectorised binary search).
"""
from __future__ import annotations

import binascii
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core import storage
from pipeline.errors import UserError

UID_DTYPE = np.dtype("u8,u8")   # (upper 64 bits, lower 64 bits), as DataComp's apply_filter.py
UID_PATTERN = "[0-9a-f]{32}"     # a uid: 32 lowercase hex digits
CHECK_ROWS = 1 << 20            # rows read at a time when checking a file (16 MiB)
MERGE_ROWS = 1 << 20            # rows the driver holds in block buffers while merging (16 MiB)
HEADER_BYTES = 128              # a 1-D u8,u8 .npy header (numpy pads it to 64 bytes, with room to grow)
MIN_BLOCK = 256                 # rows read from one part at a time, at least
FETCH_THREADS = 16              # shares fetched at once from an object store


def halves(uids) -> tuple[np.ndarray, np.ndarray]:
    """(upper, lower) 64 bits of each uid (an Arrow string column, or a list); every uid must
    be 32 lowercase hex digits. Reads the column's character buffer, no Python strings."""
    array = uids if isinstance(uids, (pa.Array, pa.ChunkedArray)) else pa.array(list(uids), pa.string())
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    array = array.cast(pa.string())
    if not len(array):
        return np.zeros(0, np.uint64), np.zeros(0, np.uint64)
    shaped = pc.fill_null(pc.match_substring_regex(array, f"^{UID_PATTERN}$"), False)
    if not pc.all(shaped).as_py():
        bad = array[int(np.argmin(shaped.to_numpy(zero_copy_only=False)))].as_py()
        raise ValueError(f"uid {bad!r} is not 32 lowercase hex digits")
    offsets = np.frombuffer(array.buffers()[1], np.int32)[array.offset:array.offset + len(array) + 1]
    digits = memoryview(array.buffers()[2])[offsets[0]:offsets[-1]]
    pairs = np.frombuffer(binascii.unhexlify(digits), ">u8").reshape(-1, 2).astype(np.uint64)
    return pairs[:, 0].copy(), pairs[:, 1].copy()


def sorted_unique(hi: np.ndarray, lo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pairs sorted by (upper, lower), each once. A stable sort on the upper half (fast on
    runs already sorted); a full lexicographic sort only when two upper halves are equal."""
    order = np.argsort(hi, kind="stable")
    hi, lo = hi[order], lo[order]
    same = hi[1:] == hi[:-1]
    if same.any():
        order = np.lexsort((lo, hi))
        hi, lo = hi[order], lo[order]
        same = hi[1:] == hi[:-1]
    first = np.ones(len(hi), bool)
    first[1:] = ~(same & (lo[1:] == lo[:-1]))
    return hi[first], lo[first]


def as_array(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    array = np.empty(len(hi), UID_DTYPE)
    array["f0"], array["f1"] = hi, lo
    return array


def write_part(uids, path: str) -> int:
    """One part's uids, sorted and unique, as raw `u8,u8` rows (no header); returns the count."""
    hi, lo = sorted_unique(*halves(uids))
    storage.write_bytes(path, as_array(hi, lo).tobytes())
    return len(hi)


def merge_parts(files: Sequence[str], counts: Sequence[int], target: str,
                budget_rows: int = MERGE_ROWS) -> int:
    """Merge sorted parts (`write_part`'s files, local) into the `.npy` file `target`, each
    uid once; returns the number of uids. Written in order through plain writes, so the
    driver holds about `budget_rows` x 16 bytes of block buffers (at least MIN_BLOCK rows a
    part) and a round's merged rows, whatever the total (the file's pages are the page
    cache's; a memory-mapped output would count every page it touched in this process)."""
    parts = [(f, c) for f, c in zip(files, counts) if c]
    total = sum(c for _, c in parts)
    written = 0
    with open(target, "wb") as stream:
        write_header(stream, total)
        if parts:
            for hi, lo in merged_blocks(parts, max(MIN_BLOCK, budget_rows // len(parts))):
                stream.write(as_array(hi, lo).data)
                written += len(hi)
        if written < total:   # a uid in two parts (a run without dedup): fewer rows than counted
            stream.seek(0)
            write_header(stream, written)   # the same length: numpy pads the shape for growth
            stream.truncate(HEADER_BYTES + written * UID_DTYPE.itemsize)
    return written


def write_header(stream, rows: int) -> None:
    np.lib.format.write_array_header_1_0(stream, {"descr": np.lib.format.dtype_to_descr(UID_DTYPE),
                                                  "fortran_order": False, "shape": (rows,)})
    if stream.tell() != HEADER_BYTES:
        raise RuntimeError(f"npy header of {stream.tell()} bytes, expected {HEADER_BYTES}")


def merged_blocks(parts: list[tuple[str, int]], block: int):
    """Sorted, unique runs of (upper, lower) from the parts, in order. Each round takes from
    the buffers the uids up to the smallest last buffered uid of the parts not fully read
    (every uid not yet read is above it), then tops those buffers up to `block` rows: about a
    block from each part a round when the parts interleave (hashes), one part's block when
    their ranges are apart (a pool sorted by uid); the choice of parts is vectorised."""
    buffers = [Buffer(path, count, block) for path, count in parts]
    ends = np.zeros((4, len(buffers)), np.uint64)   # first hi, first lo, last hi, last lo
    live = np.ones(len(buffers), bool)              # the buffer holds rows
    pending = np.zeros(len(buffers), bool)          # the part has rows not read yet
    for i, buffer in enumerate(buffers):
        buffer.mark(i, ends, live, pending)
    while live.any():
        if pending.any():
            cut = lowest(ends[2], ends[3], pending)
            fits = live & ((ends[0] < cut[0]) | ((ends[0] == cut[0]) & (ends[1] <= cut[1])))
        else:
            cut, fits = None, live
        taken = []
        for i in np.flatnonzero(fits):
            taken.append(buffers[i].take(cut))
            buffers[i].top_up()
            buffers[i].mark(i, ends, live, pending)
        yield sorted_unique(np.concatenate([hi for hi, _ in taken]), np.concatenate([lo for _, lo in taken]))


def lowest(hi: np.ndarray, lo: np.ndarray, among: np.ndarray) -> tuple:
    """The smallest (hi, lo) pair among the marked ones."""
    top = hi[among].min()
    return top, lo[among & (hi == top)].min()


class Buffer:
    """The next rows of one sorted part file, at most `block` of them."""

    def __init__(self, path: str, count: int, block: int):
        self.path, self.count, self.block = path, count, block
        self.hi = self.lo = np.zeros(0, np.uint64)
        self.pos = 0
        self.top_up()

    def mark(self, i: int, ends: np.ndarray, live: np.ndarray, pending: np.ndarray) -> None:
        """Record this buffer's first and last rows, whether it holds rows, whether more wait."""
        live[i], pending[i] = len(self.hi) > 0, self.pos < self.count
        if live[i]:
            ends[:, i] = self.hi[0], self.lo[0], self.hi[-1], self.lo[-1]

    def take(self, cut) -> tuple[np.ndarray, np.ndarray]:
        """The buffered rows <= `cut` (all of them when `cut` is None), removed."""
        n = len(self.hi) if cut is None else upper_bound(self.hi, self.lo, *cut)
        taken = self.hi[:n], self.lo[:n]
        self.hi, self.lo = self.hi[n:], self.lo[n:]
        return taken

    def top_up(self) -> None:
        want = min(self.block - len(self.hi), self.count - self.pos)
        if want <= 0:
            return
        hi, lo = read_rows(self.path, self.pos, want)
        self.hi, self.lo = np.concatenate([self.hi, hi]), np.concatenate([self.lo, lo])
        self.pos += want


def upper_bound(hi: np.ndarray, lo: np.ndarray, cut_hi, cut_lo) -> int:
    """How many of the sorted pairs are <= (cut_hi, cut_lo)."""
    start = int(np.searchsorted(hi, cut_hi, "left"))
    stop = int(np.searchsorted(hi, cut_hi, "right"))
    return start + int(np.searchsorted(lo[start:stop], cut_lo, "right"))


def read_rows(path: str, start: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as stream:
        stream.seek(start * UID_DTYPE.itemsize)
        data = stream.read(rows * UID_DTYPE.itemsize)
    array = np.frombuffer(data, UID_DTYPE)
    return array["f0"].copy(), array["f1"].copy()


@contextmanager
def local_files(paths: Sequence[str]) -> Iterator[list[str]]:
    """The files as local paths for the block: themselves when local, else fetched (in
    threads) into a temporary folder removed afterwards."""
    if all(storage.is_local(p) for p in paths):
        yield [storage.normalize(p) for p in paths]
        return
    folder = tempfile.mkdtemp(prefix="curate-uids-")
    local = [os.path.join(folder, f"{i:06d}") for i in range(len(paths))]
    try:
        with ThreadPoolExecutor(FETCH_THREADS) as pool:
            list(pool.map(lambda pair: Path(pair[1]).write_bytes(storage.read_bytes(pair[0])), zip(paths, local)))
        yield local
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def check_file(path: str, key: str = "input.uids") -> int:
    """Check a uids.npy before any work (one line naming the file and the problem): a `.npy`
    of dtype u8,u8, one dimension, sorted ascending, no uid twice. Read in blocks of
    CHECK_ROWS rows; returns the number of uids."""
    def refuse(problem: str) -> UserError:
        return UserError(f"{key}: {path}: {problem}")

    if not storage.exists(path) or storage.isdir(path):
        raise refuse("no such file")
    with storage.open_input(path, sequential=True) as stream:
        try:
            version = np.lib.format.read_magic(stream)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                raise ValueError(f"npy format version {version}")
            shape, _, dtype = read_header(stream)
        except (ValueError, OSError, SyntaxError, EOFError) as exc:
            detail = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
            raise refuse(f"not a .npy file ({detail}); expected DataComp's uids.npy (numpy, dtype u8,u8)") from None
        if dtype != UID_DTYPE:
            raise refuse(f"dtype {dtype.descr if dtype.names else dtype.str}, expected u8,u8 (DataComp's "
                         f"uids.npy: each uid's upper and lower 64 bits)")
        if len(shape) != 1:
            raise refuse(f"shape {shape}, expected one dimension")
        return _check_rows(stream, shape[0], refuse)


def _check_rows(stream, rows: int, refuse) -> int:
    previous = None   # (hi, lo) of the row before the block
    for start in range(0, rows, CHECK_ROWS):
        want = min(CHECK_ROWS, rows - start)
        data = stream.read(want * UID_DTYPE.itemsize)
        if len(data) < want * UID_DTYPE.itemsize:
            raise refuse(f"truncated: the header says {rows:,} uids, the file holds "
                         f"{start + len(data) // UID_DTYPE.itemsize:,}")
        block = np.frombuffer(data, UID_DTYPE)
        hi, lo = block["f0"], block["f1"]
        if previous is not None:
            hi, lo = np.concatenate([[previous[0]], hi]), np.concatenate([[previous[1]], lo])
        offset = start - (previous is not None)
        equal = (hi[1:] == hi[:-1]) & (lo[1:] == lo[:-1])
        lower = (hi[1:] < hi[:-1]) | ((hi[1:] == hi[:-1]) & (lo[1:] < lo[:-1]))
        if lower.any():
            at = offset + int(np.argmax(lower)) + 1
            raise refuse(f"not sorted (row {at:,} is below row {at - 1:,}); "
                         f"sort it (numpy: uids.sort()) before using it")
        if equal.any():
            at = offset + int(np.argmax(equal)) + 1
            raise refuse(f"uid {hex_of(hi[at - offset], lo[at - offset])} appears twice "
                         f"(rows {at - 1:,} and {at:,}); keep each once (numpy: np.unique)")
        previous = (hi[-1], lo[-1])
    return rows


def hex_of(hi, lo) -> str:
    return f"{int(hi):016x}{int(lo):016x}"


class UidSubset:
    """Membership in a (checked) uids.npy, memory-mapped: workers on one machine share its
    pages, none holds a copy. About 1 microsecond a lookup (a vectorised binary search of
    about log2(n) steps over the mapped file)."""

    def __init__(self, path: str):
        local = storage.local_copy(path)
        rows = np.load(local, mmap_mode="r")
        self.hi, self.lo = rows["f0"], rows["f1"]

    def __len__(self) -> int:
        return len(self.hi)

    def contains(self, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
        n = len(self.hi)
        if not n or not len(hi):
            return np.zeros(len(hi), bool)
        low, high = np.zeros(len(hi), np.int64), np.full(len(hi), n, np.int64)
        while True:
            active = low < high
            if not active.any():
                break
            mid = (low + high) // 2
            at = np.minimum(mid, n - 1)
            h, l_ = self.hi[at], self.lo[at]
            below = (h < hi) | ((h == hi) & (l_ < lo))
            low = np.where(active & below, mid + 1, low)
            high = np.where(active & ~below, mid, high)
        at = np.minimum(low, n - 1)
        return (low < n) & (self.hi[at] == hi) & (self.lo[at] == lo)
