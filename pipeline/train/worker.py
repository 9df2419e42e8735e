"""Entry point of one training process under torchrun: `python -m pipeline.train.worker JOB.json`.

`JOB.json` is what `pipeline.train.launch` writes: `{"settings": {...TrainSettings...},
"data": shards, "train_dir": folder}`.
"""
from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
from pathlib import Path

from pipeline.core import storage
from pipeline.train.settings import TrainSettings


def read_job(path: str | Path) -> tuple[TrainSettings, str, str]:
    job = json.loads(Path(path).read_text())
    storage.apply(job.get("storage"))
    return TrainSettings(**job["settings"]), job["data"], job["train_dir"]


def die_with_parent() -> None:
    """Ask Linux to kill this process when torchrun (its parent) dies, even by SIGKILL, so a
    killed run leaves no rank training on (and writing checkpoints) behind it."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def main(argv: list[str] | None = None) -> int:
    from pipeline.train.loop import run_training

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m pipeline.train.worker JOB.json", file=sys.stderr)
        return 2
    die_with_parent()
    settings, data, train_dir = read_job(argv[0])
    run_training(settings, data, train_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
