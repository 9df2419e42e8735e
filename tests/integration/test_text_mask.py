"""text_mask (T-MARS text spotting): PP-OCR's detector on rendered text, the masking, the
masked score, and a whole run on the local, Ray and Spark engines.

Detection is measured on pictures (world scenes and real photo tiles) with a line of words
drawn in PIL's default font and the TrueType fonts installed here, at three sizes and in
five colours, and on the same pictures without text: box recall (the text's true box at
least half covered by found boxes) and the false-positive rate (pictures without text where
a box is found). Measured at 256 px (side 256): recall 0.98, false positives 0 of 64
pictures (0.28 before boxes taller than 0.3 of the image were left out: the network marks
large flat shapes); at 64 px (side 256) recall 0.92. The floors below leave room for fonts.
"""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.testing.rendered_text import font_names, plain_cases, text_cases
from pipeline.text_spotting import TextDetector, mask_boxes, text_area

RECALL_FLOOR = {256: 0.9, 64: 0.8}
FALSE_POSITIVE_CEILING = 0.05


def covered(boxes: np.ndarray, truth: tuple, size: int) -> float:
    """The fraction of the true box that the found boxes cover."""
    found = np.zeros((size, size), bool)
    for x0, y0, x1, y1 in boxes:
        found[y0:y1, x0:x1] = True
    x0, y0, x1, y1 = truth
    return float(found[y0:y1, x0:x1].mean())


@pytest.mark.parametrize("size", [256, 64])
def test_detection_recall_and_false_positives_on_rendered_text(size):
    detector = TextDetector(side=256)
    cases, plain = text_cases(90, size, seed=1), plain_cases(64, size, seed=2)
    found = detector.detect([np.asarray(c.image) for c in cases + plain])
    hits = [covered(b, c.box, size) >= 0.5 for c, b in zip(cases, found)]
    recall = float(np.mean(hits))
    false_positives = float(np.mean([len(b) > 0 for b in found[len(cases):]]))
    fonts = {c.font for c in cases}
    print(f"\n{size} px, {len(fonts)} fonts: box recall {recall:.3f} ({len(cases)} texts), "
          f"false positives {false_positives:.3f} ({len(plain)} pictures without text)")
    assert len(fonts) == len(font_names()) >= 1
    assert recall >= RECALL_FLOOR[size]
    assert false_positives <= FALSE_POSITIVE_CEILING
    for font in fonts:   # every font is found most of the time, not only the easy ones
        assert np.mean([h for h, c in zip(hits, cases) if c.font == font]) >= 0.6, font


def test_detect_batches_give_the_boxes_of_single_images():
    cases = text_cases(12, 128, seed=3)
    images = [np.asarray(c.image) for c in cases]
    together = TextDetector(side=256, batch_size=8).detect(images)
    alone = [TextDetector(side=256, batch_size=1).detect([image])[0] for image in images]
    assert all(np.array_equal(a, b) for a, b in zip(together, alone))
    assert sum(len(b) for b in together) >= 10


def test_masking_fills_boxes_with_their_border_colour():
    image = np.zeros((40, 60, 3), np.uint8)
    image[:, :] = (10, 200, 30)
    image[10:20, 10:40] = (255, 255, 255)   # "text"
    masked = mask_boxes(image, np.array([[10, 10, 40, 20]], np.int32))
    assert (masked == (10, 200, 30)).all()
    assert (image[10:20, 10:40] == 255).all()   # the input is not changed
    edge = mask_boxes(image, np.array([[0, 0, 60, 40]], np.int32))   # a box filling the image: its own edge
    assert edge.std(axis=(0, 1)).max() == 0
    assert text_area(np.array([[0, 0, 30, 40], [15, 0, 45, 40]], np.int32), (40, 60)) == 0.75
    assert text_area(np.zeros((0, 4), np.int32), (40, 60)) == 0.0


# --- the masked score, with a curate-tiny that reads (pipeline.testing.reading_clip) ---------

SEED = 9   # held out: the reading model trains on seed 0


@pytest.fixture(scope="session")
def reading_clip(tmp_path_factory):
    """curate-tiny trained on world pairs plus pairs whose image writes out the caption
    (trained once, ~2 min on one thread, cached beside pytest's temporary folders)."""
    from pipeline.testing.reading_clip import ensure_reading_checkpoint

    return ensure_reading_checkpoint(tmp_path_factory.getbasetemp().parent / "curate-tiny-cache")


