"""DataComp pools in (`input.uid_col`), `uids.npy` out, and `input.uids` in (issue 22, items 1 and 4)."""
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.core.hashing import uid_of
from pipeline.errors import UserError
from tests.support import assert_run_invariants, read_dataset, read_summary, run, write_sample

BAD_UIDS = ["ABCDEF0123456789ABCDEF0123456789", "0" * 31, "g" * 32, " " + "1" * 31, None, "1" * 33]
POOL_COLUMNS = ("uid", "url", "text", "original_width", "original_height", "clip_b32_similarity_score",
                "clip_l14_similarity_score", "sha256", "face_bboxes")


def datacomp_pool(path: Path, rows: int = 400, seed: int = 0) -> pa.Table:
    """A pool's metadata parquet as DataComp publishes it: 32-hex uids, url, text, sizes,
    precomputed CLIP scores, sha256 and face boxes. Rows 10, 20, ... carry malformed uids;
    row 7 repeats row 6's uid with another caption."""
    rng = random.Random(seed)
    uids = [f"{rng.getrandbits(128):032x}" for _ in range(rows)]
    for index, bad in zip(range(10, rows, 10), BAD_UIDS):
        uids[index] = bad
    uids[7] = uids[6]
    words = ["dog", "red", "car", "on", "the", "beach", "photo", "of", "a", "small", "house"]
    table = pa.table({
        "uid": uids,
        "url": [f"https://img{i % 13}.example.org/{i}.jpg" for i in range(rows)],
        "text": [" ".join(rng.choice(words) for _ in range(1 + i % 6)) + f" {i}" for i in range(rows)],
        "original_width": pa.array([rng.randint(64, 1024) for _ in range(rows)], pa.int64()),
        "original_height": pa.array([rng.randint(64, 1024) for _ in range(rows)], pa.int64()),
        "clip_b32_similarity_score": pa.array([rng.uniform(0.1, 0.4) for _ in range(rows)], pa.float32()),
        "clip_l14_similarity_score": pa.array([rng.uniform(0.1, 0.4) for _ in range(rows)], pa.float32()),
        "sha256": [f"{rng.getrandbits(256):064x}" for _ in range(rows)],
        "face_bboxes": pa.array([[[0.1, 0.2, 0.3, 0.4]] if i % 9 == 0 else [] for i in range(rows)],
                                pa.list_(pa.list_(pa.float64()))),
    })
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=50)
    return table


def datacomp_split(uids) -> np.ndarray:
    """DataComp's uids.npy, computed here as its apply_filter.py does: each uid as
    (int(uid[:16], 16), int(uid[16:32], 16)), dtype u8,u8, sorted."""
    array = np.array([(int(u[:16], 16), int(u[16:32], 16)) for u in uids], np.dtype("u8,u8"))
    array.sort()
    return array


def pool_config(pool: Path, output: Path, **extra) -> dict:
    config = {"input": {"path": [str(pool)], "uid_col": "uid", "part_rows": 100}, "output": str(output),
              "processes": 2, "dedup": {}, "caption_filter": {"min_chars": 5, "max_chars": 200, "min_words": 3}}
    config.update(extra)
    return config


def assert_uids_file(run_dir: Path) -> np.ndarray:
    """`uids.npy` holds exactly the kept uids, split and sorted as DataComp does."""
    written = np.load(run_dir / "uids.npy")
    kept = read_dataset(run_dir / "kept")["uid"].to_pylist()
    assert written.dtype == np.dtype("u8,u8") and written.ndim == 1
    assert np.array_equal(written, datacomp_split(kept))
    pairs = [(int(hi), int(lo)) for hi, lo in written]
    assert pairs == sorted(set(pairs)), "sorted, each uid once"
    return written


@pytest.fixture(scope="module")
def pool_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pool")
    pool = datacomp_pool(folder / "pool" / "part-00000.parquet")
    run(pool_config(folder / "pool", folder / "run"))
    return pool, folder


def test_a_pool_keeps_its_own_uids(pool_run):
    pool, folder = pool_run
    run_dir = folder / "run"
    summary = assert_run_invariants(run_dir)
    ingest, dedup = summary["stages"][0], summary["stages"][1]
    assert ingest["dropped"] == {"invalid_uid": len(BAD_UIDS)}
    assert dedup["dropped"] == {"duplicate": 1}   # row 7: row 6's uid, another caption

    ledger = read_dataset(run_dir / "ledger")
    by_url = {url: (uid, stage, reason) for uid, url, stage, reason in
              zip(*(ledger[c].to_pylist() for c in ("uid", "url", "stage", "reason")))}
    assert len(by_url) == pool.num_rows
    for uid, url, text in zip(*(pool[c].to_pylist() for c in ("uid", "url", "text"))):
        if uid in BAD_UIDS:   # dropped at ingest, known by the hash of its url and text
            assert by_url[url] == (uid_of(url, text), "ingest", "invalid_uid")
        else:
            assert by_url[url][0] == uid, "the pool's uid, never re-hashed"

    kept = read_dataset(run_dir / "kept")
    assert set(POOL_COLUMNS) <= set(kept.column_names), "the pool's columns keep their names"
    assert not any(c.startswith("input_") or c.startswith("_") for c in kept.column_names)
    pool_rows = {row["url"]: row for row in pool.to_pylist()}
    assert kept.num_rows > 0
    for row in kept.to_pylist():
        source = pool_rows[row["url"]]
        assert {k: row[k] for k in POOL_COLUMNS} == {k: source[k] for k in POOL_COLUMNS}
    index = read_dataset(run_dir / "index")
    assert sorted(index["uid"].to_pylist()) == sorted(kept["uid"].to_pylist())
    assert_uids_file(run_dir)
    assert not (run_dir / "_uids").exists(), "the finalize tasks' shares are removed"


