"""One training process: open_clip model, ClipLoss, AdamW + cosine, AMP, accumulation, DDP.

`run_training(settings, data, train_dir)` is what every rank runs, whichever launcher started
it (torchrun, Ray Train or inline). It joins the process group the launcher set up (env
`RANK`/`WORLD_SIZE`, gloo on CPU, nccl on GPU), resumes from the newest checkpoint in
`<train_dir>/checkpoints`, trains to `settings.steps` optimizer steps and, on rank 0, writes
checkpoints, `log.jsonl` (one line per logged step) and `result.json`.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from pipeline.core import storage
from pipeline.train import checkpoint as ckpt
from pipeline.train.data import StreamConfig, batch_stream, epoch_of, find_shards
from pipeline.train.settings import TrainSettings
from pipeline.train.steplog import StepLog, log_every

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

    from pipeline.clip.model import local_checkpoint, register_config_beside
    from pipeline.models import register_models

    register_models()
    if pretrained and (not storage.is_local(pretrained) or Path(pretrained).is_file()):
        pretrained = local_checkpoint(pretrained, name)
        register_config_beside(pretrained, name)
    model, preprocess_train, _ = open_clip.create_model_and_transforms(
        name, pretrained=pretrained or None, device=device, weights_only=True)
    return model, preprocess_train, open_clip.get_tokenizer(name)


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float = WEIGHT_DECAY) -> torch.optim.Optimizer:
    """AdamW with open_clip's grouping: no weight decay on gains, biases, embeddings, logit scale."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        exclude = param.ndim < 2 or "bn" in name or "ln" in name or "bias" in name \
            or "logit_scale" in name or "embedding" in name
        (no_decay if exclude else decay).append(param)
    groups = [{"params": no_decay, "weight_decay": 0.0},
              {"params": decay, "weight_decay": weight_decay}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6, foreach=True)


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto`: bf16 on CUDA that supports it (else fp16), fp32 on CPU."""
    from pipeline.clip.model import resolve_precision as resolve

    return resolve(precision, device)


def autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


def resume(folder: str, model, optimizer, scaler) -> int:
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
    gradients and its features put in place, so the gradient equals one big batch's
    (logit_scale's too: unlike open_clip_train, which counts it once per micro-batch).
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
                # each loss is the whole batch's: let only the last one reach logit_scale
                loss = loss_fn(all_images, all_texts, logit_scale if last else logit_scale.detach())
            scaler.scale(loss).backward()
    return loss.detach()


def run_training(settings: TrainSettings, data: str, train_dir: str | Path,
                 device: Optional[torch.device] = None, distributed: bool = True) -> dict:
    """Train on this rank; returns (on every rank) the result rank 0 writes to `result.json`."""
    train_dir = storage.absolute(train_dir)
    place = init_distributed(device, distributed)
    try:
        torch.manual_seed(settings.seed)
        return _train(settings, data, train_dir, place)
    finally:
        if place.created_group:
            dist.destroy_process_group()


@dataclass
class TrainState:
    model: torch.nn.Module  # unwrapped (what checkpoints hold)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    precision: str  # fp32 | bf16 | fp16 (resolved)
    step: int  # optimizer steps done (the resumed checkpoint's)


def prepare(s: TrainSettings, place: Dist, checkpoints: str):
    """Model, optimizer and scaler, resumed from the newest checkpoint; plus transform and tokenizer."""
    model, preprocess, tokenizer = build_model(s.model, s.pretrained, place.device)
    optimizer = make_optimizer(model, s.lr)
    precision = resolve_precision(s.precision, place.device)
    scaler = torch.amp.GradScaler(place.device.type, enabled=precision == "fp16")
    step = resume(checkpoints, model, optimizer, scaler)
    return TrainState(model, optimizer, scaler, precision, step), preprocess, tokenizer


def _train(s: TrainSettings, data: str, train_dir: str, place: Dist) -> dict:
    warnings.filterwarnings("ignore", message=".*all_gather is deprecated", category=FutureWarning)
    checkpoints = storage.join(train_dir, "checkpoints")
    state, preprocess, tokenizer = prepare(s, place, checkpoints)
    shards = find_shards(data)
    result = {"steps": s.steps, "start_step": state.step, "world_size": place.world_size,
              "precision": state.precision, "device": str(place.device), "num_samples": shards.num_samples}
    if state.step >= s.steps:
        return _finish(result, checkpoints, place, None, None)
    if place.rank == 0:
        ckpt.write_model_config(checkpoints, s.model)
        print(f"train: {s.model} on {place.world_size} process(es), {state.precision}, "
              f"{'resuming from step ' + str(state.step) if state.step else 'from scratch'}",
              file=sys.stderr, flush=True)
    fraction = s.caption_mix.synthetic_fraction if s.caption_mix is not None else None
    if fraction is not None and place.rank == 0:
        print(f"train: caption mix: original {1 - fraction:.2f}, synthetic {fraction:.2f} "
              f"(syn.txt where a sample has it)", file=sys.stderr, flush=True)
    stream = batch_stream(shards, preprocess, tokenizer,
                          StreamConfig(s.batch_size, s.workers, s.seed, s.resample, synthetic_fraction=fraction),
                          place.rank, place.world_size, start_epoch=state.step)
    samples_per_step = s.batch_size * s.accum_steps * place.world_size
    log = StepLog(storage.join(train_dir, "log.jsonl") if place.rank == 0 else None, log_every(s.steps),
                  samples_per_step, s.steps)
    save = checkpoint_saver(checkpoints, state, s.model, samples_per_step, shards.num_samples, place.rank == 0)
    loss = train_steps(state, s, stream, place, log, save)
    if fraction is not None:
        result["caption_mix"] = {"asked_synthetic": round(fraction, 4), **log.mix.summary()}
    return _finish(result, checkpoints, place, loss, log.steady_rate())


def checkpoint_saver(folder: str, state: TrainState, name: str, samples_per_step: int,
                     num_samples: Optional[int], writer: bool):
    """`save(step)`: a checkpoint of `state` (on the writing rank only; the others do nothing)."""
    def save(step: int) -> None:
        if writer:
            epoch = epoch_of(step, samples_per_step, num_samples)
            ckpt.save_checkpoint(folder, state.model, state.optimizer, state.scaler, name, step, epoch)
    return save


def train_steps(state: TrainState, s: TrainSettings, stream, place: Dist, log: StepLog, save) -> torch.Tensor:
    """Optimizer steps `state.step + 1 ... s.steps`; `save(step)` every `s.checkpoint_every` and at the end."""
    import open_clip
    from open_clip_train.scheduler import cosine_lr

    model = _wrap_ddp(state.model, place)
    loss_fn = open_clip.ClipLoss(local_loss=True, gather_with_grad=True, cache_labels=True,
                                 rank=place.rank, world_size=place.world_size)
    schedule = cosine_lr(state.optimizer, s.lr, s.warmup, s.steps)
    cast = autocast(state.precision, place.device)
    log.started(state.step, place.world_size)
    loss = None
    for step in range(state.step + 1, s.steps + 1):
        lr = schedule(step - 1)
        waited = time.perf_counter()
        batches = [_to_device(log.mix.counted(next(stream)), place.device) for _ in range(s.accum_steps)]
        waited = time.perf_counter() - waited
        loss = accumulated_backward(model, loss_fn, batches, cast, state.scaler)
        state.scaler.step(state.optimizer)
        state.scaler.update()
        state.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            state.model.logit_scale.clamp_(0, math.log(100))
        state.step = step
        log.add(step, loss, lr, waited)
        if step % s.checkpoint_every == 0 or step == s.steps:
            save(step)
    return loss


def _wrap_ddp(model: torch.nn.Module, place: Dist) -> torch.nn.Module:
    if place.world_size == 1:
        return model
    device_ids = [place.device.index] if place.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def _to_device(batch, device: torch.device):
    images, texts = batch
    return images.to(device, non_blocking=True), texts.to(device, non_blocking=True)


def _finish(result: dict, checkpoints: str, place: Dist, loss, rate) -> dict:
    latest = ckpt.latest_checkpoint(checkpoints)
    result.update(checkpoint=storage.join(checkpoints, ckpt.LATEST_NAME) if latest else None,
                  loss=None if loss is None else float(loss), samples_per_s=rate)
    if place.rank == 0:
        storage.write_json(result, storage.join(storage.parent(checkpoints), "result.json"))
    if place.world_size > 1:
        dist.barrier()
    return result
