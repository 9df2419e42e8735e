"""The trainer: `curate train CONFIG` (open_clip on our shards, under torchrun, Ray Train or inline).

    from pipeline.train import train
    result = train(settings.train, run_dir)   # {"steps", "checkpoint", "loss", "samples_per_s", ...}
"""
from __future__ import annotations


def train(settings, run_dir):
    from pipeline.train.launch import train as _train

    return _train(settings, run_dir)


__all__ = ["train"]
