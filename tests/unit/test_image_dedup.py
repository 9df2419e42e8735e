import hashlib
import io
import itertools
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image, ImageDraw

from pipeline.errors import UserError
from pipeline.stages.image_dedup import ImageDedupStage
from pipeline.stages.phash_lsh import SHA_BAND, band_keys, band_masks, later_duplicates, phash_of


def scene(seed: int, size: int = 128) -> Image.Image:
    """A smooth, structured picture (waves and discs), distinct per seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    a, b, c = rng.uniform(-3, 3, 3)
    rgb = np.stack([np.sin(9 * (a * x + b * y) + c), np.cos(b * x * 4 - a * y), np.sin(c * x * y * 6)], -1)
    image = Image.fromarray(((rgb + 1) * 127).astype("uint8"))
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x0, y0 = rng.integers(0, size - 30, 2)
        draw.ellipse((x0, y0, x0 + rng.integers(10, 30), y0 + rng.integers(10, 30)),
                     fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    return image


def encode(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def variants(image: Image.Image) -> list[bytes]:
    """Re-encodings and slight resizes: near duplicates of `image`."""
    return [encode(image, 60), encode(image.resize((120, 120))), encode(image.resize((112, 112)), 70),
            encode(image.resize((124, 124)), 80), encode(image.resize((136, 136)), 85)]


def distance(a: bytes, b: bytes) -> int:
    return bin(phash_of(a) ^ phash_of(b)).count("1")


def rows(images: list[bytes], positions: list[int]) -> pa.Table:
    return pa.table({
        "uid": [f"u{p}" for p in positions], "url": [f"http://h/{p}.jpg" for p in positions],
        "_pos": pa.array(positions, pa.int64()),
        "sha256": [hashlib.sha256(j).hexdigest() for j in images],
        "jpg": pa.array(images, pa.binary())})


def dropped_positions(table: pa.Table, phash_distance: int) -> set:
    out = ImageDedupStage(SimpleNamespace(phash_distance=phash_distance)).process(table)
    assert out.num_rows == table.num_rows and "phash" in out.column_names
    return {p for p, r in zip(out["_pos"].to_pylist(), out["_reason"].to_pylist()) if r is not None}


def test_exact_duplicates_keep_the_earliest_position():
    a, b = encode(scene(1)), encode(scene(2))
    table = rows([a, b, a, a, b], [50, 7, 3, 90, 60])
    assert dropped_positions(table, 0) == {50, 90, 60}


def test_near_duplicates_dropped_distinct_images_kept():
    originals = [scene(s) for s in range(8)]
    images = [encode(o) for o in originals] + [v for o in originals[:3] for v in variants(o)]
    assert all(distance(x, y) > 8 for x, y in itertools.combinations(images[:8], 2))
    assert all(distance(images[i // 5], images[8 + i]) <= 4 for i in range(15))
    positions = list(range(100, 108)) + list(range(200, 215))
    assert dropped_positions(rows(images, positions), 4) == set(range(200, 215))
    # a variant that comes first is the one kept; its original is then the duplicate
    positions = list(range(100, 108)) + [1] + list(range(201, 215))
    assert dropped_positions(rows(images, positions), 4) == {100} | set(range(201, 215))


def test_distance_zero_drops_only_identical_hashes():
    original = scene(3)
    near = [v for v in variants(original) if distance(encode(original), v) > 0]
    assert near, "expected a variant whose hash differs by a few bits"
    table = rows([encode(original), near[0], encode(original)], [1, 2, 3])
    assert dropped_positions(table, 0) == {3}
    assert dropped_positions(table, 4) == {2, 3}


def test_undecodable_image_kept_with_null_phash_unless_exact_copy():
    junk = b"not a jpeg"
    table = rows([junk, encode(scene(4)), junk], [1, 2, 3])
    out = ImageDedupStage(SimpleNamespace(phash_distance=2)).process(table)
    assert out["_reason"].to_pylist() == [None, None, "duplicate_image"]
    assert out["phash"][0].as_py() is None and len(out["phash"][1].as_py()) == 16


def brute_force(band, key, value, pos, d):
    """Reference: the earlier-duplicate flag by comparing every pair of every group."""
    found = np.zeros(len(pos), bool)
    for i, j in itertools.permutations(range(len(pos)), 2):
        if band[i] == band[j] and key[i] == key[j] and pos[i] < pos[j]:
            same = value[i] == value[j]
            near = band[i] != SHA_BAND and bin(int(value[i] ^ value[j])).count("1") <= d
            found[j] |= bool(same or near)
    return found


@pytest.mark.parametrize("d", [0, 3, 7])
def test_lsh_matches_brute_force_on_planted_near_duplicates(d):
    rng = np.random.default_rng(d)
    base = rng.integers(0, 2**63, 60, dtype=np.int64).astype(np.uint64) << np.uint64(1)
    flips = [np.uint64(sum(1 << int(b) for b in rng.choice(64, int(rng.integers(0, d + 3)), replace=False)))
             for _ in range(60)]
    hashes = np.concatenate([base, base ^ np.array(flips, np.uint64)])
    pos = rng.permutation(len(hashes)).astype(np.int64)
    rows_, band, value = band_keys(hashes, d)
    key, full = value, hashes[rows_]
    expected = brute_force(band, key, full, pos[rows_], d)
    for chunk in (1 << 22, 3):  # also through many small comparison chunks
        assert (later_duplicates(band, key, full, pos[rows_], d, chunk) == expected).all()
    # per hash: dropped iff an earlier hash is within d bits (pigeonhole: no pair missed)
    per_hash = np.zeros(len(hashes), bool)
    np.logical_or.at(per_hash, rows_, expected)
    near = [any(pos[i] < pos[j] and bin(int(hashes[i] ^ hashes[j])).count("1") <= d
                for i in range(len(hashes))) for j in range(len(hashes))]
    assert per_hash.tolist() == near and any(near)


def test_bands_partition_the_hash():
    for d in (0, 1, 4, 7, 63):
        masks = band_masks(d)
        assert len(masks) == d + 1
        covered = [int(mask) << shift for shift, mask in masks]
        assert sum(covered) == 2**64 - 1 and all(a & b == 0 for a, b in itertools.combinations(covered, 2))
    with pytest.raises(UserError):
        band_masks(64)
