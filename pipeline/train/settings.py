"""The trainer's settings (the `train` section)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal, Optional

from pipeline.core.constraints import Above, AtLeast, Invalid


@dataclass
class CaptionMix:
    """Which caption a sample trains on: the alt-text (`txt`) or recaption's first synthetic
    caption (`syn.txt`), in these proportions (normalised), drawn per sample and epoch from a
    hash of (seed, epoch, key); a sample without a synthetic caption uses its alt-text."""
    original: Annotated[float, AtLeast(0)] = 1.0
    synthetic: Annotated[float, AtLeast(0)] = 0.0

    def validate(self) -> None:
        if self.original + self.synthetic <= 0:
            raise Invalid("synthetic", "original + synthetic must be above 0", self.synthetic)

    @property
    def synthetic_fraction(self) -> float:
        return self.synthetic / (self.original + self.synthetic)


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
    caption_mix: Optional[CaptionMix] = None   # {original: 0.2, synthetic: 0.8}; none: the alt-text only

    def __post_init__(self) -> None:
        if isinstance(self.caption_mix, dict):   # rebuilt from a job file (torchrun, Ray workers)
            self.caption_mix = CaptionMix(**self.caption_mix)
    enabled: bool = True