def scored_table(checkpoint, pairs: list) -> pa.Table:
    """uid, text, jpg, clip_score and text_embedding, as clip_score adds them."""
    from pipeline.clip.embeddings import embedding_array
    from pipeline.clip.model import load_clip
    from pipeline.clip.score import ClipScorer

    scorer = ClipScorer(load_clip("curate-tiny", str(checkpoint), device="cpu", precision="fp32"), batch_size=64)
    result = scorer.score([j for j, _ in pairs], [c for _, c in pairs], with_embeddings=True)
    return pa.table({"uid": [f"{i:04d}" for i in range(len(pairs))], "text": [c for _, c in pairs],
                     "jpg": [j for j, _ in pairs], "clip_score": pa.array(result.scores, pa.float32()),
                     "text_embedding": embedding_array(result.text_embeddings)})


@pytest.mark.slow   # trains the reading model once
def test_a_written_caption_loses_its_score_and_goes_a_described_picture_keeps_it(reading_clip):
    from pipeline.stages.text_mask import ClipSpec, MaskText, TextMaskSettings
    from pipeline.testing.reading_clip import spotting_pair
    from pipeline.testing.world import make_world

    n = 24
    pairs = [spotting_pair(i, SEED) for i in range(n)] + [(s.jpg, s.caption) for s in make_world(n, SEED)]
    spec = ClipSpec("curate-tiny", str(reading_clip), "cpu", "fp32", 64)
    table, extras = MaskText(TextMaskSettings(max_drop=0.3), spec, 0.5)(scored_table(reading_clip, pairs))
    score, masked = (table[c].to_numpy() for c in ("clip_score", "masked_clip_score"))
    reasons = table["_reason"].to_pylist()
    written, pictured = slice(0, n), slice(n, 2 * n)
    print(f"\nwritten captions: clip_score median {np.median(score[written]):.3f}, masked "
          f"{np.median(masked[written]):.3f}; pictures: {np.median(score[pictured]):.3f}")
    assert np.median(score[written]) > 0.7   # the model reads: a written caption scores high
    assert np.mean(masked[written] < 0.5 * score[written]) >= 0.8   # most of it is gone once masked
    assert reasons[written].count("text_spotting") >= 0.8 * n
    assert np.mean([len(b) > 0 for b in table["text_boxes"].to_pylist()[written]]) >= 0.9
    plain = np.array([not b for b in table["text_boxes"].to_pylist()[pictured]])
    print(f"pictures with a box found: {int((~plain).sum())} of {n}")
    assert plain.mean() >= 0.85                    # hardly any text found in the plain pictures,
    assert np.array_equal(masked[pictured][plain], score[pictured][plain])   # whose score stays as it was
    assert reasons[pictured] == [None] * n
    assert extras["rows"].tolist() == [2 * n, int(sum(len(b) > 0 for b in table["text_boxes"].to_pylist()))]
    assert len(extras["example_uid"]) == 8 and all(u < f"{n:04d}" for u in extras["example_uid"])


def serve(web, n: int) -> tuple[list, list, set]:
    """`n` world pictures and `n` pictures writing out their caption, served by `web`."""
    from pipeline.testing.reading_clip import spotting_pair
    from pipeline.testing.world import make_world

    urls, texts, written = [], [], set()
    for i, (jpg, caption) in enumerate([(s.jpg, s.caption) for s in make_world(n, SEED)]
                                       + [spotting_pair(i, SEED) for i in range(n)]):
        path = f"/text_mask/{i}.jpg"
        web.add_image(path, jpg)
        urls.append(web.url(path))
        texts.append(caption)
        if i >= n:
            written.add(urls[-1])
    return urls, texts, written


