"""Stable identities and deterministic randomness: every draw is a function of (uid, salt, seed)."""
from __future__ import annotations

import hashlib
from typing import Iterable, Optional

import numpy as np

_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


def uid_of(url: Optional[str], text: Optional[str]) -> str:
    """The pair's identity: 128-bit BLAKE2b of url and text, as 32 hex characters."""
    data = f"{url or ''}\x00{text or ''}".encode("utf-8", "surrogatepass")
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def uids_of(urls: Iterable[Optional[str]], texts: Iterable[Optional[str]]) -> list[str]:
    blake = hashlib.blake2b
    return [blake(f"{u or ''}\x00{t or ''}".encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
            for u, t in zip(urls, texts)]


def hash_strings(values: Iterable[Optional[str]]) -> list[str]:
    blake = hashlib.blake2b
    return [blake((v or "").encode("utf-8", "surrogatepass"), digest_size=16).hexdigest() for v in values]


def uid_to_u64(uids: list[str]) -> np.ndarray:
    """The first 64 bits of each hex uid, as uint64."""
    if not uids:
        return np.zeros(0, dtype=np.uint64)
    joined = "".join(u[:16].rjust(16, "0") for u in uids)
    return np.frombuffer(bytes.fromhex(joined), dtype=">u8").astype(np.uint64)


def splitmix64(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def uniform(keys: np.ndarray, salt: np.ndarray | int, seed: int) -> np.ndarray:
    """Deterministic uniform draws in [0, 1) from uint64 keys, a salt (per draw) and a seed."""
    salt = np.asarray(salt, dtype=np.uint64)
    mixed = splitmix64(splitmix64(salt ^ np.uint64(seed & 0xFFFFFFFFFFFFFFFF)) ^ keys)
    return (mixed >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def bucket_of(hex_hashes: list[str], buckets: int) -> np.ndarray:
    """A bucket in [0, buckets) from each hex hash (uses bits 64..127, independent of draws)."""
    if not hex_hashes:
        return np.zeros(0, dtype=np.int64)
    joined = "".join(h[16:32].rjust(16, "0") for h in hex_hashes)
    high = np.frombuffer(bytes.fromhex(joined), dtype=">u8").astype(np.uint64)
    return (high % np.uint64(buckets)).astype(np.int64)
