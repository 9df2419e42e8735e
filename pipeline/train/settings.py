"""The trainer's settings (the `train` section)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional


@dataclass
class TrainSettings:
    model: str = "ViT-B-32"
    data: Optional[str] = None
    steps: int = 1000
    batch_size: int = 256
    processes: int = 1
    launcher: Literal["torchrun", "ray", "inline"] = "torchrun"
    lr: float = 5e-4
    warmup: int = 50
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    accum_steps: int = 1
    workers: int = 1
    checkpoint_every: int = 500
    resample: bool = False
    pretrained: Optional[str] = None
    eval_data: Optional[str] = None
    output: Optional[str] = None
    seed: int = 0
    enabled: bool = True
