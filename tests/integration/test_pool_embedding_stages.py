"""semantic_dedup and heads on a DataComp pool's precomputed embeddings (`embedding:
pool_<array>`, issue 22): metadata-only runs (no clip_score, no download) on a generated pool
whose npz holds planted near-duplicates, checked against an independent implementation."""
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.clip.embeddings import POOL_PREFIX
from pipeline.errors import UserError
from pipeline.stages.pool_embeddings import PREFIX
from pipeline.stages.semantic_dedup import uid_order_keys
from tests.integration.test_pool_embeddings import WIDTHS, pool_with_embeddings, row_of_url, unit_rows
from tests.support import assert_run_invariants, kept_uids, ledger_rows, read_dataset, read_summary, run

ROWS = 400
EPS = 0.05
SOURCES = range(300, 340)      # rows whose embedding is planted again
CLOSE = range(0, 40)           # cosine ~0.995 to a source row: duplicates
FAR = range(40, 60)            # cosine ~0.89 to a source row: not duplicates


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """One pool file of ROWS rows: random unit l14_img rows, CLOSE rows planted near SOURCES
    rows, FAR rows a bit further from them; random b32_img."""
    folder = tmp_path_factory.mktemp("pool_stages")
    rng = np.random.default_rng(11)
    l14 = unit_rows(rng, ROWS, WIDTHS["l14_img"]).astype(np.float64)
    for targets, noise in ((CLOSE, 0.1), (FAR, 0.5)):
        for i, source in zip(targets, SOURCES):
            x = l14[source] + noise * rng.standard_normal(l14.shape[1]) / np.sqrt(l14.shape[1])
            l14[i] = x / np.linalg.norm(x)
    arrays = {"l14_img": l14.astype(np.float16), "b32_img": unit_rows(rng, ROWS, WIDTHS["b32_img"])}
    path = folder / "pool" / "00000000.parquet"
    table, arrays = pool_with_embeddings(path, rows=ROWS, arrays=arrays)
    uids = table["uid"].to_pylist()
    uids[7] = "7" * 32   # the generated pool repeats row 6's uid here; no dedup step runs in these tests
    table = table.set_column(table.schema.get_field_index("uid"), "uid", pa.array(uids))
    pq.write_table(table, path, row_group_size=50)
    return folder, table, arrays


def config(folder, output: str, **sections) -> dict:
    """Metadata-only: input with the pool's arrays, the sections given, nothing else."""
    return {"input": {"path": [str(folder / "pool")], "uid_col": "uid", "part_rows": 60,
                      "embeddings": ["l14_img", "b32_img"]},
            "output": str(folder / output), "processes": 2, **sections}


