"""heads: LAION-format state dicts load as they are and score as the torch modules do; bad
files and settings are one UserError line naming the head and its file; the step keeps or
drops the embedding columns as the run needs."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

from pipeline.app import build_steps
from pipeline.clip.embeddings import embedding_array
from pipeline.config import settings_from_dict
from pipeline.core.steps import execute_step
from pipeline.engines.local import LocalEngine
from pipeline.errors import UserError
from pipeline.stages import registered_stages
from pipeline.stages.heads import (
    Head,
    HeadSettings,
    HeadsSettings,
    HeadsStep,
    apply_heads,
    check_settings,
    dense_layers_state_dict,
    load_head,
)


def unit_rows(n: int, dim: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def saved(tmp_path, name: str, state) -> str:
    path = tmp_path / name
    torch.save(state, path)
    return str(path)


def torch_scores(module: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module.eval()(torch.from_numpy(np.ascontiguousarray(x)))[:, 0].numpy()


def test_laion_linear_state_dict_scores_as_the_linear_itself(tmp_path):
    """sa_0_4_vit_b_32_linear.pth is `torch.save(nn.Linear(512, 1).state_dict())`."""
    torch.manual_seed(0)
    linear = nn.Linear(512, 1)
    nn.init.constant_(linear.bias, 5.0)   # LAION's aesthetic scores sit around 5
    path = saved(tmp_path, "sa_0_4_vit_b_32_linear.pth", linear.state_dict())
    head = load_head(HeadSettings(name="aesthetic", path=path, drop_below=5.0))
    assert head.dim == 512 and len(head.layers) == 1
    x = unit_rows(300, 512)
    expected = torch_scores(linear, x)
    assert np.abs(head.score(x) - expected).max() < 1e-6
    assert 0.2 < (expected < 5.0).mean() < 0.8   # the threshold below cuts somewhere

    # through the stage's table op: float16 columns (re-normalised), null and zero rows
    x16 = x.astype(np.float16)
    embeddings = embedding_array(x16)
    zero = np.zeros(512, np.float16)
    column = pa.array(embeddings.to_pylist()[:298] + [None, zero.tolist()], embeddings.type)
    table = pa.table({"uid": [str(i) for i in range(300)], "image_embedding": column,
                      "text_embedding": column})
    out = apply_heads(table, [head])
    scores = out["aesthetic_score"]
    assert scores.type == pa.float32()
    assert scores.null_count == 2 and not scores[298].is_valid and not scores[299].is_valid
    renormalised = x16[:298].astype(np.float32)
    renormalised /= np.linalg.norm(renormalised, axis=1, keepdims=True)
    want = torch_scores(linear, renormalised)
    got = np.array(scores.to_pylist()[:298], dtype=np.float32)
    assert np.abs(got - want).max() < 1e-6
    reasons = out["_reason"].to_pylist()
    assert reasons[:298] == [("low_aesthetic" if s < 5.0 else None) for s in got]
    assert reasons[298:] == [None, None], "rows without an embedding are never dropped by heads"


class LaionMLP(nn.Module):
    """The layout of LAION's improved-aesthetic-predictor: Linear layers with dropout between
    (keys layers.0, .2, .4, .6, .7), no activations; here with 6 Linear layers so that a key
    `layers.10` comes after `layers.8`."""

    def __init__(self, dim: int):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(dim, 64), nn.Dropout(0.2), nn.Linear(64, 32), nn.Dropout(0.2),
                                    nn.Linear(32, 16), nn.Dropout(0.1), nn.Linear(16, 16), nn.Dropout(0.1),
                                    nn.Linear(16, 8), nn.Dropout(0.1), nn.Linear(8, 1))

    def forward(self, x):
        return self.layers(x)


def test_mlp_chain_loads_in_key_order(tmp_path):
    torch.manual_seed(1)
    mlp = LaionMLP(64)
    state = mlp.state_dict()
    assert "layers.10.weight" in state
    shuffled = dict(reversed(list(state.items())))   # insertion order does not matter
    head = load_head(HeadSettings(name="aesthetic", path=saved(tmp_path, "mlp.pth", shuffled)))
    assert [w.shape[0] for w, _ in head.layers] == [64, 32, 16, 16, 8, 1]
    x = unit_rows(200, 64, seed=2)
    assert np.abs(head.score(x) - torch_scores(mlp, x)).max() < 1e-5


def test_relu_between_layers_and_sigmoid_after(tmp_path):
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 1), nn.Sigmoid())
    path = saved(tmp_path, "nsfw.pt", net.state_dict())
    x = unit_rows(100, 32, seed=3)
    plain = load_head(HeadSettings(name="nsfw", path=path))
    both = load_head(HeadSettings(name="nsfw", path=path, activation="sigmoid", hidden_activation="relu"))
    assert np.abs(both.score(x) - torch_scores(net, x)).max() < 1e-6
    assert np.abs(plain.score(x) - torch_scores(net, x)).max() > 1e-3, "the activations matter here"


def test_keras_dense_layers_with_normalization_convert_exactly(tmp_path):
    """LAION's NSFW detector's layout: Normalization, Dense+ReLU x3, Dense, sigmoid."""
    rng = np.random.default_rng(4)
    dim, sizes = 24, [24, 16, 12, 8, 1]
    dense = [[rng.normal(size=(a, b)) / np.sqrt(a), rng.normal(size=b) * 0.1] for a, b in zip(sizes, sizes[1:])]
    mean, variance = rng.normal(size=(1, dim)) * 0.05, rng.uniform(0.001, 0.01, size=(1, dim))
    x = unit_rows(64, dim, seed=5).astype(np.float64)
    h = (x - mean) / np.sqrt(variance)
    for i, (kernel, bias) in enumerate(dense):
        h = h @ kernel + bias
        h = np.maximum(h, 0) if i < len(dense) - 1 else 1 / (1 + np.exp(-h))
    path = saved(tmp_path, "nsfw.pt", dense_layers_state_dict(dense, mean, variance))
    head = load_head(HeadSettings(name="nsfw", path=path, activation="sigmoid", hidden_activation="relu"))
    assert np.abs(head.score(x.astype(np.float32)) - h[:, 0]).max() < 1e-4
    assert h[:, 0].std() > 0.05, "the reference varies (the test could fail)"


def test_bad_heads_are_one_line_naming_head_and_file(tmp_path):
    good = saved(tmp_path, "nsfw.pt", nn.Linear(64, 1).state_dict())
    head = load_head(HeadSettings(name="nsfw", path=good))
    table = pa.table({"image_embedding": embedding_array(unit_rows(4, 32)),
                      "text_embedding": embedding_array(unit_rows(4, 32))})
    with pytest.raises(UserError, match=rf"^heads: nsfw: {good}: takes 64-dim embeddings, clip_score's "
                                        r"image embeddings are 32-dim"):
        apply_heads(table, [head])

    garbage = tmp_path / "watermark.pt"
    garbage.write_bytes(b"\x00not a torch file" * 40)
    with pytest.raises(UserError, match=rf"^heads: watermark: {garbage}: not a PyTorch state dict"):
        load_head(HeadSettings(name="watermark", path=str(garbage)))
    with pytest.raises(UserError, match=rf"^heads: nsfw: {tmp_path}/missing.pt: no such file$"):
        load_head(HeadSettings(name="nsfw", path=str(tmp_path / "missing.pt")))
    module = saved(tmp_path, "module.pt", nn.Linear(64, 1))   # the module, not its state dict
    with pytest.raises(UserError, match=r"^heads: m: .*module.pt: not a PyTorch state dict \(save model.state_dict"):
        load_head(HeadSettings(name="m", path=module))
    two = saved(tmp_path, "two.pt", nn.Linear(64, 2).state_dict())
    with pytest.raises(UserError, match=r"^heads: t: .*two.pt: the last layer gives 2 outputs"):
        load_head(HeadSettings(name="t", path=two))
    norm = saved(tmp_path, "bn.pt", nn.Sequential(nn.BatchNorm1d(64), nn.Linear(64, 1)).state_dict())
    with pytest.raises(UserError, match=r"^heads: b: .*bn.pt: unexpected entry '0.running_mean'"):
        load_head(HeadSettings(name="b", path=norm))
    broken = saved(tmp_path, "broken.pt", {"layers.0.weight": torch.zeros(8, 64), "layers.1.weight": torch.zeros(1, 4)})
    with pytest.raises(UserError, match=r"^heads: c: .*broken.pt: layers.1.weight takes 4 inputs, "
                                        r"the layer before gives 8$"):
        load_head(HeadSettings(name="c", path=broken))

    with pytest.raises(UserError, match=rf"^heads: nsfw: {good}: set drop_above or drop_below, not both$"):
        check_settings(HeadsSettings([HeadSettings(name="nsfw", path=good, drop_above=0.5, drop_below=0.1)]))
    with pytest.raises(UserError, match=r"^heads: heads\[1\]: .*: name must be letters, digits and _"):
        check_settings(HeadsSettings([HeadSettings(name="a", path=good), HeadSettings(path=good)]))
    with pytest.raises(UserError, match=r"^heads: a b: .*: name must be .*, got 'a b'$"):
        check_settings(HeadsSettings([HeadSettings(name="a b", path=good)]))
    with pytest.raises(UserError, match=r"^heads: a: .*: two heads have this name"):
        check_settings(HeadsSettings([HeadSettings(name="a", path=good), HeadSettings(name="a", path=good)]))
    with pytest.raises(UserError, match=r"^heads: a: \(no path\): no path"):
        check_settings(HeadsSettings([HeadSettings(name="a")]))
    with pytest.raises(UserError, match=r"heads.heads\[0\].activation: must be one of 'none', 'sigmoid'"):
        settings_from_dict({"heads": {"heads": [{"name": "a", "path": good, "activation": "relu"}]}}, "c.yaml")


def run_settings(head: str, **sections):
    return settings_from_dict({"input": {"path": ["x.parquet"]}, "clip_score": {}, "heads": {"heads": [
        {"name": "nsfw", "path": head, "drop_above": 0.5}]}, **sections}, "c.yaml")


def test_embeddings_are_made_for_heads_and_kept_only_when_needed(tmp_path, monkeypatch):
    """From the declarations alone: clip_score adds the embeddings heads reads; they are
    hidden after their last reader unless clip_score keeps them."""
    names = [m.SECTION for m in registered_stages()]
    assert names.index("heads") == names.index("text_mask") + 1 == names.index("clip_score") + 2 \
        == names.index("semantic_dedup") - 1   # text_mask (not in these runs) between clip_score and heads
    monkeypatch.chdir(tmp_path)
    saved(tmp_path, "nsfw.pt", nn.Linear(512, 1).state_dict())   # ViT-B-32's size, clip_score's default

    def planned(settings):
        steps, plan = build_steps(settings)
        return {step.name: (step, hidden) for step, hidden in zip(steps, plan.hidden)}

    plain = planned(run_settings("nsfw.pt"))
    assert plain["clip_score"][0].settings.keep_embeddings, "clip_score embeds for heads"
    assert plain["clip_score"][1] == ("text_embedding",), "heads reads only the image embedding here"
    assert plain["heads"][1] == ("image_embedding", "text_embedding")
    assert plain["heads"][0].settings.heads[0].path == str(tmp_path / "nsfw.pt"), "workers may start elsewhere"
    later = planned(run_settings("nsfw.pt", semantic_dedup={}))
    assert later["heads"][1] == ("text_embedding",) and later["semantic_dedup"][1] == ("image_embedding",
                                                                                       "text_embedding")
    kept = planned(run_settings("nsfw.pt", clip_score={"keep_embeddings": True}))
    assert kept["heads"][1] == (), "kept: never hidden"


def test_wrong_files_fail_when_the_run_is_built(tmp_path):
    """Before download and clip_score spend hours: a missing file, or a head for another CLIP
    model where clip_score's model config tells its size."""
    other = saved(tmp_path, "l14.pt", nn.Linear(768, 1).state_dict())
    settings = run_settings(other)
    with pytest.raises(UserError, match=rf"^heads: nsfw: {other}: takes 768-dim embeddings, clip_score's model "
                                        r"gives 512-dim embeddings \(a head trained for another CLIP model\?\)$"):
        build_steps(settings)
    build_steps(run_settings(other, clip_score={"model": "ViT-L-14"}))
    with pytest.raises(UserError, match=r"^heads: nsfw: .*typo.pt: no such file$"):
        build_steps(run_settings(str(tmp_path / "typo.pt")))


