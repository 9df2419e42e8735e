"""The demo's synthetic-caption pieces (pipeline.demo.captions): the world captioner trains,
is cached and captions through the recaption backend; the three-way comparison trains on the
same shards with synthetic captions only and with the mix, and writes captions.json."""
import json

import pyarrow as pa
import pytest

from pipeline.shards import write_shards
from pipeline.stages.recaption import CAPTION_TYPE
from pipeline.testing.world import make_world, world_rows, write_eval_folder

pytest.importorskip("transformers")


@pytest.mark.slow
def test_world_captioner_is_cached_and_captions(tmp_path):
    from pipeline.captioners.transformers import TransformersCaptioner
    from pipeline.testing.tiny_captioner import ensure_world_captioner

    options = {"samples": 64, "steps": 2, "batch_size": 8, "image_size": 64}
    folder = ensure_world_captioner(tmp_path, **options)
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert ensure_world_captioner(tmp_path, **options) == folder   # cached: not trained again
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    results = TransformersCaptioner(str(folder), "", max_new_tokens=8, device="cpu").caption(
        [s.jpg for s in make_world(3, seed=7)], [""] * 3)
    assert all(r.texts or r.error == "empty caption" for r in results)


@pytest.mark.slow
def test_compare_captions_trains_the_variants(tmp_path):
    from pipeline.demo.captions import CAPTIONS_FILE, compare_captions
    from pipeline.train import train
    from pipeline.train.settings import TrainSettings

    rows = world_rows(64, seed=3)
    captions = [[{"text": row["text"], "model": "m", "prompt": "", "seconds": 0.0}] for row in rows]
    table = pa.Table.from_pylist(rows).append_column("captions", pa.array(captions, pa.list_(CAPTION_TYPE)))
    write_shards(table, tmp_path / "shards", samples_per_shard=16, warn_few=False)
    eval_data = write_eval_folder(tmp_path / "eval", n=24)
    section = {"model": "curate-tiny", "steps": 2, "batch_size": 8, "launcher": "inline", "warmup": 1,
               "checkpoint_every": 2, "eval_data": str(eval_data), "precision": "fp32", "workers": 0}
    train(TrainSettings(**section), tmp_path)   # the run's own training: original captions
    results = compare_captions(tmp_path, section, log=lambda *_: None)
    assert json.loads((tmp_path / CAPTIONS_FILE).read_text()) == results
    assert results["steps"] == 2 and {"original", "synthetic", "mix"} <= set(results)
    assert results["synthetic_realized"]["synthetic"] == 1.0 and results["synthetic_realized"]["samples"] == 16
    assert (tmp_path / "captions" / "mix" / "eval.json").is_file()