def unit32(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def reference_semantic_dedup(x: np.ndarray, uids: list, threshold: float, seed: int) -> set:
    """SemDeDup with one cluster and `keep: random`, written out: rows in order of
    (hash of seed and uid, uid), each kept unless within `threshold` of a kept one."""
    order = np.lexsort((np.array(uids, dtype="U"), uid_order_keys(uids, seed)))
    kept = []
    dropped = set()
    for i in order:
        if kept and float(np.max(x[kept] @ x[i])) >= threshold:
            dropped.add(uids[i])
        else:
            kept.append(i)
    return dropped


def stage_rows(run_dir, stage: str):
    ledger = read_dataset(run_dir / "ledger")
    return ledger.filter(pc.equal(ledger["stage"], stage))


def entering(run_dir, stage: str, table) -> tuple[list, list]:
    """uid and pool row index of every row that reached `stage` (kept, or dropped there)."""
    row = row_of_url(table)
    kept = read_dataset(run_dir / "kept")
    gone = stage_rows(run_dir, stage)
    urls = kept["url"].to_pylist() + gone["url"].to_pylist()
    uids = kept["uid"].to_pylist() + gone["uid"].to_pylist()
    return uids, [row[u] for u in urls]


def test_pool_prefix_is_the_pool_columns():
    assert POOL_PREFIX == PREFIX


def test_semantic_dedup_on_pool_l14_metadata_only(pool):
    folder, table, arrays = pool
    summary = run(config(folder, "semantic", semantic_dedup={
        "embedding": "pool_l14_img", "clusters": 1, "keep": "random", "eps": EPS}))
    run_dir = folder / "semantic"
    assert_run_invariants(run_dir)
    assert [s["name"] for s in summary["stages"]] == ["ingest", "semantic_dedup"]
    gone = stage_rows(run_dir, "semantic_dedup")
    assert set(gone["reason"].to_pylist()) == {"semantic_duplicate"}
    row = row_of_url(table)
    dropped_rows = {row[u] for u in gone["url"].to_pylist()}
    uids, rows = entering(run_dir, "semantic_dedup", table)
    # of each planted close pair (both past ingest) one goes, which one by the keep order;
    # no far or random row goes
    pairs = [{c, s} for c, s in zip(CLOSE, SOURCES) if {c, s} <= set(rows)]
    assert len(pairs) >= 35 and all(len(p & dropped_rows) == 1 for p in pairs)
    assert dropped_rows <= set(CLOSE) | set(SOURCES)
    expected = reference_semantic_dedup(unit32(arrays["l14_img"][rows]), uids, 1 - EPS, seed=0)
    assert set(gone["uid"].to_pylist()) == expected and len(expected) >= 35
    kept = read_dataset(run_dir / "kept")
    assert "image_embedding" not in kept.column_names
    index = read_dataset(run_dir / "index")
    assert index.schema.field("image_embedding").type.list_size == 768   # the pool's, for `exclude`


def test_semantic_dedup_kept_set_does_not_depend_on_parts(pool):
    """k-means with 3 clusters and `keep: hard`: the same result for other part sizes."""
    folder, _, _ = pool
    section = {"embedding": "pool_l14_img", "clusters": 3}
    run(config(folder, "hard_a", semantic_dedup=section))
    cfg = config(folder, "hard_b", semantic_dedup=section, task_rows=90)
    cfg["input"]["part_rows"] = 17
    run(cfg)
    assert kept_uids(folder / "hard_a") == kept_uids(folder / "hard_b")
    assert ledger_rows(folder / "hard_a") == ledger_rows(folder / "hard_b")
    assert read_summary(folder / "hard_a")["stages"][1]["dropped"]["semantic_duplicate"] >= 35


def save_linear(path, weight: np.ndarray, bias: float) -> None:
    head = torch.nn.Linear(weight.shape[0], 1)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(weight.astype(np.float32))[None])
        head.bias.fill_(bias)
    torch.save(head.state_dict(), path)


def cut_in_a_gap(scores: np.ndarray) -> float:
    """A threshold near the median, halfway in a gap between two scores (no near-ties)."""
    s = np.sort(scores)
    middle = len(s) // 2
    i = middle - 20 + int(np.argmax(np.diff(s[middle - 20:middle + 20])))
    return float((s[i] + s[i + 1]) / 2)


@pytest.mark.parametrize("side", ["drop_above", "drop_below"])
def test_heads_on_pool_b32_drop_exactly_past_the_cut(pool, side):
    folder, table, arrays = pool
    rng = np.random.default_rng(3)
    weight, bias = rng.standard_normal(512), 0.25
    path = folder / "linear_b32.pt"
    save_linear(path, weight, bias)
    x = unit32(arrays["b32_img"])
    scores = x @ weight.astype(np.float32) + np.float32(bias)
    cut = cut_in_a_gap(scores)
    run_dir = folder / f"heads_{side}"
    run(config(folder, run_dir.name, heads={"heads": [
        {"name": "aesthetic", "path": str(path), "embedding": "pool_b32_img", side: cut}]}))
    assert_run_invariants(run_dir)
    row = row_of_url(table)
    gone = stage_rows(run_dir, "heads")
    assert set(gone["reason"].to_pylist()) <= {"low_aesthetic"}
    uids, rows = entering(run_dir, "heads", table)
    past = scores[rows] > cut if side == "drop_above" else scores[rows] < cut
    assert {row[u] for u in gone["url"].to_pylist()} == {r for r, p in zip(rows, past) if p}
    assert 100 < len(gone) < 300
    kept = read_dataset(run_dir / "kept")
    got = np.array(kept["aesthetic_score"].to_pylist(), dtype=np.float32)
    want = scores[[row[u] for u in kept["url"].to_pylist()]]
    assert np.allclose(got, want, atol=1e-5)
    assert "image_embedding" not in kept.column_names


