"""Load an open_clip model for scoring: by name, with weights from a tag or a local file.

`pretrained` is an open_clip tag (`openai`, `laion2b_s34b_b79k`, ...: downloaded by open_clip,
so only where a hub is reachable or cached), a local checkpoint path (`.pt`/`.pth`/`.bin`
loaded with `torch.load(weights_only=True)`, or `.safetensors`; never arbitrary pickle), or
empty/`none` for random weights. An architecture unknown to open_clip is registered from
`<name>.json` or `model_config.json` beside the checkpoint.
"""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from pipeline.core import storage
from pipeline.errors import UserError
from pipeline.models import register_models

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class LoadedClip:
    """An open_clip model in eval mode with what scoring needs beside it."""

    model: torch.nn.Module
    preprocess: Callable  # PIL image -> tensor (the model's eval transform)
    tokenizer: Callable  # list[str] -> LongTensor [n, context_length]
    device: torch.device
    precision: str  # fp32 | bf16 | fp16 (resolved)
    name: str

    @property
    def input_dtype(self) -> torch.dtype:
        return _DTYPES[self.precision]


def resolve_device(device: str = "auto") -> torch.device:
    """`auto` is cuda when available, else cpu."""
    if device not in DEVICES and not str(device).startswith("cuda:"):
        raise UserError(f"clip_score: device must be one of {', '.join(DEVICES)}, not {device!r}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"clip_score: device {device!r} requested but CUDA is not available")
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` is bf16 on CUDA with bf16 support, fp16 on other CUDA, fp32 on CPU."""
    if precision not in PRECISIONS:
        raise UserError(f"clip_score: precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision != "auto":
        return precision
    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def load_clip(name: str, pretrained: str | None = None, device: str = "auto",
              precision: str = "auto") -> LoadedClip:
    """Create `name` with `pretrained` weights on `device` in `precision`, ready to score."""
    import open_clip

    register_models()
    torch_device = resolve_device(device)
    resolved = resolve_precision(precision, torch_device)
    weights = _normalise_pretrained(pretrained)
    if weights and _looks_like_path(weights):
        _check_checkpoint(weights)
        weights = local_checkpoint(weights, name)
        register_config_beside(weights, name)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=weights, precision=resolved, device=torch_device, weights_only=True)
    except (RuntimeError, FileNotFoundError, ValueError) as error:
        detail = " ".join(str(error).split())[:240]
        hint = "; pretrained tags download from the model hub, a checkpoint path needs none" \
            if weights and not _looks_like_path(weights) else ""
        raise UserError(f"clip_score: cannot load model {name!r} (pretrained {pretrained!r}): "
                        f"{detail}{hint}") from None
    model.eval()
    tokenizer = open_clip.get_tokenizer(name)
    return LoadedClip(model, preprocess, tokenizer, torch_device, resolved, name)


def _normalise_pretrained(pretrained: str | None) -> str | None:
    if pretrained is None or str(pretrained).strip().lower() in ("", "none", "null", "random"):
        return None
    return str(pretrained)


def _looks_like_path(pretrained: str) -> bool:
    return (Path(pretrained).suffix in CHECKPOINT_SUFFIXES or "/" in pretrained
            or not storage.is_local(pretrained) or Path(pretrained).exists())


def _check_checkpoint(path: str) -> None:
    if not storage.isfile(path):
        raise UserError(f"clip_score: checkpoint file not found: {path}")


def local_checkpoint(path: str, name: str) -> str:
    """A checkpoint as a local file open_clip can load, with its architecture JSON beside it
    (a checkpoint in a bucket is fetched once per process, with those JSON files)."""
    if storage.is_local(path):
        return path
    folder = storage.parent(path)
    siblings = [storage.join(folder, n) for n in ("model_config.json", f"{name}.json")]
    return storage.local_copy(path, beside=[s for s in siblings if storage.isfile(s)])


def register_config_beside(checkpoint: str | Path, name: str) -> bool:
    """Register architecture `name` from the JSON next to `checkpoint` if open_clip lacks it."""
    import open_clip

    if name in open_clip.list_models():
        return False
    folder = Path(checkpoint).parent
    named, generic = folder / f"{name}.json", folder / "model_config.json"
    if named.is_file():
        open_clip.add_model_config(named)
        return True
    if generic.is_file():  # open_clip names architectures by file stem: copy under `name`
        staging = Path(tempfile.mkdtemp(prefix="curate-model-config-"))
        shutil.copyfile(generic, staging / f"{name}.json")
        open_clip.add_model_config(staging / f"{name}.json")
        return True
    return False
