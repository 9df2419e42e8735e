"""Start training processes: `launcher: torchrun | ray | inline`, then the zero-shot eval.

- `torchrun`: `python -m torch.distributed.run --nproc_per_node=<processes> -m
  pipeline.train.worker <train_dir>/job.json`. One node by default (`--standalone`); for
  several nodes give torchrun's own settings, as environment variables (`PET_NNODES=2
  PET_NODE_RANK=0 PET_RDZV_ENDPOINT=host:29400 ...`, torchrun reads `PET_<FLAG>`) or as
  arguments in `CURATE_TORCHRUN_ARGS="--nnodes=2 --rdzv-endpoint=host:29400 ..."`, and run
  the same command on every node.
- `ray`: Ray Train's `TorchTrainer` with `processes` workers (GPUs when this machine has
  CUDA), on the cluster at `RAY_ADDRESS` when set, else on a local Ray started here. The
  cluster's workers must be able to import `pipeline` (same environment).
- `inline`: one process, this one (tests, the demo).

Every launcher writes into the same train folder: `checkpoints/` (open_clip format,
`model_config.json` beside), `log.jsonl`, `result.json` and, with `eval_data`, `eval.json`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from pipeline.core import storage
from pipeline.errors import UserError
from pipeline.train.data import find_shards
from pipeline.train.settings import TrainSettings

JOB_FILE = "job.json"
RESULT_FILE = "result.json"
ROOT = Path(__file__).resolve().parents[2]


def train(settings: TrainSettings, run_dir: str | Path) -> dict:
    """Train `settings.model` on the shards, evaluate if `eval_data` is set; return the result."""
    data, train_dir = resolve_paths(settings, run_dir)
    shards = find_shards(data)  # a missing or empty shard folder fails here, in one line
    settings = dataclasses.replace(settings, pretrained=resolve_pretrained(settings.pretrained))
    storage.makedirs(train_dir)
    storage.remove(storage.join(train_dir, RESULT_FILE))
    launchers = {"torchrun": launch_torchrun, "ray": launch_ray, "inline": launch_inline}
    if settings.launcher not in launchers:
        raise UserError(f"train.launcher: must be one of {', '.join(launchers)}, not {settings.launcher!r}")
    _log(f"train: {settings.model} on {len(shards.urls)} shard(s) "
         f"({shards.num_samples if shards.num_samples is not None else '?'} samples), "
         f"launcher {settings.launcher}, {settings.processes} process(es) -> {train_dir}")
    result = launchers[settings.launcher](settings, data, train_dir)
    if settings.eval_data and result.get("checkpoint"):
        from pipeline.train.zero_shot import evaluate_zero_shot, load_eval_folder

        result["eval"] = evaluate_zero_shot(result["checkpoint"], settings.model, load_eval_folder(settings.eval_data),
                                            storage.join(train_dir, "eval.json"), steps=result["steps"])
        _log(f"train: zero-shot top-1 {result['eval']['top1']:.3f} on {settings.eval_data}")
    return result


def resolve_paths(settings: TrainSettings, run_dir: str | Path) -> tuple[str, str]:
    """Shard location (default `<run_dir>/shards`) and train folder (default `<run_dir>/train`),
    local ones made absolute (workers may start elsewhere); URLs as they are."""
    data = settings.data or storage.join(run_dir, "shards")
    if storage.is_local(data) and not data.startswith("pipe:"):
        data = os.path.abspath(data)
    return data, storage.absolute(settings.output or storage.join(run_dir, "train"))


def resolve_pretrained(pretrained: str | None) -> str | None:
    """A checkpoint path made absolute (workers may start elsewhere); an open_clip tag as is."""
    if not pretrained:
        return None
    if not storage.is_local(pretrained):
        if not storage.isfile(pretrained):
            raise UserError(f"train.pretrained: checkpoint file not found: {pretrained}")
        return pretrained
    path = Path(pretrained)
    if path.is_file():
        return str(path.resolve())
    if path.suffix in (".pt", ".pth", ".bin", ".safetensors", ".ckpt") or os.sep in pretrained:
        raise UserError(f"train.pretrained: checkpoint file not found: {pretrained}")
    return pretrained


def write_job(settings: TrainSettings, data: str, train_dir: str) -> str:
    """The job file torchrun's workers read: on this machine (torchrun starts them here)."""
    folder = train_dir if storage.is_local(train_dir) else tempfile.mkdtemp(prefix="curate-train-")
    path = os.path.join(folder, JOB_FILE)
    job = {"settings": dataclasses.asdict(settings), "data": data, "train_dir": train_dir,
           "storage": storage.worker_settings()}
    storage.write_text(path, json.dumps(job, indent=1))
    return path


