"""Training batches from our WebDataset shards (`jpg` + `txt`), split across ranks and workers.

`find_shards(data)` accepts a folder of `*.tar` (with `sizes.json`), a brace pattern
(`shards/{00000..00012}.tar`) or a single tar. `batch_stream(...)` is an endless stream of
`(images, tokens)` batches for one rank; training is counted in steps, so every rank gets
exactly as many batches as it asks for and no rank can run dry and hang the others.

Each (rank, dataloader worker) pair is a *slot*. How the slots share the data:

- `shards`: each epoch, all slots shuffle the shard list the same way and slot `i` reads
  shards `i, i + slots, ...` (webdataset's split_by_node + split_by_worker, with explicit
  rank so it needs no process group). Used when there are at least as many shards as slots.
- `samples`: fewer shards than slots (open_clip asserts, plain webdataset starves): every slot
  reads every shard and keeps samples `i, i + slots, ...` of the common order.
- `resampled` (`resample: true`): each slot draws shards with replacement
  (`wds.ResampledShards`, seeded per slot), as open_clip's `--dataset-resampled`.

With a caption mix (`StreamConfig.synthetic_fraction`), each sample trains on its synthetic
caption (`syn.txt`, recaption's first) or its alt-text (`txt`) as a hash of (seed, epoch, key)
says (`use_synthetic`): the same choice in every process and rerun, a new one each epoch (a
resampled slot's epoch: its draws over the number of shards); batches then carry a third
element, which samples trained on a synthetic caption (the loop logs the realized mix).
"""
from __future__ import annotations

import glob
import hashlib
import itertools
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch

from pipeline.core import storage
from pipeline.errors import UserError

SIZES_FILE = "sizes.json"
SHUFFLE_BUFFER = 1000


@dataclass(frozen=True)
class ShardSet:
    urls: list[str]
    num_samples: Optional[int]  # from sizes.json; None when unknown


@dataclass(frozen=True)
class StreamConfig:
    batch_size: int
    workers: int = 1
    seed: int = 0
    resample: bool = False
    shuffle_buffer: int = SHUFFLE_BUFFER
    synthetic_fraction: Optional[float] = None   # a caption mix: the share of samples on `syn.txt`


def find_shards(data: str) -> ShardSet:
    """The tar files named by `data` (folder, brace pattern, glob or file) and their sample count."""
    import braceexpand

    path = Path(data)
    if not storage.is_local(data) and "{" not in data and not data.endswith(".tar"):
        urls = shards_of_folder(data)   # a shard folder in a bucket: its sizes.json names them
    elif path.is_dir():
        urls = sorted(str(p) for p in path.glob("*.tar"))
    else:
        urls = []
        for pattern in braceexpand.braceexpand(str(data)):
            urls.extend(sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern])
    missing = [u for u in urls if "://" not in u and not u.startswith("pipe:") and not os.path.isfile(u)]
    if missing == [str(data)]:
        raise UserError(f"train.data: {data} does not exist (expected a shard folder, a brace pattern or a .tar)")
    if not urls or missing:
        what = f"{missing[0]} does not exist" if missing else "no .tar shards found"
        raise UserError(f"train.data: {data}: {what}")
    return ShardSet(urls, count_samples(urls))


def shards_of_folder(folder: str) -> list[str]:
    """The tars of a shard folder in a bucket, from its `sizes.json` (no listing)."""
    sizes = storage.read_marker(storage.join(folder, SIZES_FILE))
    if sizes is None:
        raise UserError(f"train.data: {folder}: no {SIZES_FILE} there (not a shard folder?)")
    return [storage.join(folder, name) for name in sorted(sizes)]


def count_samples(urls: list[str]) -> Optional[int]:
    """Total samples of the shards from the `sizes.json` beside them (None if any is missing)."""
    total, cache = 0, {}
    for url in urls:
        folder, name = storage.parent(url), storage.name(url)
        if folder not in cache:
            try:
                cache[folder] = storage.read_json(storage.join(folder, SIZES_FILE))
            except (OSError, ValueError):
                cache[folder] = {}
        if name not in cache[folder]:
            return None
        total += int(cache[folder][name])
    return total


def split_mode(num_shards: int, slots: int, resample: bool) -> str:
    """`resampled`, `shards` (each slot its own shards) or `samples` (too few shards)."""
    if resample:
        return "resampled"
    return "shards" if num_shards >= slots else "samples"


