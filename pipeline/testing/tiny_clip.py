"""Train `curate-tiny` briefly on generated world pairs (tests, the demo, offline scoring).

The checkpoint is in open_clip's format, `{"epoch": ..., "name": ..., "state_dict": ...}`
(readable with `torch.load(..., weights_only=True)`), with the architecture's JSON written
beside it twice: `model_config.json` (the project contract) and `<name>.json`, so that
`open_clip.add_model_config(folder)` registers the architecture under its own name and
`open_clip.create_model_and_transforms(name, pretrained=checkpoint)` loads it anywhere.

    python -m pipeline.testing.tiny_clip OUT_DIR [--steps 120] [--seed 0]
"""
from __future__ import annotations

import argparse
import hashlib
import inspect
import io
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from pipeline.core import storage
from pipeline.models import TINY_NAME, register_models
from pipeline.testing.world import make_world
from pipeline.train.checkpoint import write_model_config
from pipeline.train.loop import make_optimizer

CHECKPOINT_NAME = "epoch_latest.pt"


@dataclass(frozen=True)
class TinyTrainConfig:
    steps: int = 120
    batch_size: int = 64
    n_samples: int = 2048
    lr: float = 3e-3
    weight_decay: float = 0.05
    warmup: int = 10
    seed: int = 0
    model: str = TINY_NAME
    threads: int | None = None  # torch intra-op threads while training (None: torch's default)


def train_tiny(out_dir: str | Path, config: TinyTrainConfig = TinyTrainConfig()) -> Path:
    """Train `config.model` on world pairs, write the checkpoint into `out_dir`, return its path."""
    import open_clip

    register_models()
    previous_threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        torch.manual_seed(config.seed)
        model, _, preprocess = open_clip.create_model_and_transforms(config.model)
        tokenizer = open_clip.get_tokenizer(config.model)
        images, tokens = world_tensors(config, preprocess, tokenizer, _image_size(model))
        run_training(model, images, tokens, config)
    finally:
        torch.set_num_threads(previous_threads)
    return save_checkpoint(model, out_dir, config.model, epoch=1)


def _image_size(model: torch.nn.Module) -> int:
    size = model.visual.image_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def world_tensors(config: TinyTrainConfig, preprocess, tokenizer, image_size: int):
    """Preprocessed images and caption tokens of `config.n_samples` world pairs (decoded JPEGs)."""
    samples = make_world(config.n_samples, seed=config.seed, image_size=image_size)
    images = torch.stack([preprocess(Image.open(io.BytesIO(s.jpg))) for s in samples])
    tokens = tokenizer([s.caption for s in samples])
    return images, tokens


def run_training(model, images: torch.Tensor, tokens: torch.Tensor, config: TinyTrainConfig) -> float:
    """Contrastive training with open_clip's ClipLoss; returns the last loss."""
    import open_clip

    loss_fn = open_clip.ClipLoss()
    optimizer = make_optimizer(model, config.lr, config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    model.train()
    loss_value = float("nan")
    for step in range(config.steps):
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, config)
        batch = torch.randint(len(images), (config.batch_size,), generator=generator)
        image_features, text_features, logit_scale = model(images[batch], tokens[batch])[:3]
        loss = loss_fn(image_features, text_features, logit_scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        loss_value = float(loss.detach())
    model.eval()
    return loss_value


def _learning_rate(step: int, config: TinyTrainConfig) -> float:
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return 0.5 * config.lr * (1 + math.cos(math.pi * progress))


def save_checkpoint(model: torch.nn.Module, out_dir: str | Path, model_name: str, epoch: int,
                    file_name: str = CHECKPOINT_NAME) -> Path:
    """Write an open_clip checkpoint plus the architecture JSON beside it (atomically)."""
    out = Path(out_dir)
    write_model_config(out, model_name)
    buffer = io.BytesIO()
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"epoch": epoch, "name": model_name, "state_dict": state}, buffer)
    path = out / file_name
    storage.write_bytes(path, buffer.getvalue(), durable=True)
    return path


def ensure_tiny_checkpoint(cache_dir: str | Path, config: TinyTrainConfig = TinyTrainConfig()) -> Path:
    """A checkpoint of `config` cached under `cache_dir`, trained only when missing.

    The cache key covers the config, the torch/open_clip versions and the sources of the
    trainer (its optimizer included), the world and the architecture, so changing any of
    them retrains.
    """
    folder = Path(cache_dir) / f"{config.model}-{_cache_key(config)}"
    checkpoint = folder / CHECKPOINT_NAME
    if checkpoint.is_file():
        return checkpoint
    staging = storage.tmp_name(folder)
    train_tiny(staging, config)
    try:
        os.replace(staging, folder)  # atomic; another process may have won the race
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
    return checkpoint


def _cache_key(config: TinyTrainConfig) -> str:
    import open_clip

    from pipeline.models import model_config_path
    from pipeline.testing import world

    digest = hashlib.sha256(repr((config, torch.__version__, open_clip.__version__)).encode())
    digest.update(inspect.getsource(make_optimizer).encode())
    for source in (Path(__file__), Path(world.__file__), model_config_path(config.model)):
        if source is not None:
            digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--steps", type=int, default=TinyTrainConfig.steps)
    parser.add_argument("--batch-size", type=int, default=TinyTrainConfig.batch_size)
    parser.add_argument("--seed", type=int, default=TinyTrainConfig.seed)
    args = parser.parse_args(argv)
    config = TinyTrainConfig(steps=args.steps, batch_size=args.batch_size, seed=args.seed)
    print(train_tiny(args.out_dir, config))


if __name__ == "__main__":
    main()
