"""download -> clip_score -> shard with the project's trained curate-tiny, on every engine."""
import argparse
import hashlib

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipeline.testing.fakeweb import FakeWeb
from tests.support import assert_run_invariants, kept_uids, read_dataset, read_summary, run, serve_world

pytestmark = pytest.mark.slow  # image pipelines with curate-tiny, on every engine

ROWS = 96


@pytest.fixture(scope="module")
def world_web():
    with FakeWeb() as web:
        yield (web, *serve_world(web, ROWS))   # a third get someone else's caption


def config(tmp_path, name, urls, texts, checkpoint, engine="local", **clip):
    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"url": urls, "text": texts}), path)
    return {
        "input": {"path": [str(path)]}, "output": str(tmp_path / name), "engine": engine,
        "processes": 2, "allow_networks": ["127.0.0.1/32"],
        "download": {"image_size": 64, "threads": 8, "timeout": 5, "part_rows": 40, "resize_mode": "border"},
        "clip_score": {"model": "curate-tiny", "pretrained": str(checkpoint), "device": "cpu",
                       "precision": "fp32", "batch_size": 32, "threshold": 0.0, **clip},
        "shard": {"samples_per_shard": 16},
        "ray": {"num_cpus": 2}, "spark": {"master": "local[2]"},
    }



def tar_digests(run_dir):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((run_dir / "shards").glob("*.tar"))}


def test_scores_filter_and_shards_open_clip_reads(tmp_path, world_web, tiny_clip_checkpoint):
    web, urls, texts = world_web
    summary = run(config(tmp_path, "run", urls, texts, tiny_clip_checkpoint, threshold=0.85))
    assert_run_invariants(tmp_path / "run")
    clip = next(s for s in summary["stages"] if s["name"] == "clip_score")
    assert clip["dropped"].get("low_clip_score", 0) > 10
    kept = read_dataset(tmp_path / "run" / "kept")
    mismatched = {u for i, u in enumerate(urls) if i % 3 == 0}
    kept_mismatched = sum(u in mismatched for u in kept["url"].to_pylist())
    assert kept_mismatched < 0.2 * len(mismatched) and kept.num_rows > 50, "mismatched captions mostly go"
    assert "jpg" not in kept.column_names and {"shard", "key", "clip_score"} <= set(kept.column_names)
    from open_clip_train.data import get_wds_dataset

    from pipeline.clip.model import load_clip
    from pipeline.clip.wds_compat import patch_open_clip_webdataset
    patch_open_clip_webdataset()
    clip_model = load_clip("curate-tiny", str(tiny_clip_checkpoint), device="cpu", precision="fp32")
    shards = sorted((tmp_path / "run" / "shards").glob("*.tar"))
    pattern = str(tmp_path / "run" / "shards" / f"{{00000..{len(shards) - 1:05d}}}.tar")
    args = argparse.Namespace(train_data=pattern, val_data=pattern, train_num_samples=None, val_num_samples=None,
                              dataset_resampled=False, batch_size=1, workers=0, world_size=1, rank=0, seed=0,
                              train_data_upsampling_factors=None)
    info = get_wds_dataset(args, clip_model.preprocess, is_train=False, tokenizer=clip_model.tokenizer)
    seen = sum(images.shape[0] for images, _ in info.dataloader)
    assert seen == summary["kept_rows"] == kept.num_rows


def test_top_fraction_keeps_that_fraction(tmp_path, world_web, tiny_clip_checkpoint):
    web, urls, texts = world_web
    summary = run(config(tmp_path, "top", urls, texts, tiny_clip_checkpoint, filter="top_fraction",
                         top_fraction=0.5))
    assert_run_invariants(tmp_path / "top")
    clip = next(s for s in summary["stages"] if s["name"] == "clip_score")
    assert abs(clip["rows_out"] - clip["rows_in"] * 0.5) <= 2


@pytest.fixture(scope="module")
def reference(tmp_path_factory, world_web, tiny_clip_checkpoint):
    web, urls, texts = world_web
    folder = tmp_path_factory.mktemp("reference")
    run(config(folder, "ref", urls, texts, tiny_clip_checkpoint))
    return folder / "ref"


@pytest.mark.parametrize("engine", ["local", "ray", "spark"])
def test_same_scores_and_byte_identical_shards_everywhere(tmp_path, world_web, tiny_clip_checkpoint,
                                                          reference, engine):
    web, urls, texts = world_web
    run(config(tmp_path, engine, urls, texts, tiny_clip_checkpoint, engine=engine))
    assert tar_digests(reference) == tar_digests(tmp_path / engine)  # a second local run included
    assert kept_uids(reference) == kept_uids(tmp_path / engine)
    a = read_dataset(reference / "kept").sort_by("uid")
    b = read_dataset(tmp_path / engine / "kept").sort_by("uid")
    assert pc.max(pc.abs(pc.subtract(a["clip_score"], b["clip_score"]))).as_py() < 1e-6
    assert read_summary(reference)["kept_rows"] == read_summary(tmp_path / engine)["kept_rows"]


def test_no_step_after_download_writes_image_bytes(tmp_path, world_web, tiny_clip_checkpoint):
    """Images are stored once: download's parts hold the bytes, the tars hold the kept ones;
    image_dedup, clip_score and shard write only their columns and a reference."""
    web, urls, texts = world_web
    cfg = config(tmp_path, "once", urls, texts, tiny_clip_checkpoint)
    cfg["image_dedup"] = {"phash_distance": 2}
    summary = run(cfg)
    assert_run_invariants(tmp_path / "once")
    steps = tmp_path / "once" / "steps"
    download_files = sorted(steps.glob("*_download/*/data/*.parquet"))
    later_files = [p for p in sorted(steps.glob("*/*/data/*.parquet"))
                   if "_download" not in p.parts[-4] and "_ingest" not in p.parts[-4]]
    assert download_files and {p.parts[-4].split("_", 1)[1] for p in later_files} == {
        "image_dedup", "clip_score", "shard"}
    for path in later_files:
        schema = pq.read_schema(path)
        binary = [f.name for f in schema if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)]
        assert not binary, f"{path} holds binary columns {binary}"
    assert all("jpg" in pq.read_schema(p).names for p in download_files)
    # every kept image went into a tar with the very bytes download stored
    stored = read_dataset(steps.glob("*_download").__next__() / "map" / "data")
    by_sha = dict(zip(stored["sha256"].to_pylist(), stored["jpg"].to_pylist()))
    tar_jpegs = list(tar_jpeg_members(tmp_path / "once" / "shards"))
    assert len(tar_jpegs) == summary["kept_rows"] > 0
    assert all(by_sha[hashlib.sha256(j).hexdigest()] == j for j in tar_jpegs)


def tar_jpeg_members(shards):
    import tarfile

    for path in sorted(shards.glob("*.tar")):
        with tarfile.open(path) as tar:
            for member in tar:
                if member.name.endswith(".jpg"):
                    yield tar.extractfile(member).read()
