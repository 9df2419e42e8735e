"""pipeline.train pieces that need no processes: accumulation, checkpoints, launch commands."""
from __future__ import annotations

import contextlib
import json
import os

import pytest
import torch

from pipeline.train import checkpoint as ckpt
from pipeline.train.launch import resolve_paths, torchrun_command
from pipeline.train.loop import accumulated_backward, make_optimizer, resolve_precision, resume
from pipeline.train.settings import TrainSettings


@pytest.fixture(scope="module")
def tiny():
    import open_clip

    from pipeline.models import register_models

    register_models()
    torch.manual_seed(0)
    return open_clip.create_model("curate-tiny")


def _grads(model) -> dict[str, torch.Tensor]:
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


def test_accumulation_gives_the_big_batch_gradient(tiny):
    import open_clip

    loss_fn = open_clip.ClipLoss()
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    images, texts = torch.randn(8, 3, 64, 64), torch.randint(1, 1000, (8, 32))
    whole = accumulated_backward(tiny, loss_fn, [(images, texts)], contextlib.nullcontext(), scaler)
    expected = _grads(tiny)
    halves = [(images[:4], texts[:4]), (images[4:], texts[4:])]
    accumulated = accumulated_backward(tiny, loss_fn, halves, contextlib.nullcontext(), scaler)
    got = _grads(tiny)
    assert torch.allclose(whole, accumulated, atol=1e-5)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.allclose(expected[name], got[name], atol=1e-5, rtol=1e-3), name


def test_checkpoint_round_trip_and_resume(tiny, tmp_path):
    optimizer = make_optimizer(tiny, 1e-3)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    assert resume(tmp_path, tiny, optimizer, scaler) == 0
    for step in (5, 10):
        ckpt.save_checkpoint(tmp_path, tiny, optimizer, scaler, "curate-tiny", step, epoch=1)
    assert os.path.basename(ckpt.latest_checkpoint(str(tmp_path))) == "step_00000010.pt"
    assert json.loads((tmp_path / ckpt.LATEST_MARKER).read_text()) == {"file": "step_00000010.pt", "step": 10}
    latest = ckpt.load_checkpoint(tmp_path / ckpt.LATEST_NAME)  # weights_only: plain tensors and numbers
    assert latest["step"] == 10 and latest["epoch"] == 1 and latest["name"] == "curate-tiny"
    assert set(latest["state_dict"]) == set(tiny.state_dict())
    assert resume(tmp_path, tiny, make_optimizer(tiny, 1e-3), scaler) == 10
    assert not list(tmp_path.glob("*.tmp*"))


def test_precision_auto_is_fp32_on_cpu():
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"


def test_torchrun_command_single_and_multi_node(tmp_path, monkeypatch):
    for name in ("CURATE_TORCHRUN_ARGS", "PET_NNODES", "PET_RDZV_ENDPOINT", "PET_MASTER_ADDR"):
        monkeypatch.delenv(name, raising=False)
    job = tmp_path / "job.json"
    single = torchrun_command(2, job)
    assert single[1:5] == ["-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]
    assert single[-3:] == ["-m", "pipeline.train.worker", str(job)]
    monkeypatch.setenv("CURATE_TORCHRUN_ARGS", "--nnodes=2 --rdzv-endpoint=head:29400")
    multi = torchrun_command(4, job)
    assert "--standalone" not in multi and ["--nnodes=2", "--rdzv-endpoint=head:29400"] == multi[4:6]
    monkeypatch.delenv("CURATE_TORCHRUN_ARGS")
    monkeypatch.setenv("PET_NNODES", "2")
    assert "--standalone" not in torchrun_command(1, job)


def test_default_paths_are_in_the_run_folder(tmp_path):
    data, train_dir = resolve_paths(TrainSettings(), tmp_path)
    assert data == str(tmp_path / "shards") and train_dir == str((tmp_path / "train").resolve())
    data, train_dir = resolve_paths(TrainSettings(data="/x/{0..3}.tar", output=str(tmp_path / "t")), tmp_path)
    assert data == "/x/{0..3}.tar" and train_dir == str((tmp_path / "t").resolve())
    data, train_dir = resolve_paths(TrainSettings(output="s3://b/t"), "s3://b/run")
    assert (data, train_dir) == ("s3://b/run/shards", "s3://b/t")


def test_pretrained_tag_or_checkpoint_path(tmp_path, monkeypatch):
    from pipeline.errors import UserError
    from pipeline.train.launch import resolve_pretrained

    assert resolve_pretrained(None) is None and resolve_pretrained("openai") == "openai"
    (tmp_path / "w.pt").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    assert resolve_pretrained("w.pt") == str(tmp_path / "w.pt")
    with pytest.raises(UserError, match="checkpoint file not found: missing.pt"):
        resolve_pretrained("missing.pt")
