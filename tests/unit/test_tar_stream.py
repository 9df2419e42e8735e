"""The tar writer (`shards.TarStream`) writes exactly the bytes of webdataset's TarWriter."""
from __future__ import annotations

import hashlib
import io
import random

import pytest
import webdataset as wds

from pipeline.shards import TarStream


def tarwriter_bytes(samples) -> bytes:
    out = io.BytesIO()
    writer = wds.TarWriter(out, encoder=False, mtime=0, user="", group="", mode=0o444)
    for sample in samples:
        writer.write(sample)
    writer.close()
    return out.getvalue()


def random_samples(rng: random.Random, count: int) -> list[dict]:
    samples = []
    for i in range(count):
        sample = {"__key__": f"{i:09d}", "jpg": rng.randbytes(rng.randrange(0, 3000)),
                  "txt": ("é caption " * rng.randrange(0, 5)).encode(), "json": b"{}",
                  "syn.txt": b"x" * rng.randrange(0, 1025), "npy": rng.randbytes(512)}
        if rng.random() < 0.1:
            sample["__key__"] = "k" * rng.randrange(90, 120)   # long names: a PAX header
        if rng.random() < 0.1:
            sample["__key__"] = f"ключ{i}"                     # not ASCII: a PAX header
        if rng.random() < 0.1:
            sample["_internal"] = b"not written"
        samples.append(sample)
    return samples


@pytest.mark.parametrize("count", [0, 1, 7, 60])
def test_same_bytes_as_tarwriter(count):
    samples = random_samples(random.Random(count), count)
    out = io.BytesIO()
    digest = TarStream(out).write_all(samples)
    assert out.getvalue() == tarwriter_bytes(samples)
    assert digest == hashlib.sha256(out.getvalue()).hexdigest()
    assert len(out.getvalue()) % (20 * 512) == 0


def test_rejects_what_is_not_bytes():
    with pytest.raises(ValueError, match="jpg"):
        TarStream(io.BytesIO()).write_sample({"__key__": "1", "jpg": 3})
    with pytest.raises(ValueError, match="__key__"):
        TarStream(io.BytesIO()).write_sample({"jpg": b""})
