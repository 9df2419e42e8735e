"""Rank 0's training log: `log.jsonl` records and a progress line on stderr."""
from __future__ import annotations

import json
import sys
import time
from typing import Optional

import torch

from pipeline.core import storage


class MixCount:
    """The realized caption mix of this rank's batches: how many samples trained on their
    synthetic caption (a batch's third element), in all and since the last log line."""

    def __init__(self):
        self.synthetic = self.samples = self.recent_synthetic = self.recent_samples = 0

    def counted(self, batch: tuple) -> tuple:
        """The batch without its synthetic flags (counted), as `(images, tokens)`."""
        if len(batch) == 2:
            return batch
        images, tokens, flags = batch
        chosen, total = int(flags.sum()), len(flags)
        self.synthetic, self.samples = self.synthetic + chosen, self.samples + total
        self.recent_synthetic, self.recent_samples = self.recent_synthetic + chosen, self.recent_samples + total
        return images, tokens

    def recent(self) -> dict:
        """`{"synthetic_fraction": ...}` since the last call (empty without a mix)."""
        if not self.recent_samples:
            return {}
        fraction = self.recent_synthetic / self.recent_samples
        self.recent_synthetic = self.recent_samples = 0
        return {"synthetic_fraction": round(fraction, 4)}

    def summary(self) -> dict:
        return {"synthetic": round(self.synthetic / max(self.samples, 1), 4), "samples": self.samples}


class StepLog:
    """Rank 0's log: `log.jsonl` lines and a line on stderr every `every` steps."""

    def __init__(self, path: Optional[str], every: int, samples_per_step: int, total_steps: int):
        self.path, self.every, self.samples_per_step, self.total = path, every, samples_per_step, total_steps
        self.rates: list[float] = []
        self.mix = MixCount()
        self._lines: Optional[list[str]] = None
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
                  "data_fraction": round(self._data_s / max(now - self._since, 1e-9), 3), "time": time.time(),
                  **self.mix.recent()}
        self._since, self._steps, self._data_s = now, 0, 0.0
        if self.path is not None:
            self.write(record)
            mix = f", {record['synthetic_fraction']:.0%} synthetic captions" if "synthetic_fraction" in record else ""
            print(f"train: step {step}/{self.total} loss {record['loss']:.4f} lr {lr:.2e} "
                  f"{rate:,.1f} samples/s{mix}", file=sys.stderr, flush=True)

    def write(self, record: dict) -> None:
        line = json.dumps(record) + "\n"
        if storage.is_local(self.path):
            with open(self.path, "a") as stream:
                stream.write(line)
            return
        if self._lines is None:  # an object cannot be appended to: keep its lines, rewrite it
            self._lines = [storage.read_text(self.path)] if storage.marker_exists(self.path) else []
        self._lines.append(line)
        storage.write_text(self.path, "".join(self._lines))

    def started(self, step: int, world_size: int) -> None:
        """A `{"event": "start", "step": ...}` line: where this (re)start of training began."""
        self._since = time.perf_counter()
        if self.path is not None:
            self.write({"event": "start", "step": step, "world_size": world_size, "time": time.time()})

    def steady_rate(self) -> Optional[float]:
        """Mean samples/s over the logged intervals, leaving out the first (start-up) one."""
        rates = self.rates[1:] or self.rates
        return sum(rates) / len(rates) if rates else None


def log_every(steps: int) -> int:
    return max(1, min(100, steps // 20))