def torchrun_command(processes: int, job: str) -> list[str]:
    """The torchrun command line; single-node `--standalone` unless multi-node settings are given."""
    extra = shlex.split(os.environ.get("CURATE_TORCHRUN_ARGS", ""))
    multi_node = extra or any(k in os.environ for k in ("PET_NNODES", "PET_RDZV_ENDPOINT", "PET_MASTER_ADDR"))
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}"]
    command += extra if multi_node else ["--standalone"]
    return command + ["-m", "pipeline.train.worker", str(job)]


def launch_torchrun(settings: TrainSettings, data: str, train_dir: str) -> dict:
    command = torchrun_command(settings.processes, write_job(settings, data, train_dir))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    _log("train: " + " ".join(shlex.quote(c) for c in command))
    returncode = subprocess.run(command, env=env).returncode
    if returncode != 0:
        raise UserError(f"train: torchrun exited with status {returncode} (see its output above)")
    return read_result(train_dir)


def launch_inline(settings: TrainSettings, data: str, train_dir: str) -> dict:
    from pipeline.train.loop import run_training

    if settings.processes != 1:
        _log(f"train: launcher inline runs one process (processes: {settings.processes} ignored)")
    return run_training(settings, data, train_dir, distributed=False)


def launch_ray(settings: TrainSettings, data: str, train_dir: str) -> dict:
    import ray
    import torch
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    started = False
    if not ray.is_initialized():  # joins RAY_ADDRESS when set, else starts a local Ray
        ray.init(include_dashboard=False, configure_logging=False)
        started = True
    try:
        trainer = TorchTrainer(
            ray_train_loop,
            train_loop_config={"settings": dataclasses.asdict(settings), "data": data,
                               "train_dir": train_dir, "storage": storage.worker_settings()},
            scaling_config=ScalingConfig(num_workers=settings.processes, use_gpu=torch.cuda.is_available()),
            run_config=RunConfig(name="curate-train", storage_path=ray_storage_path(train_dir)),
        )
        trainer.fit()
    except Exception as error:  # Ray Train wraps worker errors; their tracebacks are in the log
        raise UserError(f"train: Ray Train failed: {' '.join(str(error).split())[:300]}") from error
    finally:
        if started:
            ray.shutdown()
    return read_result(train_dir)


def ray_train_loop(config: dict) -> None:
    """Runs in each Ray Train worker (Ray has set up the process group)."""
    import ray.train.torch

    from pipeline.train.loop import run_training

    storage.apply(config.get("storage"))
    settings = TrainSettings(**config["settings"])
    run_training(settings, config["data"], config["train_dir"], device=ray.train.torch.get_device())


def ray_storage_path(train_dir: str) -> str:
    """Ray Train's own run records: under the train folder when local, else a local
    temporary folder (our checkpoints and results go to the bucket through `storage`)."""
    if storage.is_local(train_dir):
        return os.path.join(train_dir, "ray")
    return tempfile.mkdtemp(prefix="curate-ray-train-")


def read_result(train_dir: str) -> dict:
    path = storage.join(train_dir, RESULT_FILE)
    try:
        return storage.read_json(path)
    except (OSError, ValueError):
        raise UserError(f"train: no result in {path}: training did not finish") from None


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
