"""Trainer throughput: our `curate train` vs open_clip_train's `main`, same model, batch, shards.

Both run as their own process on the same world shards (written with pipeline/shards.py),
single process, same batch size, dataloader workers, precision, thread count, shard
resampling (both: open_clip needs as many samples as it trains on otherwise) and logging
interval. Each trainer's samples/s is the mean over its logged intervals, leaving out the
first (start-up): ours from `log.jsonl`, open_clip's from its "Batch (t)" (the mean step
time since its last log line). Runs alternate; best of `--repeat`. Target ratio >= 0.9.

    python bench/bench_train.py                   # curate-tiny, CPU, fp32, batch 64
    python bench/bench_train.py --device cuda     # ViT-B-32, bf16, batch 256 (bench/gpu.sh)
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, parse_args, report  # noqa: E402

CPU_DEFAULTS = {"model": "curate-tiny", "batch_size": 64, "steps": 60, "image_size": 64, "workers": 1,
                "precision": "fp32", "threads": 1, "samples": 2048}
CUDA_DEFAULTS = {"model": "ViT-B-32", "batch_size": 256, "steps": 100, "image_size": 224, "workers": 8,
                 "precision": "bf16", "threads": None, "samples": 2048}
OPEN_CLIP_PRECISION = {"fp32": "fp32", "bf16": "amp_bf16", "fp16": "amp"}
_BATCH_TIME = re.compile(r"Train Epoch: \d+ \[\s*(\d+)/.*?Batch \(t\): ([0-9.]+)")


def write_world_shards(folder: Path, samples: int, image_size: int, shards: int = 8) -> str:
    from pipeline.shards import write_shards
    from pipeline.testing.world import world_rows

    write_shards(world_rows(samples, seed=0, image_size=image_size), folder, samples_per_shard=-(-samples // shards))
    return str(folder / f"{{00000..{shards - 1:05d}}}.tar")


def log_every(steps: int) -> int:
    from pipeline.train.steplog import log_every as ours

    return ours(steps)


def run_ours(shards: str, work: Path, opts: argparse.Namespace, env: dict) -> float:
    """Our trainer (inline launcher: one process, as open_clip's main here); steady samples/s."""
    out = work / "ours"
    config = {"output": str(out), "train": {
        "model": opts.model, "data": shards, "steps": opts.steps, "batch_size": opts.batch_size,
        "launcher": "inline", "lr": 1e-3, "warmup": 10, "precision": opts.precision, "workers": opts.workers,
        "checkpoint_every": 10 ** 9, "resample": True, "output": str(out / "train")}}
    work.mkdir(parents=True, exist_ok=True)
    path = work / "ours.yaml"
    path.write_text(yaml.safe_dump(config))
    subprocess.run([sys.executable, "-m", "pipeline", "train", str(path)], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    records = [json.loads(line) for line in (out / "train" / "log.jsonl").read_text().splitlines()]
    rates = [r["samples_per_second"] for r in records if "samples_per_second" in r][1:]
    return sum(rates) / len(rates)


def run_open_clip(shards: str, work: Path, opts: argparse.Namespace, env: dict) -> float:
    """open_clip_train.main through bench/open_clip_main.py; steady samples/s from its log."""
    logs = Path(tempfile.mkdtemp(prefix="open_clip_logs-", dir=work))
    command = [sys.executable, str(ROOT / "bench" / "open_clip_main.py"),
               "--train-data", shards, "--dataset-type", "webdataset", "--dataset-resampled",
               "--train-num-samples", str(opts.steps * opts.batch_size), "--model", opts.model,
               "--batch-size", str(opts.batch_size), "--workers", str(opts.workers), "--epochs", "1",
               "--lr", "1e-3", "--warmup", "10", "--precision", OPEN_CLIP_PRECISION[opts.precision],
               "--device", opts.device, "--save-frequency", "0", "--zeroshot-frequency", "0",
               "--log-every-n-steps", str(log_every(opts.steps)), "--logs", str(logs), "--name", "bench",
               "--report-to", ""]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"open_clip_train failed:\n{done.stderr[-3000:]}")
    times = [float(t) for _, t in _BATCH_TIME.findall(done.stdout + done.stderr)][1:]
    rates = [opts.batch_size / t for t in times]
    return sum(rates) / len(rates)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    for name in ("model", "precision"):
        parser.add_argument(f"--{name}")
    for name in ("batch-size", "steps", "image-size", "workers", "threads", "samples"):
        parser.add_argument(f"--{name}", type=int)
    parser.add_argument("--repeat", type=int, default=2)
    opts = parse_args(parser, argv, smoke={"steps": 3, "samples": 64, "batch_size": 16, "repeat": 1})
    defaults = CUDA_DEFAULTS if opts.device == "cuda" else CPU_DEFAULTS
    for key, value in defaults.items():
        if getattr(opts, key) is None:
            setattr(opts, key, value)
    return opts


def main(argv: list[str] | None = None) -> dict:
    opts = parse(argv)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    if opts.threads:
        env["OMP_NUM_THREADS"] = str(opts.threads)
    ours, theirs = [], []
    with tempfile.TemporaryDirectory(prefix="bench_train-") as tmp:
        work = Path(tmp)
        shards = write_world_shards(work / "shards", opts.samples, opts.image_size)
        for i in range(opts.repeat):
            theirs.append(run_open_clip(shards, work, opts, env))
            ours.append(run_ours(shards, work / f"run{i}", opts, env))
            print(f"  run {i}: ours {ours[-1]:.1f}/s, open_clip {theirs[-1]:.1f}/s", flush=True)
    results = {"model": opts.model, "device": opts.device, "precision": opts.precision,
               "batch_size": opts.batch_size, "steps": opts.steps, "workers": opts.workers,
               "threads": opts.threads, "ours_samples_per_s": round(max(ours), 1),
               "open_clip_samples_per_s": round(max(theirs), 1), "ratio": round(max(ours) / max(theirs), 3),
               "runs": {"ours": [round(r, 1) for r in ours], "open_clip": [round(r, 1) for r in theirs]}}
    report(f"train_{opts.model}_{opts.device}_{opts.precision}", results)
    return results


if __name__ == "__main__":
    main()
