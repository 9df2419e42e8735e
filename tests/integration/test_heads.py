"""heads on world images through download and clip_score (curate-tiny): a logistic-regression
head trained here on curate-tiny image embeddings to call one colour "unsafe" drops that
colour's rows as `nsfw` and hardly any other; every input row is in the ledger once; the
score column is in kept/, the embeddings only where a later step or the user keeps them.

curate-tiny separates the shape colours well (not shapes): the head is trained on world
images that are not served (indices from TRAIN_FROM on), and scores the served ones.
"""
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.testing.fakeweb import FakeWeb
from pipeline.testing.world import describe, make_sample
from tests.support import assert_run_invariants, read_dataset, run

pytestmark = pytest.mark.slow  # image pipelines through download and clip_score

WORLD_SEED = 5
UNSAFE = "green"
SERVED = 200          # world indices 0..199 go through the pipeline
TRAIN_FROM, TRAIN = 1000, 400


def train_head(checkpoint, path) -> None:
    """Logistic regression on curate-tiny's L2-normalised image embeddings: UNSAFE vs the
    rest (seeded, full batch), saved as a Linear state dict (LAION's format)."""
    from pipeline.clip.model import load_clip
    from pipeline.clip.score import ClipScorer

    samples = [make_sample(i, WORLD_SEED, 64) for i in range(TRAIN_FROM, TRAIN_FROM + TRAIN)]
    scorer = ClipScorer(load_clip("curate-tiny", str(checkpoint), device="cpu", precision="fp32"), batch_size=64)
    result = scorer.score([s.jpg for s in samples], [s.caption for s in samples], with_embeddings=True)
    x = torch.from_numpy(result.image_embeddings.astype(np.float32))
    x = x / x.norm(dim=1, keepdim=True)
    y = torch.tensor([describe(i, WORLD_SEED).colour == UNSAFE for i in range(TRAIN_FROM, TRAIN_FROM + TRAIN)],
                     dtype=torch.float32)
    torch.manual_seed(0)
    head = torch.nn.Linear(x.shape[1], 1)
    optimiser = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(600):
        optimiser.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(head(x)[:, 0], y)
        loss.backward()
        optimiser.step()
    torch.save(head.state_dict(), path)


def config_for(folder, pairs, checkpoint, head, name: str, processes: int, **extra) -> dict:
    return {"input": {"path": [str(pairs)], "part_rows": 50}, "output": str(folder / name),
            "engine": "local", "processes": processes, "allow_networks": ["127.0.0.1/32"],
            "download": {"image_size": 64, "threads": 8, "timeout": 5, "part_rows": 50},
            "clip_score": {"model": "curate-tiny", "pretrained": str(checkpoint), "device": "cpu",
                           "precision": "fp32", "batch_size": 64, "filter": "none"},
            "heads": {"heads": [{"name": "nsfw", "path": str(head), "activation": "sigmoid", "drop_above": 0.5}]},
            **extra}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_clip_checkpoint):
    """The head, then SERVED world images through download, clip_score and heads on one
    process ("plain"), and on two with semantic_dedup after heads ("semantic"); yields
    (folder, colour by url)."""
    folder = tmp_path_factory.mktemp("heads")
    head = folder / "nsfw_head.pt"
    train_head(tiny_clip_checkpoint, head)
    with FakeWeb() as web:
        urls, captions, colour = [], [], {}
        for i in range(SERVED):
            sample = make_sample(i, WORLD_SEED, 64)
            web.add_image(f"/h/{i}.jpg", sample.jpg)
            urls.append(web.url(f"/h/{i}.jpg"))
            captions.append(sample.caption)
            colour[urls[-1]] = describe(i, WORLD_SEED).colour
        pairs = folder / "pairs.parquet"
        pq.write_table(pa.table({"url": urls, "text": captions}), pairs)
        run(config_for(folder, pairs, tiny_clip_checkpoint, head, "plain", 1))
        run(config_for(folder, pairs, tiny_clip_checkpoint, head, "semantic", 2,
                       semantic_dedup={"clusters": 1}))
        yield folder, colour


def heads_drops(run_dir) -> dict:
    ledger = read_dataset(run_dir / "ledger")
    step = ledger.filter(pc.equal(ledger["stage"], "heads"))
    return dict(zip(step["url"].to_pylist(), step["reason"].to_pylist()))


def test_head_drops_the_unsafe_colour_and_little_else(runs):
    folder, colour = runs
    summary = assert_run_invariants(folder / "plain")
    stages = {s["name"]: s for s in summary["stages"]}
    assert [s["name"] for s in summary["stages"]][-3:] == ["download", "clip_score", "heads"]
    assert stages["clip_score"]["dropped"] == {} and stages["download"]["rows_out"] == SERVED
    dropped = heads_drops(folder / "plain")
    assert set(dropped.values()) == {"nsfw"}
    unsafe = [u for u, c in colour.items() if c == UNSAFE]
    others = [u for u, c in colour.items() if c != UNSAFE]
    removed = sum(u in dropped for u in unsafe) / len(unsafe)
    removed_others = sum(u in dropped for u in others) / len(others)
    print(f"\nnsfw head: {removed:.3f} of {len(unsafe)} {UNSAFE} rows removed, "
          f"{removed_others:.3f} of {len(others)} others")
    assert len(unsafe) >= 20
    assert removed >= 0.9 and removed_others <= 0.05

    kept = read_dataset(folder / "plain" / "kept")
    assert kept.schema.field("nsfw_score").type == pa.float32()
    scores = kept["nsfw_score"].to_numpy()
    assert kept["nsfw_score"].null_count == 0 and scores.max() <= 0.5 and scores.min() >= 0.0
    assert "image_embedding" not in kept.column_names and "text_embedding" not in kept.column_names


def test_embeddings_go_on_to_semantic_dedup_after_heads(runs):
    folder, _ = runs
    summary = assert_run_invariants(folder / "semantic")
    assert [s["name"] for s in summary["stages"]][-3:] == ["clip_score", "heads", "semantic_dedup"]
    assert heads_drops(folder / "semantic") == heads_drops(folder / "plain"), "same drops on two processes"
    kept = read_dataset(folder / "semantic" / "kept")
    assert "nsfw_score" in kept.column_names
    assert "image_embedding" not in kept.column_names, "embeddings kept only with keep_embeddings"
