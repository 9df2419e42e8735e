"""The run index and the pieces that exclude earlier runs with it."""
import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core.run_index import KeySet, earlier_files, index_table, read_column
from pipeline.errors import UserError
from pipeline.stages.dedup import ReadExcluding, ScatterUids, drop_duplicates
from pipeline.stages.phash_lsh import SHA_BAND, matches_earlier
from pipeline.stages.shard import ShardSettings, first_index


def sha(i) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def test_key_set_finds_exactly_its_keys():
    keys = KeySet([sha(i) for i in range(0, 100, 2)] + [None, ""])
    assert len(keys) == 50
    found = keys.contains([sha(i) for i in range(100)] + [None])
    assert found.tolist() == [i % 2 == 0 for i in range(100)] + [False]
    assert not KeySet([]).contains([sha(1)]).any() and len(KeySet([]).contains([])) == 0


def test_index_table_has_null_columns_for_stages_that_did_not_run(tmp_path):
    table = index_table(pa.table({"uid": ["a", "b"], "text": ["x", "y"], "sha256": [sha(1), None]}))
    assert table.column_names == ["uid", "sha256", "phash", "pdq", "pdq_quality"] and table["phash"].null_count == 2
    pq.write_table(table, tmp_path / "part-0.parquet")
    pq.write_table(pa.table({"uid": ["c"]}), tmp_path / "part-1.parquet")   # no sha256 column
    files = [str(tmp_path / "part-0.parquet"), str(tmp_path / "part-1.parquet")]
    assert read_column(files, "sha256").to_pylist() == [sha(1)]
    assert read_column(files, "uid").to_pylist() == ["a", "b", "c"]


def test_earlier_files_need_a_finished_run(tmp_path):
    (tmp_path / "old" / "kept").mkdir(parents=True)      # a run from before the index
    pq.write_table(pa.table({"uid": ["a"]}), tmp_path / "old" / "kept" / "part-00000.parquet")
    (tmp_path / "new" / "index").mkdir(parents=True)
    pq.write_table(index_table(pa.table({"uid": ["b"]})), tmp_path / "new" / "index" / "part-00000.parquet")
    files = earlier_files([str(tmp_path / "old"), str(tmp_path / "new")])
    assert [f.split("/")[-3] for f in files] == ["old", "new"]
    with pytest.raises(UserError, match="not a finished run"):
        earlier_files([str(tmp_path / "missing")])
    with pytest.raises(UserError, match="own folder"):
        earlier_files([str(tmp_path / "new")], run_dir=str(tmp_path / "new"))


def brute_force(band, key, value, old_band, old_key, old_value, distance):
    out = []
    for b, k, v in zip(band, key, value):
        limit = 0 if b == SHA_BAND else distance
        out.append(any(ob == b and ok == k and bin(int(v) ^ int(ov)).count("1") <= limit
                       for ob, ok, ov in zip(old_band, old_key, old_value)))
    return out


@pytest.mark.parametrize("distance", [0, 3])
def test_matches_earlier_compares_only_with_earlier_rows(distance):
    rng = np.random.default_rng(distance)
    def rows(n):
        band = rng.integers(-1, 3, n).astype(np.int8)
        key = rng.integers(0, 4, n).astype(np.uint64)
        value = rng.integers(0, 1 << 8, n).astype(np.uint64)   # few bits: many near pairs
        return band, key, value
    new, old = rows(300), rows(120)
    found = matches_earlier(*new, *old, distance, chunk_pairs=64)
    assert found.tolist() == brute_force(*new, *old, distance)
    assert 0 < found.sum() < len(found)
    # equal rows of this run alone never match: only earlier rows count
    assert not matches_earlier(*new, *(a[:0] for a in old), distance).any()


def test_dedup_reduce_drops_earlier_uids_before_duplicates(tmp_path):
    uids = ["0" * 31 + str(i) for i in range(4)]
    earlier = ScatterUids(3)(pa.table({"uid": [uids[1], "f" * 32]}))
    pq.write_table(earlier, tmp_path / "earlier.parquet")
    rows = pa.table({"uid": [uids[0], uids[1], uids[1], uids[2]], "url": list("abcd"),
                     "_pos": pa.array([0, 1, 2, 3], pa.int64()), "_key": [uids[0], uids[1], uids[1], uids[2]],
                     "_bucket": pa.array([0, 0, 0, 0], pa.int64())})
    pq.write_table(rows, tmp_path / "rows.parquet")
    table = ReadExcluding([str(tmp_path / "rows.parquet")], [str(tmp_path / "earlier.parquet")])()
    assert table.num_rows == 4   # the earlier uids are not rows of this task
    assert drop_duplicates(table)["_reason"].to_pylist() == [None, "in_earlier_run", "in_earlier_run", None]


def write_sizes(folder, names):
    (folder / "shards").mkdir(parents=True)
    (folder / "shards" / "sizes.json").write_text(json.dumps({n: 3 for n in names}))


def test_first_shard_index_continues_after_the_excluded_runs(tmp_path):
    write_sizes(tmp_path / "r1", ["00000.tar", "00001.tar"])
    write_sizes(tmp_path / "r2", ["00002.tar", "00003.tar", "00004.tar"])
    runs = [str(tmp_path / "r2"), str(tmp_path / "r1"), str(tmp_path / "no-shards")]
    assert first_index(ShardSettings(start_index="auto"), runs) == 5
    assert first_index(ShardSettings(start_index="auto"), []) == 0
    assert first_index(ShardSettings(start_index=7), runs) == 7
    with pytest.raises(UserError, match="start_index"):
        first_index(ShardSettings(start_index=-1), [])


def test_start_index_in_config(tmp_path):
    from pipeline.config import settings_from_dict

    settings = settings_from_dict({"shard": {"start_index": "auto"}, "exclude": "runs/a"}, "c.yaml")
    assert settings.shard.start_index == "auto" and settings.exclude == ["runs/a"]
    assert settings_from_dict({"shard": {"start_index": 13}}, "c.yaml").shard.start_index == 13
    with pytest.raises(UserError, match="shard.start_index"):
        settings_from_dict({"shard": {"start_index": "next"}}, "c.yaml")