def run_heads_step(tmp_path, settings: HeadsSettings, name: str):
    x = unit_rows(40, 16, seed=6)
    part = tmp_path / f"{name}-in.parquet"
    pq.write_table(pa.table({"uid": [f"u{i:02d}" for i in range(40)],
                             "url": [f"http://a.example/{i}" for i in range(40)],
                             "image_embedding": embedding_array(x), "text_embedding": embedding_array(x[::-1])}), part)
    with LocalEngine(1) as engine:
        return execute_step(HeadsStep(settings), engine, str(tmp_path / name), 0, 0, [str(part)])


def test_step_scores_drops_and_accounts(tmp_path):
    torch.manual_seed(3)
    a, b = nn.Linear(16, 1), nn.Linear(16, 1)
    settings = HeadsSettings([
        HeadSettings(name="nsfw", path=saved(tmp_path, "a.pt", a.state_dict()), drop_above=0.0),
        HeadSettings(name="watermark", path=saved(tmp_path, "b.pt", b.state_dict()), drop_below=0.0, input="text"),
        HeadSettings(name="style", path=saved(tmp_path, "c.pt", b.state_dict()))])
    record = run_heads_step(tmp_path, settings, name="drop")
    x = unit_rows(40, 16, seed=6).astype(np.float16).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    first, second = torch_scores(a, x) > 0, torch_scores(b, x[::-1]) < 0
    assert first.sum() and (second & ~first).sum(), "both heads drop rows here"
    assert record["dropped"] == {"nsfw": int(first.sum()), "watermark": int((second & ~first).sum())}
    assert record["rows_in"] == 40 and record["rows_out"] == int((~first & ~second).sum())
    kept = pq.read_table(record["parts"][0])
    assert {"nsfw_score", "watermark_score", "style_score"} <= set(kept.column_names)
    assert {"image_embedding", "text_embedding"} <= set(kept.column_names), "the run hides them, not the step"

    wrong = HeadsSettings([HeadSettings(name="nsfw", path=saved(tmp_path, "w.pt", nn.Linear(8, 1).state_dict()))])
    with pytest.raises(UserError, match=r"^heads: nsfw: .*w.pt: takes 8-dim embeddings, clip_score's image "
                                        r"embeddings are 16-dim"):
        run_heads_step(tmp_path, wrong, name="wrong")
    assert not (tmp_path / "wrong" / "steps").exists() or not list((tmp_path / "wrong").rglob("done/*.json"))


def test_head_of_zero_rows(tmp_path):
    head = Head(HeadSettings(name="n", path="p"), [(torch.zeros(1, 8), torch.zeros(1))])
    assert head.score(np.zeros((0, 8), np.float32)).shape == (0,)
