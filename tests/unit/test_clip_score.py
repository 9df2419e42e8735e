import io
import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from pipeline.clip.model import load_clip, resolve_precision
from pipeline.clip.score import ClipScorer, can_trim_text, encode_text_trimmed, trim_tokens
from pipeline.clip.threshold import ScoreHistogram, top_fraction_threshold
from pipeline.errors import UserError
from pipeline.stages.clip_score import ClipScoreSettings, ClipScoreStage, low_score_reasons, score_histogram
from pipeline.testing.world import make_world, shuffled_captions

LONG_CAPTION = " ".join(["a very long caption about a red circle on a blue background"] * 6)


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Probability that a random positive outscores a random negative (ties count half)."""
    values = np.concatenate([positive, negative])
    order = values.argsort(kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    for value in np.unique(values):  # average ranks of ties
        ranks[values == value] = ranks[values == value].mean()
    n_pos, n_neg = len(positive), len(negative)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Two OpenMP threads on a shared 2-core machine spin against other jobs (10x slower)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny_clip(tiny_clip_checkpoint):
    return load_clip("curate-tiny", str(tiny_clip_checkpoint), device="cpu", precision="fp32")


def settings(checkpoint, **overrides):
    values = dict(model="curate-tiny", pretrained=str(checkpoint), threshold=0.3, batch_size=16,
                  device="cpu", precision="fp32", filter="threshold", top_fraction=0.5,
                  keep_embeddings=False)
    values.update(overrides)
    return ClipScoreSettings(**values)


def reference_scores(checkpoint, jpgs, captions) -> np.ndarray:
    """Plain open_clip: full 32-token padding, fp32, one batch."""
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms("curate-tiny", pretrained=str(checkpoint))
    model.eval()
    tokens = open_clip.get_tokenizer("curate-tiny")(captions)
    assert tokens.shape[1] == 32
    images = torch.stack([preprocess(Image.open(io.BytesIO(j))) for j in jpgs])
    with torch.no_grad():
        image_features = model.encode_image(images, normalize=True)
        text_features = model.encode_text(tokens, normalize=True)
    return (image_features * text_features).sum(-1).numpy()


def test_scores_equal_direct_open_clip(tiny_clip, tiny_clip_checkpoint):
    world = make_world(40, seed=11)
    jpgs = [s.jpg for s in world]
    captions = [s.caption for s in world]
    captions[5] = LONG_CAPTION  # truncated at the context length, EOT in the last column
    captions[17] = ""
    ours = ClipScorer(tiny_clip, batch_size=16).score(jpgs, captions).scores
    assert ours.dtype == np.float32
    threaded = ClipScorer(tiny_clip, batch_size=16, decode_workers=3).score(jpgs, captions).scores
    np.testing.assert_array_equal(ours, threaded)
    np.testing.assert_allclose(ours, reference_scores(tiny_clip_checkpoint, jpgs, captions), atol=1e-3)


def test_trimmed_text_tower_equals_full_padding(tiny_clip):
    model, tokenizer = tiny_clip.model, tiny_clip.tokenizer
    assert can_trim_text(model, tokenizer)
    tokens = tokenizer(["a red circle", "a green square on a white background", LONG_CAPTION, ""])
    trimmed = trim_tokens(tokenizer(["a red circle", "a green square on a white background"]))
    assert trimmed.shape[1] == 9  # <start> + 7 words + <end>
    with torch.no_grad():
        full = model.encode_text(tokens)
        short = encode_text_trimmed(model, trim_tokens(tokens[[0, 1, 3]]))
        assert torch.allclose(full[[0, 1, 3]], short, atol=1e-5)
        assert torch.allclose(full, encode_text_trimmed(model, trim_tokens(tokens)), atol=1e-5)


def test_trimming_matches_full_padding_on_vit_b_32():
    """The reference architecture (77-token context), random weights (no hub)."""
    import open_clip

    model = open_clip.create_model("ViT-B-32").eval()
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    assert can_trim_text(model, tokenizer)
    tokens = tokenizer(["a red circle", "a photo of a dog on a sofa in the sun", "", LONG_CAPTION * 2])
    with torch.no_grad():
        full = model.encode_text(tokens)
        assert torch.allclose(full[:3], encode_text_trimmed(model, trim_tokens(tokens[:3])), atol=1e-4)
        assert torch.allclose(full, encode_text_trimmed(model, trim_tokens(tokens)), atol=1e-4)


def test_text_tower_without_causal_mask_is_not_trimmed():
    import open_clip

    from pipeline.models import register_models

    register_models()
    config = open_clip.get_model_config("curate-tiny")
    model = open_clip.create_model("curate-tiny", text_cfg={**config["text_cfg"], "no_causal_mask": True})
    assert not can_trim_text(model, open_clip.get_tokenizer("curate-tiny"))


def test_matched_pairs_outscore_mismatched(tiny_clip):
    world = make_world(200, seed=7)
    jpgs, captions = [s.jpg for s in world], [s.caption for s in world]
    scorer = ClipScorer(tiny_clip, batch_size=64)
    matched = scorer.score(jpgs, captions).scores
    mismatched = scorer.score(jpgs, shuffled_captions(captions, seed=1)).scores
    assert roc_auc(matched, mismatched) >= 0.9


def test_stage_adds_scores_embeddings_and_reasons(tiny_clip_checkpoint):
    world = make_world(24, seed=5)
    jpgs = [s.jpg for s in world]
    jpgs[3], jpgs[4] = b"not an image", None
    texts = [s.caption for s in world]
    texts[6:12] = shuffled_captions(texts, seed=2)[6:12]
    table = pa.table({"uid": [str(i) for i in range(24)], "jpg": pa.array(jpgs, pa.binary()), "text": texts})
    stage = ClipScoreStage(settings(tiny_clip_checkpoint, keep_embeddings=True))
    stage.setup()
    scores_only = ClipScoreStage(settings(tiny_clip_checkpoint, threshold=-2.0))
    assert scores_only.resources.gpus == 0
    out = stage.process(table)
    assert out.num_rows == 24 and out.column_names[:3] == ["uid", "jpg", "text"]
    assert out.schema.field("clip_score").type == pa.float32()
    assert out.schema.field("image_embedding").type == pa.list_(pa.float16(), 64)
    scores = out["clip_score"].to_numpy(zero_copy_only=False)
    reasons = out["_reason"].to_pylist()
    assert np.isnan(scores[[3, 4]]).all() and reasons[3] == reasons[4] == "undecodable_image"
    for score, reason in zip(np.delete(scores, [3, 4]), np.delete(np.array(reasons, object), [3, 4])):
        assert reason == ("low_clip_score" if score < 0.3 else None)
    assert any(r == "low_clip_score" for r in reasons) and any(r is None for r in reasons)
    image_emb = np.array(out["image_embedding"].to_pylist(), np.float32)
    text_emb = np.array(out["text_embedding"].to_pylist(), np.float32)
    np.testing.assert_allclose((image_emb * text_emb).sum(-1)[0], scores[0], atol=5e-3)
    np.testing.assert_allclose(np.linalg.norm(image_emb[0]), 1.0, atol=5e-3)
    kept_all = scores_only.process(table.select(["jpg", "text"]))
    assert kept_all["_reason"].null_count == 22 and "image_embedding" not in kept_all.column_names


def test_stage_pickles_without_model_and_handles_edge_tables(tiny_clip_checkpoint):
    import pickle

    stage = ClipScoreStage(settings(tiny_clip_checkpoint, keep_embeddings=True))
    stage.setup()
    shipped = pickle.loads(pickle.dumps(stage))
    assert shipped.scorer is None and stage.scorer is not None
    empty = pa.table({"jpg": pa.array([], pa.binary()), "text": pa.array([], pa.string())})
    out = stage.process(empty)
    assert out.num_rows == 0 and out.schema.field("text_embedding").type == pa.list_(pa.float16(), 64)
    with pytest.raises(UserError, match="jpg"):
        stage.process(pa.table({"text": ["a red circle"]}))


def test_bf16_on_cpu_is_close_to_fp32(tiny_clip, tiny_clip_checkpoint):
    world = make_world(16, seed=3)
    jpgs, captions = [s.jpg for s in world], [s.caption for s in world]
    bf16 = load_clip("curate-tiny", str(tiny_clip_checkpoint), device="cpu", precision="bf16")
    low = ClipScorer(bf16, batch_size=8).score(jpgs, captions).scores
    full = ClipScorer(tiny_clip, batch_size=8).score(jpgs, captions).scores
    assert np.abs(low - full).max() < 0.05


def test_top_fraction_exact_and_histogram_agree():
    rng = np.random.default_rng(0)
    parts = [rng.uniform(-0.2, 0.6, size=n).astype(np.float32) for n in (1000, 10, 2500)]
    parts[1][3] = np.nan
    scores = np.concatenate(parts)
    finite = scores[np.isfinite(scores)]
    exact = top_fraction_threshold(parts, 0.3)
    assert (finite >= exact).sum() == int(np.ceil(0.3 * len(finite)))
    merged = ScoreHistogram()
    for part in parts:
        merged = merged.merge(ScoreHistogram.of(part))
    merged = ScoreHistogram.from_dict(json.loads(json.dumps(merged.to_dict())))
    approx = merged.threshold(0.3)
    assert approx <= exact and (finite >= approx).sum() - (finite >= exact).sum() <= 3
    assert top_fraction_threshold(parts, 0.0) == np.inf and merged.threshold(0.0) == np.inf
    assert (finite >= top_fraction_threshold(parts, 1.0)).all() and (finite >= merged.threshold(1.0)).all()
    table = pa.table({"clip_score": pa.array(scores, pa.float32())})
    assert score_histogram(table).total == len(finite)
    reasons = low_score_reasons(table["clip_score"], exact)
    assert reasons.null_count == (finite >= exact).sum() + 1  # NaN is no low score (undecodable)


def test_loader_rejects_bad_settings(tmp_path):
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    with pytest.raises(UserError, match="checkpoint file not found"):
        load_clip("curate-tiny", str(tmp_path / "missing.pt"), device="cpu")
    with pytest.raises(UserError, match="precision"):
        load_clip("curate-tiny", None, device="cpu", precision="fp8")
    with pytest.raises(UserError, match="no-such-model"):
        load_clip("no-such-model", None, device="cpu")


def test_unknown_architecture_is_registered_from_model_config_beside(tiny_clip_checkpoint, tmp_path):
    import shutil

    shutil.copyfile(tiny_clip_checkpoint, tmp_path / "weights.pt")
    shutil.copyfile(tiny_clip_checkpoint.parent / "model_config.json", tmp_path / "model_config.json")
    clip = load_clip("my-tiny-arch", str(tmp_path / "weights.pt"), device="cpu")
    world = make_world(4, seed=1)
    scores = ClipScorer(clip).score([s.jpg for s in world], [s.caption for s in world]).scores
    assert np.isfinite(scores).all() and clip.precision == "fp32"


def test_checkpoint_loads_with_plain_open_clip(tiny_clip_checkpoint):
    """Another process, no project code: add_model_config(folder) + create_model_and_transforms."""
    state = torch.load(tiny_clip_checkpoint, weights_only=True)
    assert state["epoch"] >= 1 and "visual.conv1.weight" in state["state_dict"]
    assert (tiny_clip_checkpoint.parent / "model_config.json").is_file()
    script = (
        "import sys, open_clip\n"
        "open_clip.add_model_config(sys.argv[1])\n"
        "m, _, p = open_clip.create_model_and_transforms('curate-tiny', pretrained=sys.argv[2])\n"
        "print(type(m).__name__, p.transforms[0].size)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tiny_clip_checkpoint.parent),
                           str(tiny_clip_checkpoint)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == "CLIP"
