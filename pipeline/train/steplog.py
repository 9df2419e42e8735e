"""Rank 0's training log: `log.jsonl` records and a progress line on stderr."""
from __future__ import annotations

import json
import sys
import time
from typing import Optional

import torch

from pipeline.core import storage


class StepLog:
    """Rank 0's log: `log.jsonl` lines and a line on stderr every `every` steps."""

    def __init__(self, path: Optional[str], every: int, samples_per_step: int, total_steps: int):
        self.path, self.every, self.samples_per_step, self.total = path, every, samples_per_step, total_steps
        self.rates: list[float] = []
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
                  "data_fraction": round(self._data_s / max(now - self._since, 1e-9), 3), "time": time.time()}
        self._since, self._steps, self._data_s = now, 0, 0.0
        if self.path is not None:
            self.write(record)
            print(f"train: step {step}/{self.total} loss {record['loss']:.4f} lr {lr:.2e} "
                  f"{rate:,.1f} samples/s", file=sys.stderr, flush=True)

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
