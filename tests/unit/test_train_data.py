"""pipeline.train.data: shard discovery and how ranks and workers share the samples."""
from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from pipeline.errors import UserError
from pipeline.shards import write_shards
from pipeline.testing.world import world_rows
from pipeline.train.data import ShardSamples, StreamConfig, batch_stream, find_shards, split_mode


@pytest.fixture(scope="module")
def shard_dirs(tmp_path_factory) -> dict[str, Path]:
    rows = world_rows(48, seed=0, image_size=32)
    root = tmp_path_factory.mktemp("train_data")
    write_shards(rows, root / "one", samples_per_shard=48)
    write_shards(rows, root / "four", samples_per_shard=12)
    return {"one": root / "one", "four": root / "four"}


def _keys(urls: list[str], rank: int, world: int, n: int, **config) -> list[str]:
    stream = ShardSamples(urls, rank, world, StreamConfig(batch_size=1, shuffle_buffer=1, **config))
    return [s["__key__"] for s in itertools.islice(iter(stream), n)]


def test_find_shards_folder_brace_and_missing(shard_dirs):
    folder = find_shards(str(shard_dirs["four"]))
    assert [Path(u).name for u in folder.urls] == [f"0000{i}.tar" for i in range(4)]
    assert folder.num_samples == 48
    braced = find_shards(str(shard_dirs["four"] / "{00000..00001}.tar"))
    assert len(braced.urls) == 2 and braced.num_samples == 24
    with pytest.raises(UserError, match="00008.tar does not exist"):
        find_shards(str(shard_dirs["four"] / "{00008..00009}.tar"))
    with pytest.raises(UserError, match="no .tar shards"):
        find_shards(str(shard_dirs["four"].parent))


def test_split_modes():
    assert split_mode(8, 4, resample=False) == "shards"
    assert split_mode(1, 2, resample=False) == "samples"
    assert split_mode(1, 2, resample=True) == "resampled"


def test_one_shard_two_ranks_split_by_samples(shard_dirs):
    urls = find_shards(str(shard_dirs["one"])).urls
    rank0, rank1 = _keys(urls, 0, 2, 24), _keys(urls, 1, 2, 24)
    assert not set(rank0) & set(rank1)
    assert len(set(rank0) | set(rank1)) == 48  # one epoch: every sample exactly once


def test_four_shards_two_ranks_split_by_shards(shard_dirs):
    urls = find_shards(str(shard_dirs["four"])).urls
    rank0, rank1 = _keys(urls, 0, 2, 24), _keys(urls, 1, 2, 24)
    shards0, shards1 = {k[:5] for k in rank0}, {k[:5] for k in rank1}
    assert len(shards0) == len(shards1) == 2 and not shards0 & shards1
    assert len(set(rank0) | set(rank1)) == 48


def test_resampled_streams_differ_per_rank_and_never_end(shard_dirs):
    urls = find_shards(str(shard_dirs["one"])).urls
    rank0, rank1 = _keys(urls, 0, 2, 150, resample=True), _keys(urls, 1, 2, 150, resample=True)
    assert len(rank0) == len(rank1) == 150


def test_batches_with_more_workers_than_shards(shard_dirs):
    """1 shard, 2 ranks x 2 workers: the last rank still gets full batches (no starving worker)."""
    import open_clip
    import torch

    from pipeline.models import register_models

    register_models()
    preprocess = open_clip.image_transform(64, is_train=True)
    tokenizer = open_clip.get_tokenizer("curate-tiny")
    shards = find_shards(str(shard_dirs["one"]))
    stream = batch_stream(shards, preprocess, tokenizer, StreamConfig(batch_size=8, workers=2), rank=1,
                          world_size=2)
    batches = list(itertools.islice(stream, 4))  # > one epoch of this rank's 24 samples
    assert len(batches) == 4, "the stream ended before 4 batches"
    for images, tokens in batches:
        assert images.shape == (8, 3, 64, 64) and tokens.shape == (8, 32)
        assert images.dtype == torch.float32