def test_a_head_of_another_width_is_one_line_before_the_run(pool):
    folder, _, _ = pool
    path = folder / "linear_l14.pt"
    save_linear(path, np.ones(768), 0.0)
    with pytest.raises(UserError) as error:
        run(config(folder, "wrong_dim", heads={"heads": [
            {"name": "nsfw", "path": str(path), "embedding": "pool_b32_img", "drop_above": 0.5}]}))
    message = str(error.value)
    assert message == (f"heads: nsfw: {path}: takes 768-dim embeddings, the pool's pool_b32_img is 512-dim "
                       f"(a head trained for another CLIP model?)"), message
    assert not (folder / "wrong_dim").exists()


@pytest.mark.parametrize("section", [
    {"semantic_dedup": {"embedding": "pool_l14_txt"}},
    {"heads": {"heads": [{"name": "nsfw", "path": "PATH", "embedding": "pool_l14_txt", "drop_above": 0.5}]}},
])
def test_a_pool_column_not_in_input_embeddings_is_one_line_before_the_run(pool, section):
    folder, _, _ = pool
    path = folder / "linear_any.pt"
    save_linear(path, np.ones(768), 0.0)
    if "heads" in section:
        section["heads"]["heads"][0]["path"] = str(path)
    with pytest.raises(UserError) as error:
        run(config(folder, "missing", **section))
    message = str(error.value)
    assert "'pool_l14_txt'" in message and "list l14_txt in input.embeddings" in message, message
    assert "\n" not in message
    assert not (folder / "missing").exists()


@pytest.mark.parametrize("section, key", [
    ({"semantic_dedup": {"embedding": "l14_img"}}, "semantic_dedup.embedding"),
    ({"heads": {"heads": [{"name": "nsfw", "path": "x.pt", "embedding": "clip"}]}}, "heads: nsfw: "),
])
def test_an_embedding_that_is_not_a_column_it_can_read_is_refused(pool, section, key):
    folder, _, _ = pool
    with pytest.raises(UserError) as error:
        run(config(folder, "bad_name", **section))
    assert key in str(error.value) and "pool_l14_img" in str(error.value), str(error.value)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["ray", "spark"])
def test_same_semantic_dedup_on_ray_and_spark(pool, engine):
    folder, _, _ = pool
    section = {"embedding": "pool_l14_img", "clusters": 3}
    reference = folder / "engine_local"
    if not reference.exists():
        run(config(folder, reference.name, semantic_dedup=section))
    cfg = config(folder, f"engine_{engine}", semantic_dedup=section, engine=engine,
                 ray={"num_cpus": 2}, spark={"master": "local[2]"})
    run(cfg)
    assert_run_invariants(folder / f"engine_{engine}")
    assert kept_uids(folder / f"engine_{engine}") == kept_uids(reference)
    assert ledger_rows(folder / f"engine_{engine}") == ledger_rows(reference)


def test_excluding_a_run_of_another_embedding_width_is_one_line_before_the_run(pool):
    """A run's index holds the embeddings semantic_dedup read (here the pool's L/14); a later
    run comparing its B/32 ones with them is refused before it starts."""
    folder, _, _ = pool
    earlier = folder / "semantic"
    if not earlier.exists():
        run(config(folder, earlier.name, semantic_dedup={"embedding": "pool_l14_img", "clusters": 1}))
    with pytest.raises(UserError) as error:
        run(config(folder, "exclude_b32", semantic_dedup={"embedding": "pool_b32_img", "clusters": 1},
                   exclude=[str(earlier)]))
    message = str(error.value)
    assert message.startswith("semantic_dedup: exclude: ") and "768-dim image embeddings, this run's " \
        "'pool_b32_img' is 512-dim" in message and "\n" not in message, message
    assert not (folder / "exclude_b32").exists()
