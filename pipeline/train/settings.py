"""The trainer's settings (the `train` section)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal, Optional

from pipeline.core.constraints import Above, AtLeast


@dataclass
class TrainSettings:
    model: str = "ViT-B-32"
    data: Optional[str] = None
    steps: Annotated[int, AtLeast(1)] = 1000
    batch_size: Annotated[int, AtLeast(1)] = 256
    processes: Annotated[int, AtLeast(1)] = 1
    launcher: Literal["torchrun", "ray", "inline"] = "torchrun"
    lr: Annotated[float, Above(0)] = 5e-4
    warmup: Annotated[int, AtLeast(0)] = 50
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    accum_steps: Annotated[int, AtLeast(1)] = 1
    workers: Annotated[int, AtLeast(0)] = 1      # data loader processes; 0: load in the training process
    checkpoint_every: Annotated[int, AtLeast(1)] = 500
    resample: bool = False
    pretrained: Optional[str] = None
    eval_data: Optional[str] = None
    output: Optional[str] = None
    seed: Annotated[int, AtLeast(0)] = 0
    enabled: bool = True
