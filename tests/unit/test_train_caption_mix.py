"""train.caption_mix: each sample trains on its synthetic caption (`syn.txt`) or its alt-text
as a hash of (seed, epoch, key) says: the asked proportions within sampling error, the same
batches for the same seed, other choices in another epoch or with another seed, the alt-text
where a sample has no synthetic caption; the config's section and the realized-mix counter."""
from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pyarrow as pa
import pytest
import torch

from pipeline.config import settings_from_dict
from pipeline.errors import UserError
from pipeline.shards import write_shards
from pipeline.stages.recaption import CAPTION_TYPE
from pipeline.testing.world import world_rows
from pipeline.train.data import MixCaptions, ShardSamples, StreamConfig, batch_stream, find_shards, use_synthetic
from pipeline.train.steplog import MixCount

ROWS = 120


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """ROWS samples in 6 shards; every tenth has no synthetic caption."""
    rows = world_rows(ROWS, seed=1, image_size=32)
    captions = [[] if i % 10 == 0 else [{"text": f"synthetic {row['uid']}", "model": "m", "prompt": "",
                                         "seconds": 0.1}] for i, row in enumerate(rows)]
    table = pa.Table.from_pylist(rows).append_column("captions", pa.array(captions, pa.list_(CAPTION_TYPE)))
    folder = tmp_path_factory.mktemp("mix") / "shards"
    write_shards(table, folder, samples_per_shard=20, warn_few=False)
    return find_shards(str(folder))


def test_use_synthetic_gives_the_asked_share():
    for fraction in (0.0, 0.2, 0.8, 1.0):
        chosen = sum(use_synthetic(3, 0, f"{i:09d}", fraction) for i in range(20000))
        assert abs(chosen / 20000 - fraction) <= 4 * math.sqrt(fraction * (1 - fraction) / 20000) + 1e-9


def choices(shards, seed: int, epochs: int = 2) -> list[tuple]:
    """(epoch, key, has syn.txt, synthetic?, caption) of every sample of `epochs` epochs, one slot."""
    stream = ShardSamples(shards.urls, 0, 1, StreamConfig(batch_size=1, seed=seed, shuffle_buffer=1))
    mix = MixCaptions(seed, 0.8)
    found = []
    for sample in itertools.islice(iter(stream), ROWS * epochs):
        has = "syn.txt" in sample
        sample = mix(sample)
        found.append((sample["__epoch__"], sample["__key__"], has, sample["__synthetic__"], sample["txt"].decode()))
    return found


def test_mix_per_sample_and_epoch(shards):
    first = choices(shards, seed=7)
    assert [c[0] for c in first] == [0] * ROWS + [1] * ROWS
    assert sum(not c[2] for c in first) == 2 * ROWS // 10
    assert all(not c[3] and not c[4].startswith("synthetic ") for c in first if not c[2])   # alt-text only
    assert all(c[4].startswith("synthetic ") == c[3] for c in first)
    eligible = [c for c in first if c[2]]
    share = sum(c[3] for c in eligible) / len(eligible)
    assert abs(share - 0.8) <= 4 * math.sqrt(0.16 / len(eligible)), share
    by_epoch = [{c[1]: c[3] for c in first if c[0] == e} for e in (0, 1)]
    assert by_epoch[0] != by_epoch[1]   # a new draw each epoch
    assert choices(shards, seed=7) == first   # the same for the same seed
    assert [c[3] for c in choices(shards, seed=8)] != [c[3] for c in first]


def tokens_of(text: str) -> torch.Tensor:
    return torch.tensor([list(text.encode()[:48].ljust(48, b" "))])


def batches(shards, seed: int, n: int) -> list[tuple]:
    config = StreamConfig(batch_size=8, workers=0, seed=seed, synthetic_fraction=0.8)
    stream = batch_stream(shards, lambda image: torch.zeros(1), tokens_of, config)
    return list(itertools.islice(stream, n))


def test_batches_carry_the_choice_and_repeat_for_a_seed(shards):
    first = batches(shards, 4, 20)
    assert all(len(b) == 3 and b[2].shape == (8,) for b in first)
    again = batches(shards, 4, 20)
    assert all(torch.equal(a[1], b[1]) and torch.equal(a[2], b[2]) for a, b in zip(first, again))
    texts = [bytes(row.tolist()).decode().strip() for b in first for row in b[1]]
    flags = [bool(f) for b in first for f in b[2]]
    assert all(t.startswith("synthetic ") == f for t, f in zip(texts, flags))
    count = MixCount()
    for b in first:
        assert len(count.counted(b)) == 2
    assert count.summary()["samples"] == 160 and 0.55 < count.summary()["synthetic"] < 0.9
    assert set(count.recent()) == {"synthetic_fraction"} and count.recent() == {}


def test_config_section():
    base = {"input": "x.parquet", "output": "out", "train": {"caption_mix": {"original": 0.2, "synthetic": 0.8}}}
    mix = settings_from_dict(base, "c.yaml").section("train").caption_mix
    assert mix.synthetic_fraction == pytest.approx(0.8)
    with pytest.raises(UserError, match="caption_mix"):
        settings_from_dict({**base, "train": {"caption_mix": {"original": 0, "synthetic": 0}}}, "c.yaml")


@pytest.mark.slow
def test_the_trainer_logs_the_realized_mix(shards, tmp_path):
    from pipeline.train.loop import run_training
    from pipeline.train.settings import CaptionMix, TrainSettings

    settings = TrainSettings(model="curate-tiny", steps=4, batch_size=8, launcher="inline", warmup=1, workers=0,
                             checkpoint_every=4, precision="fp32", caption_mix=CaptionMix(0.2, 0.8))
    data = str(Path(shards.urls[0]).parent)
    result = run_training(settings, data, tmp_path / "train", device=torch.device("cpu"), distributed=False)
    assert result["caption_mix"]["asked_synthetic"] == 0.8 and result["caption_mix"]["samples"] == 32
    assert 0.4 <= result["caption_mix"]["synthetic"] <= 1.0
    lines = [json.loads(line) for line in (tmp_path / "train" / "log.jsonl").read_text().splitlines()]
    assert any("synthetic_fraction" in line for line in lines)


def test_the_mix_survives_the_job_file(tmp_path):
    """torchrun and Ray workers rebuild the settings from `dataclasses.asdict` in a job file."""
    import dataclasses

    from pipeline.train.launch import write_job
    from pipeline.train.settings import CaptionMix, TrainSettings
    from pipeline.train.worker import read_job

    settings = TrainSettings(caption_mix=CaptionMix(0.2, 0.8))
    rebuilt, _, _ = read_job(write_job(settings, "shards", str(tmp_path)))
    assert rebuilt.caption_mix == CaptionMix(0.2, 0.8) and dataclasses.asdict(rebuilt) == dataclasses.asdict(settings)