@pytest.mark.slow   # image pipelines on three engines
def test_local_ray_and_spark_keep_the_same_rows_and_write_the_same_tars(reading_clip, fakeweb, tmp_path):
    from tests.support import assert_run_invariants, kept_uids, read_dataset, run, tar_digests

    urls, texts, written = serve(fakeweb, 40)
    pairs = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"url": urls, "text": texts}), pairs)
    runs = {}
    for engine in ("local", "ray", "spark"):
        runs[engine] = tmp_path / engine
        run({"input": {"path": [str(pairs)], "part_rows": 20}, "output": str(runs[engine]), "engine": engine,
             "processes": 2, "ray": {"num_cpus": 2}, "spark": {"master": "local[2]"},
             "allow_networks": ["127.0.0.1/32"],
             "download": {"image_size": 64, "threads": 4, "timeout": 5, "part_rows": 20},
             "clip_score": {"model": "curate-tiny", "pretrained": str(reading_clip), "device": "cpu",
                            "precision": "fp32", "batch_size": 16, "threshold": 0.5},
             "text_mask": {"max_drop": 0.3, "batch_size": 8},
             "shard": {"samples_per_shard": 16}})
        summary = assert_run_invariants(runs[engine])
    assert kept_uids(runs["local"]) == kept_uids(runs["ray"]) == kept_uids(runs["spark"])
    assert tar_digests(runs["local"]) == tar_digests(runs["ray"]) == tar_digests(runs["spark"])
    stage = next(s for s in summary["stages"] if s["name"] == "text_mask")
    assert stage["dropped"].get("text_spotting", 0) >= 25   # most of the 40 written captions
    kept = read_dataset(runs["local"] / "kept")
    assert {"text_area", "text_boxes", "masked_clip_score"} <= set(kept.column_names)
    assert len(written & set(kept["url"].to_pylist())) < 15
    assert sum(u not in written for u in kept["url"].to_pylist()) >= 36   # the pictures stay
    record = summary_record(runs["local"])
    assert record["with_text"] >= 36 and record["examples"] and record["examples"][0]["masked_image"]


def summary_record(run_dir) -> dict:
    import glob
    import json

    [stats] = glob.glob(str(run_dir / "steps" / "*_text_mask" / "stats.json"))
    return json.loads(open(stats).read())["text_mask"]


@pytest.mark.slow   # an image pipeline on the local engine
def test_top_fraction_keeps_the_best_masked_scores_of_all_rows(reading_clip, fakeweb, tmp_path):
    from pipeline.stages.text_mask import MASKED_SCORE
    from tests.support import assert_run_invariants, read_dataset, run

    urls, texts, written = serve(fakeweb, 20)
    pairs = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"url": urls, "text": texts}), pairs)
    run({"input": {"path": [str(pairs)], "part_rows": 10}, "output": str(tmp_path / "run"), "processes": 2,
         "allow_networks": ["127.0.0.1/32"], "download": {"image_size": 64, "threads": 4, "timeout": 5},
         "clip_score": {"model": "curate-tiny", "pretrained": str(reading_clip), "device": "cpu",
                        "precision": "fp32", "batch_size": 16, "filter": "none"},
         "text_mask": {"filter": "top_fraction", "top_fraction": 0.5}})
    summary = assert_run_invariants(tmp_path / "run")
    kept = read_dataset(tmp_path / "run" / "kept")
    assert kept.num_rows == 20 == summary["input_rows"] - summary["stages"][-1]["dropped"]["text_spotting"]
    record = summary_record(tmp_path / "run")
    assert record["filter"] == "top_fraction" and min(kept[MASKED_SCORE].to_pylist()) >= record["threshold"]
    assert len(written & set(kept["url"].to_pylist())) <= 3   # the pictures rank above the written captions
    assert len(record["examples"]) == 8 and record["examples"][0]["masked_image"].startswith("data:image/jpeg")


def test_text_mask_needs_clip_score_and_takes_its_threshold(tmp_path):
    from pipeline.app import build_steps
    from pipeline.config import settings_from_dict
    from pipeline.errors import UserError

    base = {"input": {"path": [str(tmp_path / "in.parquet")]}, "download": {}, "text_mask": {}}
    with pytest.raises(UserError, match=r"^text_mask: needs a clip_score section before it"):
        build_steps(settings_from_dict(base, "c.yaml"))
    steps, _ = build_steps(settings_from_dict({**base, "clip_score": {"threshold": 0.31, "model": "curate-tiny"}},
                                           "c.yaml"))
    step = next(s for s in steps if s.name == "text_mask")
    assert step.threshold == pytest.approx(0.31) and step.spec.model == "curate-tiny"
    with pytest.raises(UserError, match=r"text_mask\.side: must be at least 32"):
        settings_from_dict({**base, "text_mask": {"side": 8}}, "c.yaml")
