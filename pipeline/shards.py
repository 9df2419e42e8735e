"""Deterministic WebDataset shards: `00000.tar, ...` plus `sizes.json`, readable by open_clip.

Samples are ordered by a hash of `(uid, seed)`, so shards come out shuffled and the same
input gives byte-identical tars on every run and engine: members have a fixed mtime, owner
and mode, and within a sample they come in webdataset's (sorted) order. Each sample has
`<key>.jpg`, `<key>.txt` (the caption), `<key>.json` (every other column that is not binary
or an embedding; recaption's `captions` without their `seconds`), `<key>.syn.txt` (the first synthetic
caption, when there is one) and, when embeddings are present, `<key>.npy` (float16, shape `(k, dim)`,
rows in the order `image_embedding, text_embedding`). Keys are digits only (no dots):
shard index then position. Each tar is committed through `core.storage` (temporary name,
fsync, rename).
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pyarrow as pa

from pipeline.clip.embeddings import IMAGE_EMBEDDING, TEXT_EMBEDDING
from pipeline.core import storage

MTIME = 0
IMAGE_COLUMN, TEXT_COLUMN, UID_COLUMN = "jpg", "text", "uid"
EMBEDDING_COLUMNS = (IMAGE_EMBEDDING, TEXT_EMBEDDING)
CAPTIONS_COLUMN = "captions"   # recaption's synthetic captions: the first also goes in as `<key>.syn.txt`
MIN_SHARDS = 8  # open_clip hangs when shards < dataloader workers x processes
SIZES_FILE = "sizes.json"
SHA256_FOLDER = "_sha256"   # each tar's sha256, written with it (`record_sha256`)
log = logging.getLogger(__name__)


def as_table(tables_or_rows: pa.Table | Iterable[pa.Table] | Iterable[dict]) -> pa.Table:
    """One table from a table, tables, record batches or dict rows."""
    if isinstance(tables_or_rows, pa.Table):
        return tables_or_rows
    items = list(tables_or_rows)
    if not items:
        return pa.table({UID_COLUMN: pa.array([], pa.string()), IMAGE_COLUMN: pa.array([], pa.binary()),
                         TEXT_COLUMN: pa.array([], pa.string())})
    if isinstance(items[0], dict):
        return pa.Table.from_pylist(items)
    tables = [pa.Table.from_batches([t]) if isinstance(t, pa.RecordBatch) else t for t in items]
    return pa.concat_tables(tables, promote_options="default")


def shuffled_order(uids: list[str], seed: int) -> np.ndarray:
    """Row indices sorted by a 64-bit hash of (seed, uid), ties broken by uid then position."""
    salt = f"{seed}\x00".encode()
    hashes = [int.from_bytes(hashlib.blake2b(salt + u.encode(), digest_size=8).digest(), "big")
              for u in uids]
    return np.array(sorted(range(len(uids)), key=lambda i: (hashes[i], uids[i], i)), dtype=np.int64)


def shard_name(index: int) -> str:
    return f"{index:05d}.tar"


def shard_keys(index: int, count: int, samples_per_shard: int) -> list[str]:
    """Sample keys of a shard: its index, then the position (digits only: no dots)."""
    digits = len(str(max(samples_per_shard - 1, 0)))
    return [f"{index:05d}{i:0{digits}d}" for i in range(count)]


def write_shards(tables_or_rows, out_dir: str | Path, samples_per_shard: int, seed: int = 0,
                 start_index: int = 0, write_sizes: bool = True, warn_few: bool = True) -> pa.Table:
    """Write the samples as shuffled shards; return a table `uid, shard, key` per sample.

    Shards are numbered from `start_index`. To write several parts into one folder, give each
    its own `start_index`, pass `write_sizes=False`, and call `write_sizes_json(out,
    sizes_of(all returned tables))` once at the end.
    """
    table = as_table(tables_or_rows)
    for column in (UID_COLUMN, IMAGE_COLUMN, TEXT_COLUMN):
        if column not in table.column_names:
            raise ValueError(f"write_shards: input lacks the column {column!r}")
    if samples_per_shard < 1:
        raise ValueError("write_shards: samples_per_shard must be >= 1")
    out = str(out_dir)
    order = shuffled_order(table[UID_COLUMN].to_pylist(), seed)
    n_shards = math.ceil(len(order) / samples_per_shard)
    sizes, placed = {}, []
    for shard in range(n_shards):
        rows = order[shard * samples_per_shard:(shard + 1) * samples_per_shard]
        index = start_index + shard
        keys = shard_keys(index, len(rows), samples_per_shard)
        write_tar(storage.join(out, shard_name(index)), table.take(rows), keys)
        sizes[shard_name(index)] = len(rows)
        placed.append(pa.table({"uid": table[UID_COLUMN].take(rows),
                                "shard": pa.array([shard_name(index)] * len(rows), pa.string()),
                                "key": pa.array(keys, pa.string())}))
    if write_sizes:
        write_sizes_json(out, sizes)
    if warn_few and n_shards < MIN_SHARDS:
        log.warning("wrote %d shard(s) to %s: fewer than %d; open_clip needs at least as many "
                    "shards as dataloader workers x processes", n_shards, out, MIN_SHARDS)
    return _concat_placed(placed)


def _concat_placed(placed: list[pa.Table]) -> pa.Table:
    if placed:
        return pa.concat_tables(placed)
    return pa.table({"uid": pa.array([], pa.string()), "shard": pa.array([], pa.string()),
                     "key": pa.array([], pa.string())})


def write_tar(path: str, rows: pa.Table, keys: list[str], durable: bool = True) -> str:
    """Write one shard atomically (through `core.storage`: renamed, or uploaded whole);
    returns its sha256."""
    return write_samples(path, samples_of(rows, keys), durable)


def write_samples(path: str, samples: Iterable[dict[str, Any]], durable: bool = True) -> str:
    """Write webdataset samples as one tar atomically, with fixed mtime, owner and mode (the
    same samples give the same bytes); returns the tar's sha256. The bytes are those of
    webdataset's `TarWriter(encoder=False, mtime=MTIME, user="", group="", mode=0o444)`
    (members in sorted extension order, `tarfile`'s headers), built from one header
    template instead of a `TarInfo` per member (a fifth of the time for small samples).
    `durable=False` renames it into place without an fsync: the caller syncs it (`sync_files`)
    before it records the tar as done."""
    with storage.committing(path, durable=durable) as tmp:
        with open(tmp, "wb") as stream:
            return TarStream(stream).write_all(samples)


TAR_BLOCK, TAR_RECORD = 512, 20 * 512   # tarfile's BLOCKSIZE and RECORDSIZE
TAR_BUFFER = 1 << 20   # bytes gathered before one write to the file
_NUL_BLOCK = bytes(TAR_BLOCK)


class TarStream:
    """Writes tar members as `tarfile` (its default PAX format) writes them through
    webdataset's TarWriter, hashing as it goes. A member whose name is not ASCII or longer
    than 100 bytes, or whose size needs more than 11 octal digits, gets its header from
    `tarfile` itself (a PAX header); the others are the template with name, size and
    checksum filled in."""

    def __init__(self, stream, mtime: int = MTIME, mode: int = 0o444):
        import tarfile

        self.stream, self.digest, self.offset = stream, hashlib.sha256(), 0
        self.pending: list = []
        self.pending_bytes = 0
        self.mtime, self.mode = mtime, mode
        template = bytearray(self._tarinfo("", 0).tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape"))
        template[148:156] = b" " * 8   # the checksum is summed with its own field as spaces
        self.template = bytes(template)
        self.base_sum = sum(template) - sum(template[124:136])   # without the size field

    def _tarinfo(self, name: str, size: int):
        import tarfile

        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode, info.uname, info.gname = size, self.mtime, self.mode, "", ""
        return info

    def header(self, name: str, size: int) -> bytes:
        encoded = name.encode("ascii", "replace")
        if len(encoded) > 100 or not name.isascii() or size >= 8 ** 11:
            import tarfile

            return self._tarinfo(name, size).tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape")
        size_field = b"%011o\0" % size
        checksum = self.base_sum + sum(encoded) + sum(size_field)
        template = self.template
        return b"".join((encoded, template[len(encoded):124], size_field, template[136:148],
                         b"%06o\0" % checksum, template[155:]))

    def write_sample(self, sample: dict[str, Any]) -> None:
        """One webdataset sample: `__key__` and extension -> bytes (str as UTF-8), members
        in sorted extension order; keys starting with `_` are not written."""
        if "__key__" not in sample:
            raise ValueError("object must contain a __key__")
        key, chunks = sample["__key__"], []
        for extension in sorted(sample):
            if extension[0] == "_":
                continue
            value = sample[extension]
            if isinstance(value, str):
                value = value.encode("utf-8")
            if not isinstance(value, (bytes, bytearray, memoryview)):
                raise ValueError(f"{extension} doesn't map to a bytes after encoding ({type(value)})")
            size = len(value)
            chunks.append(self.header(f"{key}.{extension}", size))
            chunks.append(value)
            if size % TAR_BLOCK:
                chunks.append(_NUL_BLOCK[size % TAR_BLOCK:])
        self.pending.extend(chunks)
        self.pending_bytes += sum(len(c) for c in chunks)
        if self.pending_bytes >= TAR_BUFFER:
            self._flush()

    def close(self) -> str:
        """The end of the archive (two zero blocks, then zeros to a whole record, as `tarfile`
        writes it); returns the tar's sha256."""
        end = self.offset + self.pending_bytes + 2 * TAR_BLOCK
        self.pending.append(bytes(2 * TAR_BLOCK + (-end) % TAR_RECORD))
        self._flush()
        return self.digest.hexdigest()

    def write_all(self, samples: Iterable[dict[str, Any]]) -> str:
        for sample in samples:
            self.write_sample(sample)
        return self.close()

    def _flush(self) -> None:
        data = b"".join(self.pending)
        self.stream.write(data)
        self.digest.update(data)
        self.offset += len(data)
        self.pending, self.pending_bytes = [], 0


def sync_files(paths: list[str], threads: int = 8) -> None:
    """fsync local files, several at once (the file system commits them together: a tenth
    of the time of one after another on a busy disk); other paths are committed already."""
    from concurrent.futures import ThreadPoolExecutor

    def sync(path: str) -> None:
        with open(path, "rb") as stream:
            os.fsync(stream.fileno())

    local = [p for p in paths if storage.is_local(p)]
    with ThreadPoolExecutor(max(1, min(threads, len(local)))) as pool:
        list(pool.map(sync, local))


def record_sha256(out_dir: str | Path, name: str, digest: str) -> None:
    """Keep a tar's sha256 beside it (`_sha256/<name>`; open_clip's brace patterns and
    listings that skip `_` names never see it), so the data card need not read the tar."""
    storage.write_text(storage.join(out_dir, SHA256_FOLDER, name), digest)


def recorded_sha256(out_dir: str | Path, name: str) -> str | None:
    try:
        return storage.read_text(storage.join(out_dir, SHA256_FOLDER, name)).strip()
    except FileNotFoundError:
        return None


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_samples(path: str) -> Iterable[dict[str, Any]]:
    """The samples of a tar as `write_samples` takes them (`__key__`, extension -> bytes), in
    their order; a member's key is its name up to the first dot (webdataset's rule)."""
    import tarfile

    with storage.open_input(path, sequential=True) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        sample: dict[str, Any] = {}
        for member in tar:
            if not member.isfile():
                continue
            key, _, extension = member.name.partition(".")
            if sample and sample["__key__"] != key:
                yield sample
                sample = {}
            sample.setdefault("__key__", key)
            sample[extension] = tar.extractfile(member).read()
        if sample:
            yield sample


def samples_of(rows: pa.Table, keys: list[str]) -> Iterable[dict[str, Any]]:
    """webdataset samples (`__key__` and extension -> bytes) of the rows."""
    meta_columns = [f.name for f in rows.schema if _is_meta(f)]
    embedding_columns = [c for c in EMBEDDING_COLUMNS if c in rows.column_names]
    images = rows[IMAGE_COLUMN].to_pylist()
    texts = rows[TEXT_COLUMN].to_pylist()
    metas = rows.select(meta_columns).to_pylist()
    embeddings = [_embedding_matrix(rows[c]) for c in embedding_columns]
    for i, (key, image, text, meta) in enumerate(zip(keys, images, texts, metas)):
        captions = meta.get(CAPTIONS_COLUMN)
        if captions is not None:   # provenance without the timings (they differ between reruns)
            meta = {**meta, CAPTIONS_COLUMN: [{k: v for k, v in c.items() if k != "seconds"} for c in captions]}
        sample = {"__key__": key, "jpg": image or b"", "txt": (text or "").encode("utf-8"),
                  "json": json_bytes({**meta, "key": key})}
        if captions:
            sample["syn.txt"] = (captions[0]["text"] or "").encode("utf-8")
        if embeddings:
            sample["npy"] = npy_bytes(np.stack([matrix[i] for matrix in embeddings]))
        yield sample


def _is_meta(field: pa.Field) -> bool:
    if field.name in (IMAGE_COLUMN, TEXT_COLUMN, *EMBEDDING_COLUMNS) or field.name.startswith("_"):
        return False
    return not (pa.types.is_binary(field.type) or pa.types.is_large_binary(field.type))


def _embedding_matrix(column: pa.ChunkedArray) -> np.ndarray:
    """A fixed-size-list (or binary float16) embedding column as a float16 matrix."""
    array = column.combine_chunks()
    if pa.types.is_fixed_size_list(array.type):
        values = array.values.to_numpy(zero_copy_only=False)
        return values.astype(np.float16, copy=False).reshape(len(array), array.type.list_size)
    return np.stack([np.frombuffer(v, np.float16) for v in array.to_pylist()])


_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def json_bytes(meta: dict[str, Any]) -> bytes:
    plain = all(type(v) in _PLAIN or (type(v) is float and math.isfinite(v)) for v in meta.values())
    return _JSON.encode(meta if plain and all(type(k) is str for k in meta) else _jsonable(meta)).encode("utf-8")


_PLAIN = (str, int, bool, type(None))   # JSON values as they are (no _jsonable needed)


def _jsonable(value: Any) -> Any:
    """Plain JSON values: NaN/inf become null, dates ISO strings, bytes hex."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    if value is None or isinstance(value, (str, int, bool)):
        return value
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def sizes_of(placed: pa.Table) -> dict[str, int]:
    """`{shard name: samples}` from what `write_shards` returned (e.g. of several parts)."""
    return dict(sorted(Counter(placed["shard"].to_pylist()).items()))


def write_sizes_json(out_dir: str | Path, sizes: dict[str, int]) -> str:
    """`sizes.json` (`{"00000.tar": n, ...}`), written atomically; replaces any old one."""
    path = storage.join(out_dir, SIZES_FILE)
    storage.write_text(path, json.dumps(dict(sorted(sizes.items())), indent=1) + "\n")
    return path
