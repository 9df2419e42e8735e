"""uids.npy in DataComp's format: halves, per-part shares, the k-way merge, checks, membership."""
import random
import re

import numpy as np
import pytest

from pipeline.core import uid_arrays
from pipeline.core.uid_arrays import UID_DTYPE, UidSubset, check_file, halves, merge_parts, write_part
from pipeline.errors import UserError


def datacomp_array(uids) -> np.ndarray:
    """As DataComp's apply_filter.py: (int(uid[:16], 16), int(uid[16:32], 16)), sorted."""
    array = np.array([(int(u[:16], 16), int(u[16:32], 16)) for u in uids], np.dtype("u8,u8"))
    array.sort()
    return array


def random_uids(rng: random.Random, count: int) -> list[str]:
    return [f"{rng.getrandbits(128):032x}" for _ in range(count)]


def test_halves_split_a_uid_as_datacomp_does():
    uids = ["0123456789abcdef" "fedcba9876543210", "f" * 32, "0" * 32]
    hi, lo = halves(uids)
    assert [(int(h), int(l_)) for h, l_ in zip(hi, lo)] == [divmod(int(u, 16), 2 ** 64) for u in uids]
    for bad in ("A" * 32, "0" * 31, "0" * 33, "g" * 32, None):
        with pytest.raises(ValueError):
            halves(["0" * 32, bad])


@pytest.mark.parametrize("budget", [1, 64, 1 << 20])
def test_merge_is_sorted_unique_across_parts(tmp_path, monkeypatch, budget):
    monkeypatch.setattr(uid_arrays, "MIN_BLOCK", 3)   # many rounds, partial buffers
    rng = random.Random(budget)
    pool = random_uids(rng, 3000) + [f"{0:016x}{i:016x}" for i in range(40)]   # equal upper halves
    files, counts, every = [], [], set()
    for part in range(23):
        uids = rng.sample(pool, rng.randint(0, 400)) if part != 5 else []
        files.append(str(tmp_path / f"part-{part}.u8u8"))
        counts.append(write_part(uids, files[-1]))
        every |= set(uids)
        assert counts[-1] == len(set(uids))
    target = tmp_path / "uids.npy"
    assert merge_parts(files, counts, str(target), budget_rows=budget) == len(every)
    merged = np.load(target)
    assert merged.dtype == np.dtype("u8,u8")
    assert np.array_equal(merged, datacomp_array(sorted(every)))
    assert check_file(str(target)) == len(every)


def test_merge_of_nothing_is_an_empty_array(tmp_path):
    target = tmp_path / "uids.npy.tmp"   # any name: np.save must not add `.npy`
    assert merge_parts([str(tmp_path / "a")], [0], str(target)) == 0
    empty = np.load(target)
    assert empty.shape == (0,) and empty.dtype == UID_DTYPE


def test_check_file_finds_problems_across_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(uid_arrays, "CHECK_ROWS", 4)
    good = datacomp_array(random_uids(random.Random(0), 10))
    cases = {
        "unsorted": (np.concatenate([good[:4], good[2:3], good[5:]]), "not sorted (row 4 is below row 3)"),
        "duplicate": (np.concatenate([good[:4], good[3:4], good[4:]]), "appears twice (rows 3 and 4)"),
        "dtype": (good.astype("u8,i8"), "dtype"),
        "plain": (np.arange(4, dtype=np.uint64), "dtype <u8"),
        "shape": (good.reshape(2, 5), "one dimension"),
    }
    np.save(tmp_path / "good.npy", good)
    assert check_file(str(tmp_path / "good.npy")) == 10
    for name, (array, message) in cases.items():
        np.save(tmp_path / f"{name}.npy", array)
        with pytest.raises(UserError, match=re.escape(message)):
            check_file(str(tmp_path / f"{name}.npy"))
    (tmp_path / "text.npy").write_text("0123\n")
    with pytest.raises(UserError, match="not a .npy file"):
        check_file(str(tmp_path / "text.npy"))
    with pytest.raises(UserError, match="no such file"):
        check_file(str(tmp_path / "missing.npy"))
    data = (tmp_path / "good.npy").read_bytes()
    (tmp_path / "short.npy").write_bytes(data[:-8])
    with pytest.raises(UserError, match="truncated"):
        check_file(str(tmp_path / "short.npy"))


def test_subset_membership(tmp_path):
    rng = random.Random(1)
    held = random_uids(rng, 500) + [f"{7:016x}{i:016x}" for i in range(0, 40, 2)]
    np.save(tmp_path / "uids.npy", datacomp_array(held))
    subset = UidSubset(str(tmp_path / "uids.npy"))
    assert len(subset) == len(held)
    asked = held[::3] + random_uids(rng, 200) + [f"{7:016x}{i:016x}" for i in range(40)] + ["f" * 32, "0" * 32]
    assert subset.contains(*halves(asked)).tolist() == [u in set(held) for u in asked]
    np.save(tmp_path / "empty.npy", np.zeros(0, UID_DTYPE))
    assert not UidSubset(str(tmp_path / "empty.npy")).contains(*halves(asked)).any()


def test_merge_of_parts_whose_ranges_are_apart(tmp_path, monkeypatch):
    """A pool sorted by uid: each part's uids in a range of its own (one round per block)."""
    monkeypatch.setattr(uid_arrays, "MIN_BLOCK", 2)
    every = []
    files, counts = [], []
    for part in reversed(range(12)):
        uids = [f"{part:016x}{row:016x}" for row in range(0, 30, 1 + part % 3)]
        every += uids
        files.append(str(tmp_path / f"part-{part}.u8u8"))
        counts.append(write_part(uids, files[-1]))
    assert merge_parts(files, counts, str(tmp_path / "uids.npy"), budget_rows=8) == len(every)
    assert np.array_equal(np.load(tmp_path / "uids.npy"), datacomp_array(every))
