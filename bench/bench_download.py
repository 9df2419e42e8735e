"""Download, side by side with raw img2dataset on the same loopback corpus, in one process.

The corpus: N generated images `/img/<name>.jpg?w=..&h=..` (sizes 200..800 px) served by
`pipeline.testing.fakeweb.FakeWeb` from a separate process (so the server does not take the
GIL from either downloader), captions from the LAION sample. Both sides use the same
threads, image size, resize mode, encode quality and timeout, and no retries.

- stage: `DownloadStage.process` on one table vs `img2dataset.download(processes_count=1)`
  (raw: timed by its own shard duration, which leaves out its process spawn; wall also shown)
- step: the whole `download` step through `run_pipeline` on the Ray engine (2 tasks) vs
  `img2dataset.download(processes_count=2)` over 2 shards (timed by its shards). The step
  runs twice on one Ray: cold (each fresh worker imports OpenCV/albumentations, ~1-4 s, in
  its first task) and warm (what a long run sees; img2dataset's shard timer starts after
  its imports too).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import parse_args, real_captions, report, server_process  # noqa: E402

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
SETTINGS = {"image_size": 256, "resize_mode": "border", "encode_quality": 95, "timeout": 10,
            "retries": 0}
LOCAL = ["127.0.0.1/32"]


def corpus_sizes(count: int, seed: int = 0) -> list[tuple[str, int, int]]:
    rng = random.Random(seed)
    return [(f"b{i:06d}.jpg", rng.randrange(200, 801), rng.randrange(200, 801)) for i in range(count)]


def serve(sizes, port_pipe, stop) -> None:
    """Child process: a FakeWeb whose images are generated once up front, then served."""
    from pipeline.testing.content import make_image
    from pipeline.testing.fakeweb import FakeWeb

    with FakeWeb("127.0.0.1") as web:
        for name, width, height in sizes:
            web.add_image(f"/img/{name}", make_image.__wrapped__(name, "jpg", width, height))
        port_pipe.send(web.port)
        stop.wait()


def corpus_table(port: int, sizes) -> pa.Table:
    captions = real_captions()
    urls = [f"http://127.0.0.1:{port}/img/{name}?w={w}&h={h}" for name, w, h in sizes]
    texts = [captions[i % len(captions)] for i in range(len(urls))]
    return pa.table({"uid": [f"{i:032x}" for i in range(len(urls))], "url": urls, "text": texts})


def run_ours(table: pa.Table, threads: int) -> dict:
    from pipeline.stages.download import DownloadStage

    stage = DownloadStage({**SETTINGS, "threads": threads}, allow_networks=LOCAL)
    stage.setup()
    stage.process(table.slice(0, 20))  # warm: imports, OpenCV, the guarded opener
    start = time.perf_counter()
    out = stage.process(table)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "images": out["_reason"].null_count}


def run_raw(table: pa.Table, threads: int, processes: int, folder: Path) -> dict:
    import img2dataset

    folder.mkdir(parents=True, exist_ok=True)
    source = folder / "urls.parquet"
    pq.write_table(table.select(["url", "text"]), source)
    start = time.perf_counter()
    img2dataset.download(
        url_list=str(source), input_format="parquet", url_col="url", caption_col="text",
        output_folder=str(folder / "out"), output_format="webdataset", processes_count=processes,
        thread_count=threads, number_sample_per_shard=-(-table.num_rows // processes),
        image_size=SETTINGS["image_size"], resize_mode=SETTINGS["resize_mode"],
        encode_quality=SETTINGS["encode_quality"], timeout=SETTINGS["timeout"],
        retries=SETTINGS["retries"], enable_wandb=False)
    wall = time.perf_counter() - start
    stats = [json.loads(p.read_text()) for p in (folder / "out").glob("*_stats.json")]
    return {"wall_seconds": wall, "seconds": max(s["duration"] for s in stats),
            "images": sum(s["successes"] for s in stats)}


def run_step(table: pa.Table, threads: int, folder: Path) -> dict:
    """The pipeline with only `download` (after ingest) on the Ray engine, in 2 tasks."""
    from pipeline.app import run_pipeline
    from pipeline.config import settings_from_dict

    source = folder / "input.parquet"
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.select(["url", "text"]), source)
    config = {"input": {"path": [str(source)]}, "output": str(folder / "run"), "engine": "ray",
              "allow_networks": LOCAL,
              "download": {**SETTINGS, "threads": threads, "part_rows": -(-table.num_rows // 2)}}
    start = time.perf_counter()
    summary = run_pipeline(settings_from_dict(config, "bench"), folder / "run", log=lambda *_: None)
    wall = time.perf_counter() - start
    download = next(s for s in summary["stages"] if s["name"] == "download")
    return {"seconds": download["seconds"], "wall_seconds": wall, "images": download["rows_out"]}


def run_steps_ray(table: pa.Table, threads: int, folder: Path) -> tuple[dict, dict]:
    """Twice on one local Ray of 2 CPUs: with fresh workers (each imports OpenCV etc. in its
    first task), then with the same, warm workers (as img2dataset's shard timer sees them)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        return run_step(table, threads, folder / "cold"), run_step(table, threads, folder / "warm")
    finally:
        ray.shutdown()


def rate(result: dict) -> float:
    return round(result["images"] / result["seconds"], 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--urls", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=64)
    parser.add_argument("--skip-ray", action="store_true")
    args = parse_args(parser, smoke={"urls": 40, "threads": 8, "skip_ray": True})
    sizes = corpus_sizes(args.urls)
    with server_process(serve, sizes) as port:
        results = compare(corpus_table(port, sizes), args.threads, not args.skip_ray)
    report("download", results)


def compare(table: pa.Table, threads: int, with_ray: bool) -> dict:
    results = {"urls": table.num_rows, "threads": threads, **SETTINGS}
    with tempfile.TemporaryDirectory() as tmp:
        raw = run_raw(table, threads, 1, Path(tmp) / "raw1")
        ours = run_ours(table, threads)
        results.update({
            "raw_img2dataset_images": raw["images"], "raw_img2dataset_shard_s": round(raw["seconds"], 3),
            "raw_img2dataset_wall_s": round(raw["wall_seconds"], 3),
            "raw_img2dataset_images_per_s": rate(raw),
            "ours_stage_images": ours["images"], "ours_stage_s": round(ours["seconds"], 3),
            "ours_stage_images_per_s": rate(ours), "ratio": round(rate(ours) / rate(raw), 3),
            "target": 0.9})
        if with_ray:
            results.update(compare_steps(table, threads, Path(tmp)))
    return results


def compare_steps(table: pa.Table, threads: int, folder: Path) -> dict:
    raw = run_raw(table, threads, 2, folder / "raw2")
    cold, warm = run_steps_ray(table, threads, folder / "step")
    return {
        "raw_img2dataset_2proc_images": raw["images"],
        "raw_img2dataset_2proc_images_per_s": rate(raw),
        "raw_img2dataset_2proc_wall_s": round(raw["wall_seconds"], 3),
        "ours_ray_step_cold_images": cold["images"], "ours_ray_step_cold_s": round(cold["seconds"], 3),
        "ours_ray_step_cold_images_per_s": rate(cold),
        "ours_ray_step_warm_images": warm["images"], "ours_ray_step_warm_s": round(warm["seconds"], 3),
        "ours_ray_step_warm_images_per_s": rate(warm),
        "ratio_ray_step_warm": round(rate(warm) / rate(raw), 3),
        "ratio_ray_step_cold": round(rate(cold) / rate(raw), 3)}


if __name__ == "__main__":
    main()
