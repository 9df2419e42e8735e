"""The whole path with input, run folder, model, shards and checkpoints in a bucket of a real
S3-compatible server on loopback (moto_server behind a counting, fault-injecting proxy)."""
import os
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.core import storage
from pipeline.testing.fakeweb import FakeWeb
from tests.support import assert_same_result, kept_uids, ledger_rows, run, serve_world

ROWS = 96
BUCKET = "curate"
SLOW_MS = 40


@pytest.fixture(scope="module")
def store(object_store):
    object_store.create_bucket(BUCKET)
    return object_store


@pytest.fixture
def s3_env(store, monkeypatch):
    for key, value in store.env().items():
        monkeypatch.setenv(key, value)
    storage.configure({})
    yield store
    storage.configure({})


@pytest.fixture(scope="module")
def world_web():
    with FakeWeb() as web:
        yield (web, *serve_world(web, ROWS, delay_ms=SLOW_MS))   # slow: a run can be killed mid-way


def pairs_table(world_web):
    web, urls, texts = world_web
    return pa.table({"url": urls, "text": texts})


def config(input_path, output, checkpoint, engine="local", train_steps=0, **extra):
    config = {
        "input": {"path": [input_path], "part_rows": 24}, "output": output, "engine": engine,
        "processes": 2, "allow_networks": ["127.0.0.1/32"],
        "download": {"image_size": 64, "threads": 4, "timeout": 5, "part_rows": 24, "resize_mode": "border"},
        "image_dedup": {"phash_distance": 0},
        "clip_score": {"model": "curate-tiny", "pretrained": checkpoint, "device": "cpu",
                       "precision": "fp32", "batch_size": 32, "threshold": 0.5},
        "shard": {"samples_per_shard": 8},
        "task_rows": 16,
        "ray": {"num_cpus": 2}, "spark": {"master": "local[2]"},
    }
    if train_steps:
        config["train"] = {"model": "curate-tiny", "steps": train_steps, "batch_size": 8,
                           "launcher": "inline", "workers": 0, "precision": "fp32", "warmup": 1,
                           "checkpoint_every": 1}
    config.update(extra)
    return config


def upload_file(store, local_path, key):
    with open(local_path, "rb") as stream:
        return store.put(BUCKET, key, stream.read())


@pytest.fixture(scope="module")
def bucket_inputs(store, world_web, tiny_clip_checkpoint, tmp_path_factory):
    """The pairs and the model, in the bucket."""
    folder = tmp_path_factory.mktemp("inputs")
    pq.write_table(pairs_table(world_web), folder / "pairs.parquet")
    model = os.path.dirname(str(tiny_clip_checkpoint))
    for name in ("model_config.json", "curate-tiny.json"):
        if os.path.exists(os.path.join(model, name)):
            upload_file(store, os.path.join(model, name), f"models/{name}")
    return {"pairs": upload_file(store, folder / "pairs.parquet", "inputs/pairs.parquet"),
            "model": upload_file(store, tiny_clip_checkpoint, "models/epoch_latest.pt"),
            "local_pairs": str(folder / "pairs.parquet"), "local_model": str(tiny_clip_checkpoint)}


@pytest.fixture(scope="module")
def local_reference(bucket_inputs, tmp_path_factory):
    """The same config on local disk: what every bucket run must equal."""
    out = str(tmp_path_factory.mktemp("local") / "run")
    run(config(bucket_inputs["local_pairs"], out, bucket_inputs["local_model"]))
    return out


def keys(store, prefix):
    return store.list_keys(BUCKET, prefix)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["local", "ray", "spark"])
def test_bucket_run_equals_local_disk_and_trains_from_the_bucket(
        engine, s3_env, bucket_inputs, local_reference, tmp_path, monkeypatch):
    store = s3_env
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    run_dir = f"s3://{BUCKET}/runs/{engine}"
    steps = 2 if engine == "local" else 0
    summary = run(config(bucket_inputs["pairs"], run_dir, bucket_inputs["model"], engine, steps))
    assert summary["kept_rows"] > 20
    assert_same_result(run_dir, local_reference)
    written = keys(store, f"runs/{engine}/")
    assert f"runs/{engine}/kept/_SUCCESS" in written and f"runs/{engine}/shards/sizes.json" in written
    assert not [k for k in written if k.endswith(".tmp")], "no temporaries in the bucket"
    assert list(workdir.iterdir()) == [], "nothing written in the working directory"
    if engine != "local":
        return
    checkpoints = f"runs/{engine}/train/checkpoints/"
    assert {"latest.json", "epoch_latest.pt", "step_00000002.pt", "model_config.json"} <= \
        {k[len(checkpoints):] for k in keys(store, checkpoints)}
    assert summary["train"]["steps"] == 2
    # training resumes from the newest checkpoint in the bucket
    from pipeline.train import train
    from pipeline.train.settings import TrainSettings

    result = train(TrainSettings(model="curate-tiny", steps=3, batch_size=8, launcher="inline", workers=0,
                                 precision="fp32", warmup=1, checkpoint_every=1), run_dir)
    assert result["start_step"] == 2 and result["steps"] == 3
    assert "step_00000003.pt" in {k[len(checkpoints):] for k in keys(store, checkpoints)}


