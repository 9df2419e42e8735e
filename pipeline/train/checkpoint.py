"""Checkpoints in open_clip's format, with the architecture's JSON beside them.

Each checkpoint is `{"epoch", "step", "name", "state_dict", "optimizer"[, "scaler"]}` as
open_clip_train saves it (`state_dict` without DDP's `module.` prefix, so
`open_clip.create_model_and_transforms(name, pretrained=path)` loads it; everything in it
is plain tensors and numbers, so `torch.load(..., weights_only=True)` reads it). Files:
`step_00000500.pt`, ... and `epoch_latest.pt` (the newest), each committed whole through
`core.storage` (a local folder or a bucket), then `latest.json` naming the newest step (the
marker resume reads: no listing); `model_config.json` and `<name>.json` beside them
(`open_clip.add_model_config(folder)`).
"""
from __future__ import annotations

import io
import json
import os
import re
from typing import Optional

import torch

from pipeline.core import storage

LATEST_NAME = "epoch_latest.pt"
LATEST_MARKER = "latest.json"
CONFIG_NAME = "model_config.json"
_STEP_FILE = re.compile(r"^step_(\d+)\.pt$")


def step_file(step: int) -> str:
    return f"step_{step:08d}.pt"


def architecture_config(name: str) -> dict:
    """The model's JSON config: the project's file for our models, else open_clip's."""
    import open_clip

    from pipeline.models import model_config_path, register_models

    path = model_config_path(name)
    if path is not None:
        return json.loads(path.read_text())
    register_models()
    config = open_clip.get_model_config(name)
    if config is None:
        raise ValueError(f"unknown open_clip architecture {name!r}")
    return config


def write_model_config(folder: str, name: str) -> None:
    """`model_config.json` (the contract) and `<name>.json` (for `add_model_config`)."""
    text = json.dumps(architecture_config(name), indent=2, sort_keys=True).encode()
    for file_name in (CONFIG_NAME, f"{name}.json"):
        storage.write_bytes(storage.join(folder, file_name), text, durable=True)


def save_checkpoint(folder: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scaler: Optional[torch.amp.GradScaler], name: str, step: int, epoch: int) -> str:
    """Write `step_N.pt`, make `epoch_latest.pt` the same file, then `latest.json`; returns
    the step file."""
    state = {"epoch": int(epoch), "step": int(step), "name": name,
             "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
             "optimizer": optimizer.state_dict()}
    if scaler is not None and scaler.is_enabled():
        state["scaler"] = scaler.state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    path = storage.join(folder, step_file(step))
    storage.write_bytes(path, buffer.getvalue(), durable=True)
    storage.link_or_copy(path, storage.join(folder, LATEST_NAME))
    storage.write_json({"step": int(step), "file": step_file(step)}, storage.join(folder, LATEST_MARKER))
    return path


def latest_checkpoint(folder: str) -> Optional[str]:
    """The checkpoint of the highest step in `folder` (None when there is none), from its
    `latest.json` marker; a local folder written without one is listed."""
    marker = storage.read_marker(storage.join(folder, LATEST_MARKER))
    if marker is not None:
        return storage.join(folder, marker["file"])
    if not storage.is_local(folder) or not os.path.isdir(folder):
        return None
    steps = [(int(m.group(1)), name) for name in os.listdir(folder) if (m := _STEP_FILE.match(name))]
    if steps:
        return storage.join(folder, max(steps)[1])
    latest = storage.join(folder, LATEST_NAME)
    return latest if os.path.isfile(latest) else None


def load_checkpoint(path: str) -> dict:
    """A checkpoint's contents on the CPU (tensors and numbers only)."""
    return torch.load(io.BytesIO(storage.read_bytes(path)), map_location="cpu", weights_only=True)