def test_pool_columns_named_as_download_outputs_are_renamed_when_it_runs(pool_run, tmp_path):
    from pipeline.app import build_steps
    from pipeline.config import settings_from_dict
    from pipeline.stages.ingest import ReadSource, plan_input

    _, folder = pool_run
    settings = settings_from_dict(pool_config(folder / "pool", tmp_path / "run", download={}), "test.yaml")
    planned = plan_input(settings.input)
    steps, _ = build_steps(settings, planned=planned)
    table = ReadSource(planned[0], "url", "text", 0, steps[0].reserved, "uid")()
    assert {"input_sha256", "input_original_width", "input_original_height"} <= set(table.column_names)
    assert "input_uid" not in table.column_names and "uid" not in table.column_names
    assert "clip_b32_similarity_score" in table.column_names


def test_input_uids_round_trip(pool_run, tmp_path):
    pool, folder = pool_run
    first = np.load(folder / "run" / "uids.npy")
    # the whole pool restricted to the first run's uids.npy, without any filter
    config = pool_config(folder / "pool", tmp_path / "again")
    del config["caption_filter"]
    config["input"]["uids"] = str(folder / "run" / "uids.npy")
    summary = run(config)
    assert_run_invariants(tmp_path / "again")
    assert np.array_equal(assert_uids_file(tmp_path / "again"), first)
    kept = read_dataset(tmp_path / "again" / "kept")
    assert sorted(kept["uid"].to_pylist()) == sorted(read_dataset(folder / "run" / "kept")["uid"].to_pylist())
    held = {f"{int(hi):016x}{int(lo):016x}" for hi, lo in first}
    valid = [u for u in pool["uid"].to_pylist() if u not in BAD_UIDS]
    assert summary["stages"][0]["dropped"] == {"invalid_uid": len(BAD_UIDS),
                                               "not_in_uids": sum(u not in held for u in valid)}
    ledger = read_dataset(tmp_path / "again" / "ledger")
    outside = ledger.filter(pc.equal(ledger["reason"], "not_in_uids"))["uid"].to_pylist()
    assert outside and not set(outside) & held


def test_uids_npy_of_a_text_run_and_of_an_empty_one(tmp_path):
    """Our own uids (BLAKE2b of url and text) are 32 hex digits: every run writes them."""
    sample = write_sample(tmp_path / "in" / "sample.parquet", rows=1200)
    config = {"input": {"path": [str(sample)], "part_rows": 300}, "output": str(tmp_path / "text"),
              "processes": 2, "dedup": {}, "caption_filter": {"min_chars": 5, "max_chars": 200, "min_words": 2}}
    run(config)
    assert_run_invariants(tmp_path / "text")
    assert len(assert_uids_file(tmp_path / "text")) == read_summary(tmp_path / "text")["kept_rows"] > 0

    np.save(tmp_path / "none.npy", np.zeros(0, np.dtype("u8,u8")))
    empty = dict(config, output=str(tmp_path / "empty"), input={**config["input"], "uids": str(tmp_path / "none.npy")})
    summary = run(empty)
    assert summary["kept_rows"] == 0
    assert_run_invariants(tmp_path / "empty")
    written = np.load(tmp_path / "empty" / "uids.npy")
    assert written.shape == (0,) and written.dtype == np.dtype("u8,u8")


def test_missing_uid_column_is_one_line(pool_run, tmp_path):
    _, folder = pool_run
    config = pool_config(folder / "pool", tmp_path / "run")
    config["input"]["uid_col"] = "key"
    with pytest.raises(UserError, match="missing column 'key'"):
        run(config)
    assert not (tmp_path / "run").exists()


def test_malformed_uids_files_are_one_line_through_the_cli(pool_run, tmp_path):
    _, folder = pool_run
    good = np.load(folder / "run" / "uids.npy")
    files = {
        "dtype": (good.astype("u8,i8"), "dtype"),
        "plain": (np.arange(5, dtype=np.uint64), "dtype <u8, expected u8,u8"),
        "unsorted": (good[::-1], "not sorted"),
        "duplicates": (np.concatenate([good[:3], good[2:]]), "appears twice"),
    }
    for name, (array, _) in files.items():
        np.save(tmp_path / f"{name}.npy", array)
    (tmp_path / "text.npy").write_text("\n".join(f"{int(h):016x}{int(l_):016x}" for h, l_ in good[:5]))
    files["text"] = (None, "not a .npy file")
    for name, (_, message) in files.items():
        output = tmp_path / f"out-{name}"
        config = pool_config(folder / "pool", output)
        config["input"]["uids"] = str(tmp_path / f"{name}.npy")
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        result = subprocess.run([sys.executable, "-m", "pipeline", "run", str(path)], capture_output=True,
                                text=True, timeout=300)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2, (name, result.stderr)
        assert len(lines) == 1 and "Traceback" not in result.stderr + result.stdout, result.stderr
        assert f"input.uids: {tmp_path / f'{name}.npy'}: " in lines[0] and message in lines[0], lines[0]
        assert not output.exists(), "refused before the output folder is made"


def test_uids_npy_on_an_object_store(pool_run):
    """A run folder without rename (memory://, as S3): the shares are fetched, merged and the
    file uploaded whole; the shares are gone after."""
    import io

    from pipeline.core import storage

    _, folder = pool_run
    run(pool_config(folder / "pool", "memory://datacomp/run"))
    written = np.load(io.BytesIO(storage.read_bytes("memory://datacomp/run/uids.npy")))
    assert np.array_equal(written, np.load(folder / "run" / "uids.npy"))
    assert storage.list_names("memory://datacomp/run/_uids") == []