class ShardSamples(torch.utils.data.IterableDataset):
    """Endless raw samples (`__key__`, `jpg`, `txt`) for one slot of (rank, worker)."""

    def __init__(self, urls: list[str], rank: int, world_size: int, config: StreamConfig,
                 start_epoch: int = 0):
        super().__init__()
        self.urls, self.rank, self.world_size = list(urls), rank, world_size
        self.config, self.start_epoch = config, start_epoch

    def slot(self) -> tuple[int, int]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return self.rank * workers + worker, self.world_size * workers

    def __iter__(self) -> Iterator[dict]:
        import webdataset as wds

        open_urls_through_storage()
        slot, slots = self.slot()
        mode = split_mode(len(self.urls), slots, self.config.resample)
        if mode == "resampled":
            drawn = wds.ResampledShards(self.urls, seed=self.config.seed + self.start_epoch,
                                        worker_seed=lambda: slot, deterministic=True)
            shards = ({**shard, "epoch": self.start_epoch + i // len(self.urls)} for i, shard in enumerate(drawn))
        else:
            shards = self._epochs(slot, slots, mode)
        samples = samples_with_epoch(shards)
        if mode == "samples":
            samples = itertools.islice(samples, slot, None, slots)
        shuffle = wds.shuffle(bufsize=self.config.shuffle_buffer, rng=_rng(self.config.seed, self.start_epoch, slot),
                              initial=min(100, self.config.shuffle_buffer))
        yield from shuffle(samples)

    def _epochs(self, slot: int, slots: int, mode: str) -> Iterator[dict]:
        """Shard urls epoch after epoch, in an order common to all slots."""
        for epoch in itertools.count(self.start_epoch):
            order = list(self.urls)
            _rng(self.config.seed, epoch).shuffle(order)
            mine = order[slot::slots] if mode == "shards" else order
            for url in mine:
                yield {"url": url, "epoch": epoch}


def samples_with_epoch(shards: Iterator[dict]) -> Iterator[dict]:
    """The samples of each shard, each with `__epoch__`, the epoch its shard was read in."""
    import webdataset as wds

    for shard in shards:
        for sample in wds.tarfile_samples([{"url": shard["url"]}], handler=wds.warn_and_continue):
            sample["__epoch__"] = shard.get("epoch", 0)
            yield sample


def use_synthetic(seed: int, epoch: int, key: str, fraction: float) -> bool:
    """Whether a sample trains on its synthetic caption this epoch: a 64-bit hash of
    (seed, epoch, key) below `fraction` of the range."""
    digest = hashlib.blake2b(f"{seed}\x00{epoch}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < fraction * 2.0 ** 64


@dataclass(frozen=True)
class MixCaptions:
    """Map: `txt` becomes the synthetic caption where `use_synthetic` says so and the sample
    has one; `__synthetic__` says which it got."""
    seed: int
    fraction: float

    def __call__(self, sample: dict) -> dict:
        chosen = "syn.txt" in sample and use_synthetic(self.seed, sample.get("__epoch__", 0), sample["__key__"],
                                                        self.fraction)
        if chosen:
            sample["txt"] = sample["syn.txt"]
        sample["__synthetic__"] = chosen
        return sample


def open_urls_through_storage() -> None:
    """webdataset opens `s3://`, `gs://`, `gcs://` and `memory://` shards through
    `core.storage` (fsspec, with the run's credentials and retries) rather than CLI tools."""
    from webdataset.gopen import gopen_schemes

    for scheme in ("s3", "gs", "gcs", "memory"):
        gopen_schemes[scheme] = _open_shard


def _open_shard(url: str, mode: str = "rb", bufsize: int = 8192, **_):
    if mode != "rb":
        raise ValueError(f"{url}: shards are opened for reading only")
    return storage.open_input(url, sequential=True)


def _rng(*parts) -> random.Random:
    """A generator seeded by `parts` alone (the same in every process and run)."""
    return random.Random(":".join(str(p) for p in parts))


def batch_stream(shards: ShardSet, preprocess: Callable, tokenizer: Callable, config: StreamConfig,
                 rank: int = 0, world_size: int = 1, start_epoch: int = 0) -> Iterator:
    """Endless `(images [B,3,H,W], tokens [B,L])` batches for `rank` (workers batch in parallel);
    with a caption mix, `(images, tokens, synthetic [B])`."""
    import webdataset as wds

    raw = ShardSamples(shards.urls, rank, world_size, config, start_epoch)
    mixed = config.synthetic_fraction is not None
    stages = [raw, wds.select(lambda s: "jpg" in s and "txt" in s)]
    if mixed:
        stages.append(wds.map(MixCaptions(config.seed, config.synthetic_fraction)))
    stages += [wds.decode("pilrgb", handler=wds.warn_and_continue),
               wds.to_tuple("jpg", "txt", "__synthetic__") if mixed else wds.to_tuple("jpg", "txt"),
               wds.map_tuple(preprocess, lambda text: tokenizer(text)[0], *([bool] if mixed else [])),
               wds.batched(config.batch_size, partial=False)]
    dataset = wds.DataPipeline(*stages)
    loader = wds.WebLoader(dataset, batch_size=None, shuffle=False, num_workers=config.workers,
                           persistent_workers=config.workers > 0)
    return iter(loader)


def epoch_of(step: int, global_batch: int, num_samples: Optional[int]) -> int:
    """Completed passes over the data after `step` steps of `global_batch` samples (0 if unknown)."""
    return (step * global_batch) // num_samples if num_samples else 0
