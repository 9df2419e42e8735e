"""The demo at a smaller size: every stage, training on curated and uncurated shards
(mini-DataComp), and curated must win on the same held-out zero-shot set."""
import json

from tests.support import assert_run_invariants

from pipeline.demo import run_demo


def test_small_demo_curation_beats_no_curation(tmp_path):
    summary = run_demo(tmp_path / "demo", rows=1500, steps=100, log=lambda *_: None)
    run = tmp_path / "demo"
    assert_run_invariants(run)
    assert [s["name"] for s in summary["stages"]] == [
        "ingest", "dedup", "caption_filter", "language", "metadata", "download", "image_dedup",
        "clip_score", "shard"]
    drops = {s["name"]: s["dropped"] for s in summary["stages"]}
    assert drops["download"]["http_404"] > 0 and drops["download"]["opt_out"] > 0
    assert drops["image_dedup"]["duplicate_image"] > 0 and drops["clip_score"]["low_clip_score"] > 0
    assert (run / "report.html").exists() and list((run / "shards").glob("*.tar"))
    assert list((run / "train" / "checkpoints").glob("*.pt"))
    comparison = json.loads((run / "eval.json").read_text())
    assert comparison["steps"] == 100
    assert comparison["curated"]["top1"] > comparison["uncurated"]["top1"], comparison
