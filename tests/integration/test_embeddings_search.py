"""clip_score.keep_embeddings writes clip-retrieval's layout; `curate index` and `curate search`."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.testing.fakeweb import FakeWeb
from pipeline.testing.world import COLOURS, describe
from tests.support import read_summary, run, serve_world

ROWS = 96
WORLD_SEED = 5   # serve_world's


@pytest.fixture(scope="module")
def embedded_run(tmp_path_factory, tiny_clip_checkpoint):
    """96 world images (a third with someone else's caption) through download and clip_score
    with keep_embeddings, in 3 parts on 2 processes; returns (config, run folder)."""
    folder = tmp_path_factory.mktemp("embeddings")
    with FakeWeb() as web:
        urls, texts = serve_world(web, ROWS)
        pq.write_table(pa.table({"url": urls, "text": texts}), folder / "pairs.parquet")
        config = {
            "input": {"path": [str(folder / "pairs.parquet")]}, "output": str(folder / "run"),
            "engine": "local", "processes": 1, "allow_networks": ["127.0.0.1/32"],
            "download": {"image_size": 64, "threads": 8, "timeout": 5, "part_rows": 40},
            "clip_score": {"model": "curate-tiny", "pretrained": str(tiny_clip_checkpoint), "device": "cpu",
                           "precision": "fp32", "batch_size": 32, "threshold": 0.85, "keep_embeddings": True},
        }
        run(config)
    return config, folder / "run"


def curate(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=Path(__file__).resolve().parents[2])


def load_layout(run_dir: Path):
    """Image, text embeddings and metadata of every file triple, concatenated in name order
    (as autofaiss and clip-retrieval read the folders)."""
    emb = run_dir / "embeddings"
    images = [np.load(p) for p in sorted((emb / "img_emb").glob("*.npy"))]
    texts = [np.load(p) for p in sorted((emb / "text_emb").glob("*.npy"))]
    metadata = [pq.read_table(p) for p in sorted((emb / "metadata").glob("*.parquet"))]
    assert len(images) == len(texts) == len(metadata)
    for i, t, m in zip(images, texts, metadata):
        assert i.shape == t.shape and i.shape[0] == m.num_rows
    return np.concatenate(images), np.concatenate(texts), pa.concat_tables(metadata)


def layout_files(run_dir: Path) -> dict:
    emb = run_dir / "embeddings"
    return {str(p.relative_to(emb)): p.stat().st_mtime_ns
            for p in sorted(emb.rglob("*")) if p.is_file() and "index" not in p.parts}


def true_scene(url: str):
    return describe(int(url.rsplit("/", 1)[1].split(".")[0]), WORLD_SEED)


@pytest.mark.slow
def test_layout_holds_the_kept_rows_aligned(embedded_run):
    _, run_dir = embedded_run
    emb = run_dir / "embeddings"
    assert sorted(p.name for p in (emb / "img_emb").iterdir()) == ["img_emb_0.npy", "img_emb_1.npy", "img_emb_2.npy"]
    assert sorted(p.name for p in (emb / "text_emb").iterdir()) == [f"text_emb_{i}.npy" for i in range(3)]
    assert sorted(p.name for p in (emb / "metadata").iterdir()) == [
        "metadata_0.parquet", "metadata_1.parquet", "metadata_2.parquet"]
    images, texts, metadata = load_layout(run_dir)
    clip = next(s for s in read_summary(run_dir)["stages"] if s["name"] == "clip_score")
    assert clip["dropped"]["low_clip_score"] > 0, "the threshold should drop some rows"
    assert images.dtype == texts.dtype == np.float32 and images.shape == (clip["rows_out"], 64)
    assert np.allclose(np.linalg.norm(images, axis=1), 1, atol=1e-5)
    assert np.allclose(np.linalg.norm(texts, axis=1), 1, atol=1e-5)
    assert metadata.column_names == ["uid", "url", "caption", "clip_score"]
    # row by row: the kept rows of clip_score's output parts, in order
    step = next((run_dir / "steps").glob("*_clip_score"))
    kept = pa.concat_tables(pq.read_table(p, columns=["uid", "url", "text"])
                            for p in sorted((step / "map" / "data").glob("*.parquet")))
    assert metadata["uid"].to_pylist() == kept["uid"].to_pylist()
    assert metadata["caption"].to_pylist() == kept["text"].to_pylist()
    assert metadata["url"].to_pylist() == kept["url"].to_pylist()
    # each row's image and text embedding give its clip_score (float16 columns: ~1e-3)
    cosine = (images * texts).sum(axis=1)
    assert np.abs(cosine - metadata["clip_score"].to_numpy()).max() < 5e-3
    assert (metadata["clip_score"].to_numpy() >= 0.85).all()
    manifest = (emb / "_SUCCESS").read_text()
    assert f'"rows": {clip["rows_out"]}' in manifest


@pytest.mark.slow
def test_index_and_search(embedded_run, tiny_clip_checkpoint):
    import faiss

    from pipeline.clip.model import load_clip
    from pipeline.clip.score import ClipScorer

    _, run_dir = embedded_run
    done = curate("index", run_dir)
    assert done.returncode == 0, done.stderr
    images, _, metadata = load_layout(run_dir)
    index = faiss.read_index(str(run_dir / "embeddings" / "index" / "knn.index"))
    assert index.ntotal == len(images) and index.d == images.shape[1]
    scores, ids = index.search(images, 1)
    assert (ids[:, 0] == np.arange(len(images))).all(), "index row i is layout row i"
    assert pq.read_table(run_dir / "embeddings" / "index" / "metadata.parquet").equals(metadata)

    found = curate("search", run_dir, "a red circle", "-k", 5)
    assert found.returncode == 0, found.stderr
    lines = found.stdout.strip().splitlines()
    assert lines[0] == "uid\turl\tcaption\tsimilarity" and len(lines) == 6
    hits = [line.split("\t") for line in lines[1:]]
    similarities = [float(h[3]) for h in hits]
    assert similarities == sorted(similarities, reverse=True)
    assert hits[0][0] in set(metadata["uid"].to_pylist())
    # curate-tiny (120 training steps) learned colours, not which one is the shape's: the hits
    # are red images (a red shape or background) and say so in their caption
    assert "red" in hits[0][2].split()

    # every colour query: images holding that colour come first (chance: a third of them)
    clip = ClipScorer(load_clip("curate-tiny", str(tiny_clip_checkpoint), device="cpu", precision="fp32"))
    scenes = [true_scene(u) for u in metadata["url"].to_pylist()]
    queries = [f"a {colour} circle" for colour in COLOURS]
    with torch_inference():
        vectors = clip.encode_texts(queries).numpy()
    _, ids = index.search(vectors, 5)
    precision = [np.mean([colour in (scenes[i].colour, scenes[i].background) for i in row])
                 for colour, row in zip(COLOURS, ids)]
    chance = [np.mean([colour in (s.colour, s.background) for s in scenes]) for colour in COLOURS]
    assert all(colour in (scenes[row[0]].colour, scenes[row[0]].background) for colour, row in zip(COLOURS, ids))
    assert np.mean(precision) >= 0.8 > 2 * np.mean(chance)


def torch_inference():
    import torch

    return torch.inference_mode()


@pytest.mark.slow
def test_autofaiss_builds_from_the_folder(embedded_run, tmp_path):
    autofaiss = pytest.importorskip("autofaiss")   # pins numpy<2, so not installed beside pyarrow 26
    _, run_dir = embedded_run
    index, _ = autofaiss.build_index(embeddings=str(run_dir / "embeddings" / "img_emb"),
                                     index_path=str(tmp_path / "knn.index"), metric_type="ip",
                                     index_infos_path=str(tmp_path / "infos.json"), save_on_disk=True)
    images, _, _ = load_layout(run_dir)
    assert index.ntotal == len(images)


@pytest.mark.slow
def test_rerun_and_resume_leave_finished_parts_alone(embedded_run):
    config, run_dir = embedded_run
    before = layout_files(run_dir)
    run(config)
    assert layout_files(run_dir) == before, "a finished run rewrote its embeddings"
    # resume inside the step: its other parts are done, one part's embeddings are not
    step = next((run_dir / "steps").glob("*_clip_score"))
    (step / "_SUCCESS").unlink()
    (step / "embeddings" / "done" / "part-00001.json").unlink()
    part1 = {name: (run_dir / "embeddings" / name).read_bytes() for name in before if name.endswith("_1.npy")}
    for name in part1:
        (run_dir / "embeddings" / name).unlink()
    run(config)
    after = layout_files(run_dir)
    assert set(after) == set(before)
    assert {n for n in after if after[n] != before[n]} == {
        "_SUCCESS", "img_emb/img_emb_1.npy", "text_emb/text_emb_1.npy", "metadata/metadata_1.parquet"}
    assert all((run_dir / "embeddings" / name).read_bytes() == data for name, data in part1.items())


def test_a_part_that_kept_no_row_writes_no_files(tmp_path):
    """As clip-retrieval skips empty partitions; the marker still records the part as done."""
    from pipeline.clip.embeddings import embedding_array
    from pipeline.clip.index import write_embeddings
    from pipeline.engines.local import LocalEngine

    vectors = np.array([[3, 4], [1, 0]], np.float32)
    table = pa.table({"uid": ["a", "b"], "url": ["u1", "u2"], "text": ["t1", "t2"],
                      "clip_score": pa.array([0.5, 0.6], pa.float32()),
                      "image_embedding": embedding_array(vectors), "text_embedding": embedding_array(vectors)})
    for i, part in enumerate((table, table.slice(0, 0), table.slice(1))):
        pq.write_table(part, tmp_path / f"part-{i}.parquet")
    refs = [str(tmp_path / f"part-{i}.parquet") for i in range(3)]
    with LocalEngine(2) as engine:   # the tasks travel to worker processes
        summary = write_embeddings(engine, refs, str(tmp_path / "run"), str(tmp_path / "markers"))
    assert summary == {"rows": 3, "dim": 2, "files": 6}
    emb = tmp_path / "run" / "embeddings"
    assert sorted(p.name for p in (emb / "img_emb").iterdir()) == ["img_emb_0.npy", "img_emb_2.npy"]
    assert np.allclose(np.load(emb / "img_emb" / "img_emb_0.npy"), [[0.6, 0.8], [1, 0]], atol=1e-3)
    assert len(list((tmp_path / "markers" / "done").iterdir())) == 3


def test_bad_run_folder_is_one_line(tmp_path):
    missing = curate("search", tmp_path / "nothing", "a red circle")
    assert missing.returncode == 2 and missing.stderr.strip().count("\n") == 0
    assert "not a run folder" in missing.stderr
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "config.json").write_text("{}")
    empty = curate("index", tmp_path / "plain")
    assert empty.returncode == 2 and empty.stderr.strip().count("\n") == 0
    assert "keep_embeddings" in empty.stderr
