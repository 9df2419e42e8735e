"""A DataComp pool's `.npz` embeddings in (`input.embeddings`), and the `image_based` stage
(DataComp's image-based baseline) on them (issue 22)."""
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.errors import UserError
from tests.integration.test_datacomp_pool import BAD_UIDS, datacomp_pool
from tests.support import assert_run_invariants, read_dataset, read_summary, run

WIDTHS = {"b32_img": 512, "b32_txt": 512, "l14_img": 768, "l14_txt": 768}


def unit_rows(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((rows, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


def pool_with_embeddings(path: Path, rows: int = 400, seed: int = 0, compressed: bool = False,
                         arrays: dict = None) -> tuple[pa.Table, dict]:
    """`datacomp_pool`'s parquet (urls under the file's stem) and, beside it, its npz of
    row-aligned float16 arrays."""
    table = datacomp_pool(path, rows, seed)
    urls = [url.replace(".example.org/", f".example.org/{path.stem}/") for url in table["url"].to_pylist()]
    table = table.set_column(table.schema.get_field_index("url"), "url", pa.array(urls))
    pq.write_table(table, path, row_group_size=50)
    rng = np.random.default_rng(seed)
    arrays = arrays if arrays is not None else {name: unit_rows(rng, rows, dim) for name, dim in WIDTHS.items()}
    (np.savez_compressed if compressed else np.savez)(path.with_suffix(".npz"), **arrays)
    return table, arrays


def base_config(pool: Path, output: Path, **extra) -> dict:
    config = {"input": {"path": [str(pool)], "uid_col": "uid", "part_rows": 30,
                        "embeddings": ["l14_img", "b32_img"]},
              "output": str(output), "processes": 2}
    config.update(extra)
    return config


def row_of_url(table: pa.Table) -> dict:
    return {url: i for i, url in enumerate(table["url"].to_pylist())}


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """Two pool files (the second one compressed): 400 rows in row groups of 50, and 130."""
    folder = tmp_path_factory.mktemp("pool")
    first = pool_with_embeddings(folder / "pool" / "00000000.parquet")
    second = pool_with_embeddings(folder / "pool" / "00000001.parquet", rows=130, seed=1, compressed=True)
    return folder, {"00000000": first, "00000001": second}


def test_embeddings_stay_aligned_through_parts_and_ingest_drops(pool):
    folder, files = pool
    output = folder / "aligned"
    summary = run(base_config(folder / "pool", output, dedup={}))
    assert_run_invariants(output)
    assert summary["stages"][0]["dropped"] == {"invalid_uid": 2 * len(BAD_UIDS)}
    kept = read_dataset(output / "kept")
    assert kept.schema.field("pool_l14_img").type == pa.list_(pa.float16(), 768)
    assert kept.schema.field("pool_b32_img").type == pa.list_(pa.float16(), 512)
    assert "pool_l14_txt" not in kept.column_names
    where = {url: (name, i) for name, (table, _) in files.items() for url, i in row_of_url(table).items()}
    assert len(where) == 530
    assert kept.num_rows == 530 - 2 * len(BAD_UIDS) - 2   # a duplicate uid in each file
    for row in kept.select(["uid", "url", "pool_l14_img", "pool_b32_img"]).to_pylist():
        name, index = where[row["url"]]
        table, arrays = files[name]
        assert table["uid"][index].as_py() == row["uid"]
        for column in ("l14_img", "b32_img"):
            got = np.array(row[f"pool_{column}"], dtype=np.float16)
            assert np.array_equal(got, arrays[column][index]), (row["url"], column)


def test_part_rows_do_not_change_the_columns(pool, tmp_path):
    """One part per file or one per row group: the same rows with the same embeddings."""
    folder, _ = pool
    run(base_config(folder / "pool", tmp_path / "whole", input={
        "path": [str(folder / "pool")], "uid_col": "uid", "part_rows": 100_000, "embeddings": ["l14_img"]}))
    run(base_config(folder / "pool", tmp_path / "cut", input={
        "path": [str(folder / "pool")], "uid_col": "uid", "part_rows": 1, "embeddings": ["l14_img"]}))
    whole, cut = (read_dataset(tmp_path / name / "kept").sort_by("url") for name in ("whole", "cut"))
    assert whole.num_rows == cut.num_rows > 0
    assert whole["pool_l14_img"].to_pylist() == cut["pool_l14_img"].to_pylist()


def test_reader_reads_only_its_rows(pool):
    """The reader of a part asks the npz for its rows only (first_row, rows of the slice)."""
    from pipeline.config import settings_from_dict
    from pipeline.stages.ingest import ReadSource, embedding_fields, plan_input

    folder, files = pool
    settings = settings_from_dict(base_config(folder / "pool", folder / "unused"), "t.yaml")
    planned = plan_input(settings.input)
    assert [(p.first_row, p.rows) for p in planned if p.path.endswith("00000000.parquet")] == \
        [(start, 50) for start in range(0, 400, 50)]
    fields = embedding_fields(settings.input, planned)
    piece = planned[3]
    table = ReadSource(piece, "url", "text", 3, frozenset(), "uid", fields)()
    _, arrays = files["00000000"]
    got = np.array(table["pool_l14_img"].to_pylist(), dtype=np.float16)
    assert np.array_equal(got, arrays["l14_img"][150:200])


@pytest.mark.parametrize("problem, message", [
    ("no_npz", "no such file"),
    ("no_array", "no array 'l14_img' (arrays: b32_img)"),
    ("rows", "array 'l14_img' has 39 rows, its parquet file 40"),
    ("shape", "expected 2-d floats"),
    ("not_zip", "not a .npz file"),
])
def test_a_bad_npz_is_one_line_before_the_run(tmp_path, problem, message):
    pool = tmp_path / "pool" / "00000000.parquet"
    rng = np.random.default_rng(0)
    arrays = {"no_npz": {}, "no_array": {"b32_img": unit_rows(rng, 40, 512)},
              "rows": {"l14_img": unit_rows(rng, 39, 768)}, "shape": {"l14_img": np.zeros(40, np.float16)},
              "not_zip": {}}[problem]
    pool_with_embeddings(pool, rows=40, arrays=arrays)
    npz = pool.with_suffix(".npz")
    if problem == "no_npz":
        npz.unlink()
    if problem == "not_zip":
        npz.write_text("not a zip")
    config = base_config(pool, tmp_path / "run")
    config["input"]["embeddings"] = ["l14_img"]
    with pytest.raises(UserError) as error:
        run(config)
    assert str(error.value).startswith(f"{npz}: ") and message in str(error.value), str(error.value)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "run").exists(), "refused before the run folder is made"


def test_embeddings_need_parquet_and_valid_names(tmp_path):
    (tmp_path / "in.csv").write_text("url,text\nhttps://a.example/1.jpg,a dog\n")
    config = {"input": {"path": [str(tmp_path / "in.csv")], "embeddings": ["l14_img"]},
              "output": str(tmp_path / "run")}
    with pytest.raises(UserError, match="parquet"):
        run(config)
    config["input"]["embeddings"] = ["l14 img"]
    with pytest.raises(UserError, match="input.embeddings: 'l14 img' is not an array name"):
        run(config)
    assert not (tmp_path / "run").exists()


def test_an_input_column_named_like_a_pool_column_is_renamed(tmp_path):
    pool = tmp_path / "pool" / "00000000.parquet"
    table, arrays = pool_with_embeddings(pool, rows=40)
    pq.write_table(table.append_column("pool_l14_img", pa.array(["mine"] * 40)), pool)
    run(base_config(pool, tmp_path / "run", input={"path": [str(pool)], "uid_col": "uid",
                                                   "embeddings": ["l14_img"]}))
    kept = read_dataset(tmp_path / "run" / "kept")
    assert set(kept["input_pool_l14_img"].to_pylist()) == {"mine"}
    assert kept.schema.field("pool_l14_img").type == pa.list_(pa.float16(), 768)
    assert read_summary(tmp_path / "run")["kept_rows"] == kept.num_rows


# --- image_based ---------------------------------------------------------------------------

def datacomp_image_based(pool_l14: np.ndarray, centroids: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """DataComp's definition, written out independently: nearest centroid = argmax of the
    float32 dot products (first index on ties); the target set is the unique nearest-centroid
    ids of the targets; a row is kept when its nearest centroid is in the target set."""
    def nearest(x):
        return np.argmax(x.astype(np.float32) @ centroids.astype(np.float32).T, axis=1)

    target_ids = set(np.unique(nearest(targets)).tolist())
    return np.array([c in target_ids for c in nearest(pool_l14)], dtype=bool)


@pytest.fixture(scope="module")
def clusters(tmp_path_factory):
    """16 centroids of 768 dims; 40 targets near 5 of them; a pool file whose l14_img rows
    lie near all 16 (well apart: no near-ties between float32 implementations)."""
    folder = tmp_path_factory.mktemp("clusters")
    rng = np.random.default_rng(7)
    centroids = unit_rows(rng, 16, 768).astype(np.float32)
    near = lambda ids: centroids[ids] + 0.02 * rng.standard_normal((len(ids), 768))   # noqa: E731
    targets = near(rng.choice([1, 4, 6, 9, 13], size=40)).astype(np.float16)
    rows = 400
    arrays = {"l14_img": near(rng.integers(0, 16, size=rows)).astype(np.float16),
              "b32_img": unit_rows(rng, rows, 512)}
    pool, _ = pool_with_embeddings(folder / "pool" / "00000000.parquet", rows=rows, arrays=arrays)
    np.save(folder / "centroids.npy", centroids)
    np.save(folder / "targets.npy", targets)
    return folder, pool, arrays, centroids, targets


def image_based_config(folder: Path, output: Path, **section) -> dict:
    config = base_config(folder / "pool", output)
    config["input"]["embeddings"] = ["l14_img"]
    config["image_based"] = {"centroids": str(folder / "centroids.npy"), "targets": [str(folder / "targets.npy")],
                             **section}
    return config


def expected_kept(pool: pa.Table, arrays: dict, centroids, targets) -> set:
    keep = datacomp_image_based(arrays["l14_img"], centroids, targets)
    valid = [u not in BAD_UIDS for u in pool["uid"].to_pylist()]
    return {url for url, k, v in zip(pool["url"].to_pylist(), keep, valid) if k and v}


def test_image_based_keeps_what_datacomp_keeps(clusters):
    folder, pool, arrays, centroids, targets = clusters
    output = folder / "run"
    summary = run(image_based_config(folder, output))
    assert_run_invariants(output)
    kept = read_dataset(output / "kept")
    expected = expected_kept(pool, arrays, centroids, targets)
    assert 0 < len(expected) < pool.num_rows - len(BAD_UIDS)
    assert set(kept["url"].to_pylist()) == expected
    stage = next(s for s in summary["stages"] if s["name"] == "image_based")
    assert stage["dropped"] == {"off_target_cluster": stage["rows_in"] - len(expected)}
    nearest = np.argmax(arrays["l14_img"].astype(np.float32) @ centroids.T, axis=1)
    by_url = row_of_url(pool)
    assert all(nearest[by_url[url]] == cluster for url, cluster in
               zip(kept["url"].to_pylist(), kept["image_cluster"].to_pylist()))
    assert set(kept["image_cluster"].to_pylist()) <= {1, 4, 6, 9, 13}
    ledger = read_dataset(output / "ledger")
    dropped = {u for u, r in zip(ledger["url"].to_pylist(), ledger["reason"].to_pylist()) if r == "off_target_cluster"}
    assert dropped and not dropped & expected


def test_image_based_reads_datacomps_pt_files(clusters, tmp_path):
    """DataComp's centroids file is `torch.save` of a numpy array; its ImageNet embeddings
    are dicts with `image_features` (float16 tensors), in several files."""
    import torch

    folder, pool, arrays, centroids, targets = clusters
    torch.save(centroids, tmp_path / "centroids.pt")
    halves = np.array_split(targets, 2)
    for i, half in enumerate(halves):
        torch.save({"image_features": torch.from_numpy(half)}, tmp_path / f"in1k_{i}.pt")
    config = image_based_config(folder, tmp_path / "run", centroids=str(tmp_path / "centroids.pt"),
                                targets=[str(tmp_path / f"in1k_{i}.pt") for i in range(2)])
    run(config)
    kept = read_dataset(tmp_path / "run" / "kept")
    assert set(kept["url"].to_pylist()) == expected_kept(pool, arrays, centroids, targets)


def test_nearest_centroid_ties_go_to_the_first():
    from pipeline.stages.image_based import nearest_centroids, target_clusters

    centroids = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], np.float32)
    x = np.array([[2, 0], [0, 3], [1, 1]], np.float16)
    assert nearest_centroids(x, centroids, batch_size=2).tolist() == [0, 2, 0]
    assert target_clusters(centroids, [x[:2], x[1:]]).tolist() == [0, 2]


@pytest.mark.parametrize("change, message", [
    ({"centroids": "wide.npy"}, "image_based.centroids: {folder}/wide.npy: 512-dim centroids, the pool's "
                                "l14_img is 768-dim"),
    ({"targets": ["narrow.npy"]}, "image_based.targets: {folder}/narrow.npy: 512-dim rows, the centroids"),
    ({"centroids": "flat.npy"}, "image_based.centroids: {folder}/flat.npy: float32 of shape [768], expected 2-d"),
    ({"centroids": "missing.npy"}, "image_based.centroids: {folder}/missing.npy: no such file"),
    ({"targets": ["text.pt"]}, "image_based.targets: {folder}/text.pt: not a .npy array or a torch.save'd"),
    ({"embedding": "l14_txt"}, "image_based: the rows have no 'pool_l14_txt' column (list l14_txt in input.embeddings"),
])
def test_image_based_files_are_checked_before_the_run(clusters, tmp_path, change, message):
    folder, *_ = clusters
    np.save(tmp_path / "wide.npy", np.zeros((4, 512), np.float32))
    np.save(tmp_path / "narrow.npy", np.zeros((4, 512), np.float16))
    np.save(tmp_path / "flat.npy", np.zeros(768, np.float32))
    (tmp_path / "text.pt").write_text("not a tensor")
    change = {k: [str(tmp_path / p) for p in v] if isinstance(v, list) else
              str(tmp_path / v) if v.endswith((".npy", ".pt")) else v for k, v in change.items()}
    config = image_based_config(folder, tmp_path / "run", **change)
    with pytest.raises(UserError) as error:
        run(config)
    assert message.format(folder=tmp_path) in str(error.value) and "\n" not in str(error.value), str(error.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow   # the Ray and Spark engines
def test_image_based_is_the_same_on_ray_and_spark(clusters, tmp_path):
    folder, pool, arrays, centroids, targets = clusters
    kept = {}
    for engine in ("local", "ray", "spark"):
        config = image_based_config(folder, tmp_path / engine)
        config.update(engine=engine, ray={"num_cpus": 2}, spark={"master": "local[2]"})
        config["input"]["embeddings"] = ["l14_img", "b32_img"]
        run(config)
        assert_run_invariants(tmp_path / engine)
        table = read_dataset(tmp_path / engine / "kept").sort_by("uid")
        kept[engine] = table.select(["uid", "url", "image_cluster", "pool_l14_img", "pool_b32_img"])
    assert set(kept["local"]["url"].to_pylist()) == expected_kept(pool, arrays, centroids, targets)
    assert kept["local"].equals(kept["ray"]) and kept["local"].equals(kept["spark"])
