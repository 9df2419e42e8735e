"""The demo at a smaller size: every stage, training on curated and uncurated shards
(mini-DataComp), and curated must win on the same held-out zero-shot set."""
import json

import pytest

from pipeline.demo import run_demo
from tests.support import assert_run_invariants

pytestmark = pytest.mark.slow  # the demo: curation, training and ablations


def test_small_demo_curation_beats_no_curation(tmp_path):
    summary = run_demo(tmp_path / "demo", rows=1500, steps=100, log=lambda *_: None)
    run = tmp_path / "demo"
    assert_run_invariants(run)
    assert [s["name"] for s in summary["stages"]] == [
        "ingest", "dedup", "caption_filter", "language", "metadata", "download", "image_dedup",
        "clip_score", "text_mask", "recaption", "shard"]
    drops = {s["name"]: s["dropped"] for s in summary["stages"]}
    assert drops["download"]["http_404"] > 0 and drops["download"]["opt_out"] > 0
    assert drops["image_dedup"]["duplicate_image"] > 0 and drops["clip_score"]["low_clip_score"] > 0
    assert drops["text_mask"]["text_spotting"] > 0   # captions written over another picture
    assert (run / "report.html").exists() and list((run / "shards").glob("*.tar"))
    assert list((run / "train" / "checkpoints").glob("*.pt"))
    comparison = json.loads((run / "eval.json").read_text())
    assert comparison["steps"] == 100
    assert comparison["curated"]["top1"] > comparison["uncurated"]["top1"], comparison
    languages = next(s for s in summary["stages"] if s["name"] == "metadata")["details"]["languages"]
    assert set(languages) == {"en", "fr", "de", "es", "ja"}   # MetaCLIP 2: a list per language
    assert all(languages[code]["kept_rows"] > 0 for code in ("en", "fr", "ja")), languages   # ja: no spaces
    page = (run / "report.html").read_text()
    assert '<section id="languages">' in page and '<section id="captions">' in page
    # synthetic captions: in the tars beside the alt-text, and trained on three ways
    captions = json.loads((run / "captions.json").read_text())
    assert captions["steps"] == 100 and {"original", "synthetic", "mix"} <= set(captions)
    assert captions["mix_realized"]["synthetic"] == pytest.approx(0.8, abs=0.1), captions
    assert captions["synthetic_realized"]["synthetic"] == 1.0, captions


def test_ablation_trains_without_each_filter_and_the_report_shows_the_table(tmp_path):
    import re

    from tests.integration.test_report import chromium

    run = tmp_path / "demo"
    run_demo(run, rows=400, steps=6, log=lambda *_: None, ablate=True)
    ablation = json.loads((run / "ablation.json").read_text())
    variants = [r["variant"] for r in ablation["rows"]]
    # a stage that reads what a filter adds goes with it: per-language metadata reads the
    # language detected, text_mask the CLIP embeddings
    assert variants == ["full pipeline", "without dedup", "without caption filter",
                        "without language and balancing (metadata)", "without balancing (metadata)",
                        "without image dedup", "without CLIP score and text spotting (T-MARS)",
                        "without text spotting (T-MARS)", "no curation"], \
        "every filter the demo has, in pipeline order (from the registry)"
    full = ablation["rows"][0]
    uncurated = ablation["rows"][-1]["kept_rows"]
    assert all(0 < r["kept_rows"] <= uncurated for r in ablation["rows"]), ablation
    without_clip = next(r for r in ablation["rows"] if r["removed"] == "clip_score")
    assert without_clip["kept_rows"] > full["kept_rows"], "CLIP score drops rows here"
    for row in ablation["rows"][1:-1]:
        assert (run / "ablate" / f"without_{row['removed']}" / "train" / "eval.json").exists()
    dom = chromium(["--virtual-time-budget=5000", "--dump-dom", (run / "report.html").as_uri()], tmp_path).stdout
    section = re.search(r'<section id="ablation">(.*?)</section>', dom, re.S)
    assert section, "the Ablation section renders"
    assert section.group(1).count("<tr>") == 1 + len(variants)   # the header and a row per variant
