"""The trainer end to end on world shards: torchrun (2 ranks, gloo) killed and resumed,
Ray Train on a local Ray, the checkpoint loaded by open_clip, zero-shot eval.

Small on purpose (curate-tiny, 64 px, batch 16 per rank, 40 steps): two shared cores.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.shards import write_shards
from pipeline.testing.world import world_rows, write_eval_folder

pytestmark = pytest.mark.slow  # torchrun, Ray Train and fine-tuning

STEPS, CHECKPOINT_EVERY = 40, 8
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run folder with 4 shards of 96 world samples (`sizes.json` beside them) and a
    held-out evaluation folder of 480 world samples."""
    run = tmp_path_factory.mktemp("train_run")
    write_shards(world_rows(384, seed=0, image_size=64), run / "shards", samples_per_shard=96)
    write_eval_folder(run / "eval_set", n=480, image_size=64)
    return run


def _train_section(run_dir: Path, **extra) -> dict:
    section = {"model": "curate-tiny", "steps": STEPS, "batch_size": 16, "processes": 2,
               "launcher": "torchrun", "lr": 3e-3, "warmup": 4, "checkpoint_every": CHECKPOINT_EVERY,
               "workers": 1, "eval_data": str(run_dir / "eval_set")}
    section.update(extra)
    return section


