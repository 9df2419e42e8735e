"""semantic_dedup's pieces on embeddings built here: near-copies collapse, keep policies."""
import numpy as np
import pyarrow as pa
import pytest

from pipeline.stages.semantic_dedup import (
    SemanticDedupSettings,
    auto_clusters,
    cluster_duplicates,
    example_pairs,
    greedy_duplicates,
    keep_order,
    nearest_centroid,
    train_centroids,
)


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def groups_of_near_copies(groups=20, copies=4, dim=32, spread=0.01, seed=0):
    """`groups` random directions, each with `copies` near-copies (cos ~ 1 - spread**2 d / 2)."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.normal(size=(groups, dim)))
    x = unit(np.repeat(centres, copies, axis=0) + spread * rng.normal(size=(groups * copies, dim)))
    return x.astype(np.float32), np.repeat(np.arange(groups), copies)


def run_clusters(x, settings, seed=0, k=4):
    centroids = train_centroids(x, k, seed)
    cluster, sim = nearest_centroid(x, centroids)
    uids = [f"{i:032x}" for i in range(len(x))]
    of, _ = cluster_duplicates(x, cluster, sim, uids, np.arange(len(x)), settings, seed)
    return of >= 0, cluster, sim


def test_near_copies_collapse_to_one_per_group_distinct_points_survive():
    x, group = groups_of_near_copies()
    assert (x[0] @ x[1]) > 0.99   # near-copies
    dup, cluster, _ = run_clusters(x, SemanticDedupSettings(eps=0.05))
    kept_groups = group[~dup]
    assert sorted(kept_groups) == list(range(20)), "exactly one survivor per group"
    # distinct random directions (cos well below 0.95) all survive on their own
    rng = np.random.default_rng(3)
    y = unit(rng.normal(size=(50, 32))).astype(np.float32)
    assert (y @ y.T - np.eye(50)).max() < 0.95
    assert not run_clusters(y, SemanticDedupSettings(eps=0.05))[0].any()


def test_eps_zero_drops_only_identical_embeddings():
    x, _ = groups_of_near_copies(groups=5, copies=3)
    x = np.concatenate([x, x[:2]])
    dup, _, _ = run_clusters(x, SemanticDedupSettings(eps=0.0), k=2)
    assert dup.sum() == 2


def test_keep_policy_hard_keeps_farthest_easy_nearest_random_by_uid():
    x, group = groups_of_near_copies(groups=6, copies=5, spread=0.02)
    for keep in ("hard", "easy"):
        dup, cluster, sim = run_clusters(x, SemanticDedupSettings(eps=0.05, keep=keep), k=3)
        for g in range(6):
            members = np.flatnonzero(group == g)
            kept = members[~dup[members]]
            assert len(kept) == 1
            if len(set(cluster[members])) == 1:
                expected = members[np.argmin(sim[members])] if keep == "hard" else members[np.argmax(sim[members])]
                assert kept[0] == expected, keep
    a = run_clusters(x, SemanticDedupSettings(keep="random"), seed=1, k=3)[0]
    b = run_clusters(x, SemanticDedupSettings(keep="random"), seed=1, k=3)[0]
    c = run_clusters(x, SemanticDedupSettings(keep="random"), seed=2, k=3)[0]
    assert (a == b).all() and a.sum() == c.sum() == 24
    assert (a != c).any(), "another seed keeps other copies"


def test_keep_order_ties_broken_by_uid_then_position():
    sim = np.array([0.5, 0.5, 0.2])
    assert keep_order(sim, ["b" * 32, "a" * 32, "c" * 32], np.array([0, 1, 2]), "hard", 0).tolist() == [2, 1, 0]
    assert keep_order(sim, ["b" * 32, "a" * 32, "c" * 32], np.array([0, 1, 2]), "easy", 0).tolist() == [1, 0, 2]


def test_greedy_compares_with_kept_rows_only_across_blocks():
    # a chain a - b - c: b close to a and c, a and c apart: a kept, b dropped, c kept
    a = np.array([1.0, 0.0])
    c = unit(np.array([0.90, 0.436]))
    b = unit(a + c)
    x = np.stack([a, b, c]).astype(np.float32)
    thr = 0.97
    assert x[0] @ x[1] >= thr and x[1] @ x[2] >= thr and x[0] @ x[2] < thr
    for block in (1, 2, 1024):
        of, sim = greedy_duplicates(x, thr, block=block)
        assert of.tolist() == [-1, 0, -1], "b duplicates a, the kept row before it"
        assert abs(sim[1] - x[0] @ x[1]) < 1e-6


def test_each_duplicate_names_a_kept_row_of_its_group():
    x, group = groups_of_near_copies()
    centroids = train_centroids(x, 4, 0)
    cluster, sim = nearest_centroid(x, centroids)
    uids = [f"{i:032x}" for i in range(len(x))]
    of, similarity = cluster_duplicates(x, cluster, sim, uids, np.arange(len(x)), SemanticDedupSettings(eps=0.05), 0)
    dup = np.flatnonzero(of >= 0)
    assert len(dup) == 60 and (of[of[dup]] == -1).all(), "each names a kept row"
    assert (group[of[dup]] == group[dup]).all() and (similarity[dup] >= 0.95).all()
    pairs = example_pairs(uids, of, similarity, 5)
    assert pairs["removed"].tolist() == sorted(uids[i] for i in dup)[:5]
    assert [uids.index(k) for k in pairs["kept"]] == [of[uids.index(r)] for r in pairs["removed"]]


def test_centroids_deterministic_and_auto_clusters():
    x, _ = groups_of_near_copies(groups=30, copies=10)
    assert np.array_equal(train_centroids(x, 8, 7), train_centroids(x, 8, 7))
    assert auto_clusters(1000, 1000) == 10
    assert auto_clusters(10_000_000, 100_000) == 1000
    assert auto_clusters(400_000_000, 100_000) == 100_000 // 39
    assert auto_clusters(3, 3) == 1


@pytest.mark.parametrize("values, message", [({"eps": 1.0}, "eps"), ({"keep": "first"}, "keep"),
                                             ({"clusters": -1}, "clusters")])
def test_bad_settings_are_one_clear_error(values, message):
    from pipeline.errors import UserError
    from pipeline.stages.semantic_dedup import SemanticDedupStep

    with pytest.raises(UserError, match=message):
        SemanticDedupStep(SemanticDedupSettings(**values))


def embedding_table(x, uids=None):
    from pipeline.clip.embeddings import embedding_array

    uids = uids or [f"{i:032x}" for i in range(len(x))]
    return pa.table({"uid": pa.array(uids, pa.string()), "_pos": pa.array(np.arange(len(x), dtype=np.int64)),
                     "image_embedding": embedding_array(x)})


@pytest.mark.parametrize("rows", [0, 1, 7])
def test_phase_ops_on_tiny_and_empty_tables(tmp_path, rows):
    """sample -> scatter -> reduce ops by hand: no row lost, none added, empty tables pass."""
    from pipeline.core import storage
    from pipeline.core.tasks import part_path
    from pipeline.stages.semantic_dedup import AssignClusters, DropSemanticDuplicates, TrainKMeans

    x, _ = groups_of_near_copies(groups=7, copies=1, dim=8)
    table = embedding_table(x[:rows])
    uids, extras = TrainKMeans(3, 0, 5)(table)
    assert uids.num_rows == rows and extras["centroids"].shape[1] == 8
    sample_dir = str(tmp_path / "sample")
    with storage.committing(part_path(sample_dir, "done", 0, ".npz")) as tmp, open(tmp, "wb") as out:
        np.savez(out, **extras)
    assigned = AssignClusters(sample_dir)(table)
    reduced, examples = DropSemanticDuplicates(SemanticDedupSettings(), 0)(assigned)
    assert not examples and reduced.num_rows == rows and "_index_embedding" in reduced.column_names
    assert reduced["_reason"].null_count == rows   # distinct points: none dropped


def test_sample_is_the_same_for_any_split_of_the_rows(tmp_path):
    import pyarrow.parquet as pq

    from pipeline.stages.semantic_dedup import ReadSample

    x, _ = groups_of_near_copies(groups=50, copies=2, dim=8)
    uids = [f"{i * 7919:032x}"[::-1] for i in range(len(x))]
    table = embedding_table(x, uids)
    pq.write_table(table, tmp_path / "one.parquet")
    for i in range(4):
        pq.write_table(table.slice(i * 25, 25), tmp_path / f"p{i}.parquet")
    one = ReadSample([str(tmp_path / "one.parquet")], 30, seed=3)()
    four = ReadSample([str(tmp_path / f"p{i}.parquet") for i in range(4)], 30, seed=3)()
    other_seed = ReadSample([str(tmp_path / "one.parquet")], 30, seed=4)()
    assert one.num_rows == 30 and one["uid"].to_pylist() == four["uid"].to_pylist()
    assert set(one["uid"].to_pylist()) != set(other_seed["uid"].to_pylist())


def test_pick_keeps_the_same_rows_for_any_split_and_holds_the_sample(tmp_path):
    """`pick` runs per group of parts: what it keeps depends on the rows, not the split, and
    holds the `sample_rows` smallest hashes, so the sample equals one read of every row."""
    import pyarrow.parquet as pq

    from pipeline.stages.semantic_dedup import ReadPicked, ReadSample, sample_cut

    x, _ = groups_of_near_copies(groups=500, copies=2, dim=8)
    uids = [f"{i * 7919:032x}"[::-1] for i in range(len(x))]
    table = embedding_table(x, uids)
    pq.write_table(table, tmp_path / "all.parquet")
    for i in range(4):
        pq.write_table(table.slice(i * 250, 250), tmp_path / f"p{i}.parquet")
    cut = sample_cut(len(x), 100)
    whole = ReadPicked([str(tmp_path / "all.parquet")], cut, seed=3)()
    pieces = [ReadPicked([str(tmp_path / f"p{i}.parquet")], cut, seed=3)() for i in range(4)]
    assert sorted(whole["uid"].to_pylist()) == sorted(u for p in pieces for u in p["uid"].to_pylist())
    assert 100 < whole.num_rows < 160, "about 1.2 x the sample"
    pq.write_table(whole, tmp_path / "picked.parquet")
    assert (ReadSample([str(tmp_path / "picked.parquet")], 100, 3)()["uid"].to_pylist()
            == ReadSample([str(tmp_path / "all.parquet")], 100, 3)()["uid"].to_pylist())
    assert sample_cut(50, 100) == (1 << 64) - 1
