"""One training process: open_clip model, ClipLoss, AdamW + cosine, AMP, accumulation, DDP.

`run_training(settings, data, train_dir)` is what every rank runs, whichever launcher started
it (torchrun, Ray Train or inline). It joins the process group the launcher set up (env
`RANK`/`WORLD_SIZE`, gloo on CPU, nccl on GPU), resumes from the newest checkpoint in
`<train_dir>/checkpoints`, trains to `settings.steps` optimizer steps and, on rank 0, writes
checkpoints, `log.jsonl` (one line per logged step) and `result.json`.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from pipeline.core.config import TrainSettings
from pipeline.train import checkpoint as ckpt
from pipeline.train.data import StreamConfig, batch_stream, epoch_of, find_shards

WEIGHT_DECAY = 0.2  # open_clip_train's default
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Dist:
    rank: int
    world_size: int
    device: torch.device
    created_group: bool = False


def init_distributed(device: Optional[torch.device] = None, distributed: bool = True) -> Dist:
    """Join (or create from torchrun's env) the process group; pick this rank's device.

    `distributed=False` (the inline launcher) trains alone whatever the environment says.
    """
    world = int(os.environ.get("WORLD_SIZE", "1")) if distributed else 1
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    created = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        created = True
    if distributed and dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size(), device, created)
    return Dist(0, 1, device, created)


def build_model(name: str, pretrained: Optional[str], device: torch.device):
    """`(model, train transform, tokenizer)`; `pretrained` is an open_clip tag or a checkpoint path."""
    import open_clip

    from pipeline.clip.model import register_config_beside
    from pipeline.models import register_models

    register_models()
    if pretrained and Path(pretrained).is_file():
        register_config_beside(pretrained, name)
    model, preprocess_train, _ = open_clip.create_model_and_transforms(
        name, pretrained=pretrained or None, device=device, weights_only=True)
    return model, preprocess_train, open_clip.get_tokenizer(name)


def make_optimizer(model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    """AdamW with open_clip's grouping (no decay on gains, biases, embeddings, logit scale)."""
    from pipeline.models.tiny_train import TinyTrainConfig, _optimizer

    return _optimizer(model, TinyTrainConfig(lr=lr, weight_decay=WEIGHT_DECAY))


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto`: bf16 on CUDA that supports it (else fp16), fp32 on CPU."""
    from pipeline.clip.model import resolve_precision as resolve

    return resolve(precision, device)


def autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


def resume(folder: Path, model, optimizer, scaler) -> int:
    """Load the newest checkpoint in `folder` into model/optimizer/scaler; return its step (0: none)."""
    path = ckpt.latest_checkpoint(folder)
    if path is None:
        return 0
    state = ckpt.load_checkpoint(path)
    model.load_state_dict(state["state_dict"])
    optimizer.load_state_dict(state["optimizer"])
    if "scaler" in state and scaler.is_enabled():
        scaler.load_state_dict(state["scaler"])
    return int(state.get("step", state.get("epoch", 0)))


def forward_loss(model, loss_fn, images, texts) -> torch.Tensor:
    image_features, text_features, logit_scale = model(images, texts)[:3]
    return loss_fn(image_features, text_features, logit_scale)


def accumulated_backward(model, loss_fn, batches, cast, scaler) -> torch.Tensor:
    """open_clip's accumulation: features of all micro-batches form one contrastive batch.

    Features are first computed without gradients, then each micro-batch is recomputed with
    gradients and its features put in place, so the gradient equals one big batch's.
    """
    if len(batches) == 1:
        with cast:
            loss = forward_loss(model, loss_fn, *batches[0])
        scaler.scale(loss).backward()
        return loss.detach()
    with torch.no_grad(), cast:
        cached = [model(images, texts)[:2] for images, texts in batches]
    for j, (images, texts) in enumerate(batches):
        last = j == len(batches) - 1
        sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with cast:
                image_features, text_features, logit_scale = model(images, texts)[:3]
                all_images = torch.cat([f[0] for f in cached[:j]] + [image_features] + [f[0] for f in cached[j + 1:]])
                all_texts = torch.cat([f[1] for f in cached[:j]] + [text_features] + [f[1] for f in cached[j + 1:]])
                loss = loss_fn(all_images, all_texts, logit_scale)
            scaler.scale(loss).backward()
    return loss.detach()


class StepLog:
    """Rank 0's log: `log.jsonl` lines and a line on stderr every `every` steps."""

    def __init__(self, path: Optional[Path], every: int, samples_per_step: int, total_steps: int):
        self.path, self.every, self.samples_per_step, self.total = path, every, samples_per_step, total_steps
        self.rates: list[float] = []
        self._since, self._steps, self._data_s = time.perf_counter(), 0, 0.0

    def add(self, step: int, loss: torch.Tensor, lr: float, data_s: float) -> None:
        self._steps += 1
        self._data_s += data_s
        if step % self.every and step != self.total:
            return
        now = time.perf_counter()
        rate = self._steps * self.samples_per_step / max(now - self._since, 1e-9)
        self.rates.append(rate)
        record = {"step": step, "loss": round(float(loss), 5), "lr": lr, "samples_per_second": round(rate, 2),
                  "data_fraction": round(self._data_s / max(now - self._since, 1e-9), 3), "time": time.time()}
        self._since, self._steps, self._data_s = now, 0, 0.0
        if self.path is not None:
            with open(self.path, "a") as stream:
                stream.write(json.dumps(record) + "\n")
            print(f"train: step {step}/{self.total} loss {record['loss']:.4f} lr {lr:.2e} "
                  f"{rate:,.1f} samples/s", file=sys.stderr, flush=True)

    def steady_rate(self) -> Optional[float]:
        """Mean samples/s over the logged intervals, leaving out the first (start-up) one."""
        rates = self.rates[1:] or self.rates
        return sum(rates) / len(rates) if rates else None


def log_every(steps: int) -> int:
    return max(1, min(100, steps // 20))


def run_training(settings: TrainSettings, data: str, train_dir: str | Path,
                 device: Optional[torch.device] = None, distributed: bool = True) -> dict:
    """Train on this rank; returns (on every rank) the result rank 0 writes to `result.json`."""
    train_dir = Path(train_dir)
    place = init_distributed(device, distributed)
    try:
        torch.manual_seed(settings.seed)
        return _train(settings, data, train_dir, place)
    finally:
        if place.created_group:
            dist.destroy_process_group()


def _train(s: TrainSettings, data: str, train_dir: Path, place: Dist) -> dict:
    import open_clip
    from open_clip_train.scheduler import cosine_lr

    checkpoints = train_dir / "checkpoints"
    model, preprocess, tokenizer = build_model(s.model, s.pretrained, place.device)
    optimizer = make_optimizer(model, s.lr)
    precision = resolve_precision(s.precision, place.device)
    scaler = torch.amp.GradScaler(place.device.type, enabled=precision == "fp16")
    start = resume(checkpoints, model, optimizer, scaler)
    shards = find_shards(data)
    result = {"steps": s.steps, "start_step": start, "world_size": place.world_size,
              "precision": precision, "device": str(place.device), "num_samples": shards.num_samples}
    if start >= s.steps:
        return _finish(result, checkpoints, place, None, None)
    if place.rank == 0:
        ckpt.write_model_config(checkpoints, s.model)
        print(f"train: {s.model} on {place.world_size} process(es), {precision}, "
              f"{'resuming from step ' + str(start) if start else 'from scratch'}", file=sys.stderr, flush=True)
    ddp_model = _wrap_ddp(model, place)
    loss_fn = open_clip.ClipLoss(local_loss=True, gather_with_grad=True, cache_labels=True,
                                 rank=place.rank, world_size=place.world_size)
    stream = batch_stream(shards, preprocess, tokenizer, StreamConfig(s.batch_size, s.workers, s.seed, s.resample),
                          place.rank, place.world_size, start_epoch=start)
    samples_per_step = s.batch_size * s.accum_steps * place.world_size
    log = StepLog(train_dir / "log.jsonl" if place.rank == 0 else None, log_every(s.steps), samples_per_step, s.steps)
    schedule = cosine_lr(optimizer, s.lr, s.warmup, s.steps)
    cast = autocast(precision, place.device)
    loss = None
    for step in range(start, s.steps):
        lr = schedule(step)
        waited = time.perf_counter()
        batches = [_to_device(next(stream), place.device) for _ in range(s.accum_steps)]
        waited = time.perf_counter() - waited
        loss = accumulated_backward(ddp_model, loss_fn, batches, cast, scaler)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        log.add(step + 1, loss, lr, waited)
        if place.rank == 0 and ((step + 1) % s.checkpoint_every == 0 or step + 1 == s.steps):
            epoch = epoch_of(step + 1, samples_per_step, shards.num_samples)
            ckpt.save_checkpoint(checkpoints, model, optimizer, scaler, s.model, step + 1, epoch)
    return _finish(result, checkpoints, place, loss, log.steady_rate())


def _wrap_ddp(model: torch.nn.Module, place: Dist) -> torch.nn.Module:
    if place.world_size == 1:
        return model
    device_ids = [place.device.index] if place.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def _to_device(batch, device: torch.device):
    images, texts = batch
    return images.to(device, non_blocking=True), texts.to(device, non_blocking=True)


def _finish(result: dict, checkpoints: Path, place: Dist, loss, rate) -> dict:
    latest = ckpt.latest_checkpoint(checkpoints)
    result.update(checkpoint=str(checkpoints / ckpt.LATEST_NAME) if latest else None,
                  loss=None if loss is None else float(loss), samples_per_second=rate)
    if place.rank == 0:
        ckpt.write_atomic(checkpoints.parent / "result.json", json.dumps(result, indent=1).encode())
    if place.world_size > 1:
        dist.barrier()
    return result