def _rank_processes(job: Path) -> list[int]:
    """Pids of live processes whose command line names `job` (the torchrun ranks)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes()
            status = (entry / "status").read_text()
        except (OSError, ValueError):
            continue
        if str(job).encode() in cmdline and "State:\tZ" not in status:
            pids.append(int(entry.name))
    return pids


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _kill_after_first_checkpoint(command: list[str], checkpoints: Path, env: dict, log: Path) -> None:
    with open(log, "wb") as stderr:
        first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=stderr, stderr=stderr, start_new_session=True)
        try:
            _wait_for(lambda: any(checkpoints.glob("step_*.pt")) or first.poll() is not None, 180,
                      "the first checkpoint")
            assert first.poll() is None, f"the first run ended before it could be killed:\n{log.read_text()}"
        finally:
            os.killpg(first.pid, signal.SIGKILL)  # curate and torchrun; the ranks die with torchrun
            first.wait()


@pytest.fixture(scope="module")
def resumed(run_dir: Path) -> dict:
    """`curate train` under torchrun, SIGKILLed after its first checkpoint, then run again."""
    config = run_dir / "train.yaml"
    config.write_text(yaml.safe_dump({"output": str(run_dir), "train": _train_section(run_dir)}))
    train_dir = run_dir / "train"
    command = [sys.executable, "-m", "pipeline", "train", str(config)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    _kill_after_first_checkpoint(command, train_dir / "checkpoints", env, run_dir / "first.log")
    _wait_for(lambda: not _rank_processes(train_dir / "job.json"), 30, "the killed ranks to exit")
    killed_at = max(int(p.stem.split("_")[1]) for p in (train_dir / "checkpoints").glob("step_*.pt"))
    second = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    records = [json.loads(line) for line in (train_dir / "log.jsonl").read_text().splitlines()]
    return {"train_dir": train_dir, "killed_at": killed_at, "stderr": second.stderr, "records": records}


def test_torchrun_loss_goes_down_and_resumes_at_the_checkpoint_step(resumed):
    from pipeline.train.checkpoint import load_checkpoint

    killed_at, train_dir = resumed["killed_at"], resumed["train_dir"]
    assert CHECKPOINT_EVERY <= killed_at < STEPS and killed_at % CHECKPOINT_EVERY == 0
    starts = [r for r in resumed["records"] if r.get("event") == "start"]
    assert [s["step"] for s in starts] == [0, killed_at] and all(s["world_size"] == 2 for s in starts)
    assert f"resuming from step {killed_at}" in resumed["stderr"]
    after = resumed["records"][resumed["records"].index(starts[1]) + 1:]
    assert after[0]["step"] == killed_at + 2 and after[-1]["step"] == STEPS  # logged every 2 steps
    result = json.loads((train_dir / "result.json").read_text())
    assert result["start_step"] == killed_at and result["steps"] == STEPS and result["world_size"] == 2
    latest = load_checkpoint(train_dir / "checkpoints" / "epoch_latest.pt")
    assert latest["step"] == STEPS and {"epoch", "state_dict", "optimizer"} <= set(latest)
    assert load_checkpoint(train_dir / "checkpoints" / f"step_{killed_at:08d}.pt")["step"] == killed_at
    losses = [r["loss"] for r in resumed["records"] if "loss" in r]
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.7 * first, losses


def test_final_checkpoint_loads_with_open_clip(resumed):
    import open_clip

    from pipeline.models import model_config_path, register_models
    from pipeline.train.checkpoint import load_checkpoint

    folder = resumed["train_dir"] / "checkpoints"
    assert json.loads((folder / "model_config.json").read_text()) == \
        json.loads(model_config_path("curate-tiny").read_text())
    register_models()
    model, _, preprocess = open_clip.create_model_and_transforms("curate-tiny",
                                                                 pretrained=str(folder / "epoch_latest.pt"))
    saved = load_checkpoint(folder / "epoch_latest.pt")["state_dict"]
    assert not any(k.startswith("module.") for k in saved)
    for name, value in model.state_dict().items():
        assert torch.equal(value, saved[name]), name


def test_zero_shot_eval_beats_chance(resumed):
    result = json.loads((resumed["train_dir"] / "eval.json").read_text())
    assert result["steps"] == STEPS and result["classes"] == 24 and result["n"] == 480
    assert 0.0 <= result["top1"] <= 1.0
    assert result["top1"] > 2 * result["chance"], result  # seen: 0.14 to 0.21 (chance 0.042)


def test_zero_shot_on_a_labelled_folder(resumed, tmp_path):
    from pipeline.testing.world import class_names, make_world
    from pipeline.train.zero_shot import evaluate_zero_shot, load_eval_folder

    for i, sample in enumerate(make_world(24, seed=5)):
        folder = tmp_path / "images" / class_names()[sample.label].replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i}.jpg").write_bytes(sample.jpg)
    out = tmp_path / "eval.json"
    eval_set = load_eval_folder(tmp_path / "images")   # no prompts.json: "a photo of a red circle."
    assert all(prompts == [f"a photo of a {name}."] for name, prompts in zip(eval_set.classnames, eval_set.prompts))
    result = evaluate_zero_shot(resumed["train_dir"] / "checkpoints" / "epoch_latest.pt", "curate-tiny",
                                eval_set, out, steps=STEPS)
    assert json.loads(out.read_text()) == result
    assert result["n"] == 24 and 0.0 <= result["top1"] <= 1.0 and result["steps"] == STEPS


@pytest.mark.timeout(300)
def test_ray_train_on_a_local_ray(run_dir, tmp_path, monkeypatch):
    import ray

    from pipeline.train import train
    from pipeline.train.settings import TrainSettings

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    settings = TrainSettings(**{**_train_section(run_dir), "launcher": "ray", "steps": 4, "checkpoint_every": 2,
                                "eval_data": None, "output": str(tmp_path / "ray_train")})
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    try:
        result = train(settings, run_dir)
    finally:
        ray.shutdown()
    assert result["world_size"] == 2 and result["steps"] == 4 and result["start_step"] == 0
    checkpoints = tmp_path / "ray_train" / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("step_*.pt")) == ["step_00000002.pt", "step_00000004.pt"]
    assert torch.load(checkpoints / "epoch_latest.pt", weights_only=True)["step"] == 4


def test_inline_finetune_from_a_checkpoint_path_then_nothing_left(resumed, run_dir, tmp_path):
    from pipeline.train import train
    from pipeline.train.settings import TrainSettings

    pretrained = resumed["train_dir"] / "checkpoints" / "epoch_latest.pt"
    settings = TrainSettings(**{**_train_section(run_dir), "launcher": "inline", "processes": 1, "steps": 2,
                                "checkpoint_every": 2, "eval_data": None, "pretrained": str(pretrained),
                                "output": str(tmp_path / "finetune")})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = train(settings, run_dir)
        again = train(settings, run_dir)
    finally:
        torch.set_num_threads(threads)
    assert result["start_step"] == 0 and result["steps"] == 2 and result["world_size"] == 1
    records = [json.loads(line) for line in (tmp_path / "finetune" / "log.jsonl").read_text().splitlines()]
    assert records[1]["loss"] < 2.0  # from the trained weights; random ones start near ln(16) = 2.77
    assert again["start_step"] == 2 and again["checkpoint"] == result["checkpoint"]
    assert sum(1 for r in records if r.get("event") == "start") == 1  # the rerun trained nothing