@pytest.mark.slow
def test_injected_503s_and_resets_are_retried_with_the_same_result(s3_env, bucket_inputs, local_reference):
    store = s3_env
    for method in ("PUT", "GET"):
        store.inject(method, 3, "503")
        store.inject(method, 2, "reset")
    store.inject("PUT", 2, "503", key_contains="shards/")
    run_dir = f"s3://{BUCKET}/runs/faults"
    run(config(f"s3://{BUCKET}/inputs/*.parquet", run_dir, bucket_inputs["model"]))   # a glob in the bucket
    assert store.faults_left() == 0
    assert_same_result(run_dir, local_reference)


def curate(config_path, env, **popen):
    return subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(config_path)], env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, **popen)


def kill_when(proc, ready, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline and not ready() and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read()[-2000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_sigkill_during_download_and_shard_then_rerun(s3_env, bucket_inputs, local_reference, tmp_path):
    store = s3_env
    run_dir = f"s3://{BUCKET}/runs/killed"
    prefix = "runs/killed/"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config(bucket_inputs["pairs"], run_dir, bucket_inputs["model"])))
    env = {**os.environ, **store.env()}
    store.reset_counts()

    done = prefix + "steps/01_download/map/done/"
    proc = curate(path, env, cwd=tmp_path)
    kill_when(proc, lambda: len([k for k in keys(store, done) if k.endswith(".json")]) >= 2)
    finished = [k for k in keys(store, done) if k.endswith(".json")]
    assert 2 <= len(finished) < 4, "killed part-way through the download"

    # the next run stalls on one shard (the store keeps refusing it) and is killed there
    store.inject("PUT", 10_000, "503", key_contains=prefix + "shards/00003.tar")
    proc = curate(path, env, cwd=tmp_path)
    kill_when(proc, lambda: prefix + "shards/00001.tar" in keys(store, prefix + "shards/"), timeout=240)
    store.clear_faults()
    assert prefix + "shards/sizes.json" not in keys(store, prefix + "shards/")

    result = subprocess.run([sys.executable, "-m", "pipeline", "run", str(path)], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_result(run_dir, local_reference)
    writes = store.puts_per_key()
    for marker in finished:   # parts finished before the first kill were never written again
        data = marker.replace("/done/", "/data/").replace(".json", ".parquet")
        assert writes[marker] == 1 and writes[data] == 1, (marker, writes[marker], writes[data])
    assert max(writes[k] for k in writes if "/done/" in k) == 1, "a finished part was written again"
    assert list(tmp_path.iterdir()) == [path], "nothing written in the working directory"


def test_permanent_errors_fail_in_one_line_naming_the_url(store, bucket_inputs, tmp_path):
    env = {**os.environ, **store.env()}
    missing = tmp_path / "missing.yaml"
    missing.write_text(yaml.safe_dump(config(bucket_inputs["pairs"], "s3://no-such-bucket/run",
                                             bucket_inputs["model"])))
    result = subprocess.run([sys.executable, "-m", "pipeline", "run", str(missing)], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "s3://no-such-bucket/run" in lines[0], result.stderr[-2000:]

    denied = tmp_path / "denied.yaml"
    denied.write_text(yaml.safe_dump(config(bucket_inputs["pairs"], f"s3://{BUCKET}/runs/denied",
                                            bucket_inputs["model"])))
    store.inject("ANY", 10_000, "403")
    try:
        result = subprocess.run([sys.executable, "-m", "pipeline", "run", str(denied)], env=env,
                                capture_output=True, text=True, timeout=120)
    finally:
        store.clear_faults()
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "access denied" in lines[0] and f"s3://{BUCKET}/" in lines[0], result.stderr


def test_memory_urls_run_in_one_process_with_the_same_result(tmp_path):
    from tests.support import text_config, write_sample

    sample = write_sample(tmp_path / "s.parquet", rows=1500)
    run(text_config(sample, tmp_path / "local"))
    summary = run(text_config(sample, "memory://runs/text"))
    assert summary == storage.read_json("memory://runs/text/summary.json")
    assert kept_uids("memory://runs/text") == kept_uids(tmp_path / "local")
    assert ledger_rows("memory://runs/text") == ledger_rows(tmp_path / "local")
