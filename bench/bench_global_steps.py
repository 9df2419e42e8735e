"""Global steps at 10x the parts over the same rows, and bytes stored per JPEG byte.

1. scale: the same rows cut into P and 10 P input parts (`part_rows` and `samples_per_shard`
   scaled with them, as a run with smaller parts would set them), each global step timed on
   the local engine (2 processes): `pool_filter` (an exact top fraction of a precomputed score:
   radix passes), `dedup` then `metadata` on caption rows; `shard` on rows
   as download leaves them (small JPEGs in the parts, images from download); `semantic_dedup` on 64-d embeddings
   (10% near copies); `image_dedup` on fewer rows (it hashes every image). Target: 10x parts <= 1.6x the time.
   image_dedup runs on 128 px images: its `hash` phase decodes every image, part by part,
   like any per-part stage; the rest of the step is the global exchange.
   Images in the input (a pool delivered with its images): whole `curate run` processes
   (ingest, dedup, shard; local engine, 2 processes) over a parquet of url, text and a small
   JPEG, at P and 10 P parts, side by side (`--runs` times each); dedup + shard seconds from
   each run's summary.json.
   Images from download: the same, but the parquet holds url and text only, pointing at a
   loopback FakeWeb's small JPEGs (ingest, dedup, download, shard; `download.part_rows` scaled
   too; `--download-rows` rows, 50k in 10 and 100 parts by default: every run fetches every image).
2. storage: download -> image_dedup -> clip_score -> shard over loopback photo-like images
   (200..800 px, resized to 256 px): the bytes in the run folder over the JPEG bytes in its
   tars. Target: <= 2.5 (images are written once by download and once into the tars).

    python bench/bench_global_steps.py [--rows 200000] [--parts 40] [--image-rows 20000] [--photos 600] [--runs 2]
        [--download-rows 50000] [--download-parts 10] [--only images_in_input,images_from_download]
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import caption_table, parse_args, report, server_process, stage_settings  # noqa: E402

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def photo_like(seed: int, width: int, height: int, quality: int = 90) -> bytes:
    """A JPEG with the byte size of a photo: smooth colour fields plus fine noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (max(2, height // 24), max(2, width // 24), 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
    pixels = np.asarray(image, dtype=np.int16) + rng.normal(0, 10, (height, width, 3)).astype(np.int16)
    out = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=quality)
    return out.getvalue()


def image_rows(rows: int, seed: int = 0, image_size: int = 24, distinct: int = 64) -> pa.Table:
    """Rows as download leaves them: uid, url, text, `_pos`, a JPEG and its sha256
    (5% exact duplicate pairs, `distinct` different images)."""
    from pipeline.core.hashing import uids_of

    base = caption_table(rows, seed)
    copies = np.arange(rows)
    copies[::20] = np.maximum(copies[::20] - 1, 0)    # every 20th row repeats the one before
    urls = base["url"].take(pa.array(copies)).to_pylist()
    texts = base["text"].take(pa.array(copies)).to_pylist()
    jpgs = [photo_like(i, image_size, image_size, 75) for i in range(distinct)]
    jpg = [jpgs[i % distinct] for i in copies]
    return pa.table({"uid": uids_of(urls, texts), "url": urls, "text": texts,
                     "_pos": pa.array(np.arange(rows, dtype=np.int64)),
                     "jpg": pa.array(jpg, pa.binary()),
                     "sha256": [hashlib.sha256(j).hexdigest() for j in jpg]})


def embedding_rows(rows: int, dim: int = 64, seed: int = 0) -> pa.Table:
    """Rows as clip_score leaves them for semantic_dedup: uid, url, text, `_pos` and a unit
    image embedding (float16); every 10th row a near copy of the row before it."""
    from pipeline.clip.embeddings import embedding_array
    from pipeline.core.hashing import uids_of

    base = caption_table(rows, seed)
    base = base.add_column(0, "uid", pa.array(uids_of(base["url"].to_pylist(), base["text"].to_pylist())))
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, dim)).astype(np.float32)
    x[1::10] = x[0::10][:len(x[1::10])] + 0.01 * rng.normal(size=(len(x[1::10]), dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return base.append_column("_pos", pa.array(np.arange(rows, dtype=np.int64))).append_column(
        "image_embedding", embedding_array(x))


def write_parts(table: pa.Table, folder: Path, count: int) -> list[str]:
    from pipeline.core import parts

    size = -(-table.num_rows // count)
    paths = []
    for i in range(count):
        path = folder / f"part-{i:05d}.parquet"
        parts.write_parquet(table.slice(i * size, size), path, row_group_rows=256)
        paths.append(str(path))
    return paths


def run_chain(folder: Path, inputs: list[str], steps: list, engine) -> dict:
    from pipeline.core.steps import execute_step

    seconds = {}
    for index, step in enumerate(steps):
        record = execute_step(step, engine, folder, index, 0, inputs)
        seconds[step.name] = record["seconds"]
        inputs = record["parts"]
    return seconds


def scale(rows: int, parts_low: int, image_rows_count: int, work: Path) -> dict:
    from pipeline.engines.local import LocalEngine
    from pipeline.stages.dedup import DedupStep
    from pipeline.stages.image_dedup import ImageDedupStep
    from pipeline.stages.metadata import MetadataStep
    from pipeline.stages.pool_filter import PoolFilterStage, PoolFilterStep
    from pipeline.stages.semantic_dedup import SemanticDedupStep
    from pipeline.stages.shard import ShardStep

    table = image_rows(rows)
    images = image_rows(image_rows_count, image_size=128, distinct=2048)  # phash decodes them
    embeddings = embedding_rows(rows)
    results = {}
    with LocalEngine(2) as engine:
        engine.map(abs, [1, 2])   # start the workers outside the timings
        for count in (parts_low, parts_low * 10):
            per_part = -(-rows // count)
            scores = np.random.default_rng(0).uniform(0.1, 0.4, rows).astype(np.float32)
            captions = table.drop_columns(["jpg", "sha256"]).append_column("score", pa.array(scores))
            text = write_parts(captions, work / f"text-{count}", count)
            results[count] = run_chain(work / f"text-run-{count}", text, [
                PoolFilterStep(PoolFilterStage, stage_settings("pool_filter", {"score_col": "score",
                                                                              "top_fraction": 0.9})),
                DedupStep(stage_settings("dedup"), per_part),
                MetadataStep(stage_settings("metadata", {"entries": ["wordfreq:20000"], "t": 200}))], engine)
            downloaded = write_parts(table, work / f"img-{count}", count)
            results[count].update(run_chain(work / f"shard-run-{count}", downloaded, [
                ShardStep(stage_settings("shard", {"samples_per_shard": per_part}))], engine))
            embedded = write_parts(embeddings, work / f"emb-{count}", count)
            results[count].update(run_chain(work / f"semantic-run-{count}", embedded, [
                SemanticDedupStep(stage_settings("semantic_dedup"))], engine))
            hashed = write_parts(images, work / f"big-img-{count}", count)
            results[count].update(run_chain(work / f"image-run-{count}", hashed, [
                ImageDedupStep(stage_settings("image_dedup", {"phash_distance": 4}))], engine))
    low, high = results[parts_low], results[parts_low * 10]
    out = {"rows": rows, "image_dedup_rows": image_rows_count, "parts": [parts_low, parts_low * 10]}
    for name in low:
        out[f"{name}_seconds"] = [low[name], high[name]]
        out[f"{name}_ratio_10x_parts"] = round(high[name] / max(low[name], 1e-9), 2)
    return out


def input_images_runs(rows: int, parts_low: int, runs: int, work: Path) -> dict:
    """dedup + shard seconds of whole `curate run` processes over rows that carry their own
    images (url, text, a small JPEG; 5% exact duplicates), at P and 10 P parts, alternating."""
    import yaml

    source = work / "pool-with-images.parquet"
    work.mkdir(parents=True, exist_ok=True)
    pq.write_table(image_rows(rows).drop_columns(["uid", "_pos", "sha256"]), source, row_group_size=10_000)
    seconds: dict = {parts_low: [], parts_low * 10: []}
    for attempt in range(runs):
        for count in seconds:
            per_part = -(-rows // count)
            run_dir = work / f"input-images-{count}-{attempt}"
            config = {"input": {"path": [str(source)], "part_rows": per_part}, "output": str(run_dir),
                      "engine": "local", "processes": 2, "dedup": {"keys": ["url", "text"]},
                      "shard": {"samples_per_shard": per_part}}
            path = work / f"input-images-{count}.yaml"
            path.write_text(yaml.safe_dump(config))
            subprocess.run([sys.executable, "-m", "pipeline", "run", str(path)], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            stages = json.loads((run_dir / "summary.json").read_text())["stages"]
            seconds[count].append(round(sum(s["seconds"] for s in stages if s["name"] in ("dedup", "shard")), 2))
    low, high = seconds[parts_low], seconds[parts_low * 10]
    return {"rows": rows, "parts": [parts_low, parts_low * 10], "dedup_shard_seconds": [low, high],
            "ratio_10x_parts": [round(h / max(lo, 1e-9), 2) for lo, h in zip(low, high)], "target": 1.6}


def serve_small(distinct, port_pipe, stop) -> None:
    """Child process: a FakeWeb serving `distinct` small JPEGs at `/p/<i>.jpg` (any query)."""
    from pipeline.testing.fakeweb import FakeWeb

    with FakeWeb("127.0.0.1") as web:
        for i in range(distinct):
            web.add_image(f"/p/{i}.jpg", photo_like(i, 24, 24, 75))
        port_pipe.send(web.port)
        stop.wait()


def download_images_runs(rows: int, parts_low: int, runs: int, work: Path, distinct: int = 64) -> dict:
    """dedup + shard seconds of whole `curate run` processes whose images come from the
    download step (url, text pointing at a loopback FakeWeb's small JPEGs; 5% exact duplicate
    rows), at P and 10 P parts (`input.part_rows`, `download.part_rows` and
    `samples_per_shard` scaled together), alternating; download seconds for context."""
    import yaml

    work.mkdir(parents=True, exist_ok=True)
    seconds: dict = {parts_low: [], parts_low * 10: []}
    download: dict = {parts_low: [], parts_low * 10: []}
    steps: dict = {}
    kept: set = set()
    with server_process(serve_small, distinct) as port:
        base = caption_table(rows)
        copies = np.arange(rows)
        copies[::20] = np.maximum(copies[::20] - 1, 0)    # every 20th row repeats the one before
        urls = [f"http://127.0.0.1:{port}/p/{c % distinct}.jpg?n={c}" for c in copies]
        source = work / "pairs-to-download.parquet"
        pq.write_table(pa.table({"url": urls, "text": base["text"].take(pa.array(copies))}), source,
                       row_group_size=10_000)
        for attempt in range(runs):
            for count in seconds:
                per_part = -(-rows // count)
                run_dir = work / f"download-images-{count}-{attempt}"
                config = {"input": {"path": [str(source)], "part_rows": per_part}, "output": str(run_dir),
                          "engine": "local", "processes": 2, "allow_networks": ["127.0.0.1/32"],
                          "dedup": {"keys": ["url", "text"]},
                          "download": {"image_size": 24, "threads": 16, "timeout": 10, "pdq": False,
                                       "part_rows": per_part},
                          "shard": {"samples_per_shard": per_part}}
                path = work / f"download-images-{count}.yaml"
                path.write_text(yaml.safe_dump(config))
                subprocess.run([sys.executable, "-m", "pipeline", "run", str(path)], check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                summary = json.loads((run_dir / "summary.json").read_text())
                by_name = {s["name"]: s["seconds"] for s in summary["stages"]}
                seconds[count].append(round(by_name["dedup"] + by_name["shard"], 2))
                download[count].append(round(by_name["download"], 2))
                steps.setdefault(count, []).append({k: round(v, 2) for k, v in by_name.items()})
                kept.add(summary["kept_rows"])
    low, high = seconds[parts_low], seconds[parts_low * 10]
    return {"rows": rows, "parts": [parts_low, parts_low * 10], "dedup_shard_seconds": [low, high],
            "ratio_10x_parts": [round(h / max(lo, 1e-9), 2) for lo, h in zip(low, high)], "target": 1.6,
            "download_seconds": [download[parts_low], download[parts_low * 10]],
            "kept_rows": sorted(kept), "step_seconds": {str(k): v for k, v in steps.items()}}


def serve(sizes, port_pipe, stop) -> None:
    """Child process: a FakeWeb serving photo-like JPEGs, generated once up front."""
    from pipeline.testing.fakeweb import FakeWeb

    with FakeWeb("127.0.0.1") as web:
        for i, (width, height) in enumerate(sizes):
            web.add_image(f"/p/{i}.jpg", photo_like(1000 + i, width, height))
        port_pipe.send(web.port)
        stop.wait()


def folder_bytes(folder: Path) -> dict[str, int]:
    """Bytes under each top-level entry of a run folder (`steps/` per step)."""
    sizes: dict[str, int] = {}
    for path in folder.rglob("*"):
        if path.is_file():
            rel = path.relative_to(folder).parts
            key = "/".join(rel[:2]) if rel[0] == "steps" and len(rel) > 1 else rel[0]
            sizes[key] = sizes.get(key, 0) + path.stat().st_size
    return dict(sorted(sizes.items()))


def tar_jpeg_bytes(shards: Path) -> int:
    total = 0
    for path in shards.glob("*.tar"):
        with tarfile.open(path) as tar:
            total += sum(m.size for m in tar if m.name.endswith(".jpg"))
    return total


def reference_model() -> Path:
    """curate-tiny, trained once and cached in bench/results/ (as the demo does; smoke runs too)."""
    from common import ROOT
    from pipeline.testing.tiny_clip import TinyTrainConfig, ensure_tiny_checkpoint

    return ensure_tiny_checkpoint(ROOT / "bench" / "results" / "curate-tiny", TinyTrainConfig(threads=1))


def storage(photos: int, work: Path) -> dict:
    from pipeline.app import run_pipeline
    from pipeline.config import settings_from_dict

    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    sizes = [(int(rng.integers(200, 801)), int(rng.integers(200, 801))) for _ in range(photos)]
    checkpoint = reference_model()
    with server_process(serve, sizes) as port:
        captions = caption_table(photos)["text"].to_pylist()
        urls = [f"http://127.0.0.1:{port}/p/{i}.jpg" for i in range(photos)]
        pairs = work / "pairs.parquet"
        pq.write_table(pa.table({"url": urls, "text": captions}), pairs)
        run_dir = work / "storage-run"
        config = {"input": {"path": [str(pairs)]}, "output": str(run_dir), "processes": 2,
                  "allow_networks": ["127.0.0.1/32"],
                  "download": {"image_size": 256, "threads": 16, "part_rows": 100},
                  "image_dedup": {"phash_distance": 2},
                  "clip_score": {"model": "curate-tiny", "pretrained": str(checkpoint), "device": "cpu",
                                 "precision": "fp32", "filter": "none"},
                  "shard": {"samples_per_shard": 100}}
        summary = run_pipeline(settings_from_dict(config, "bench"), run_dir, log=lambda *_: None)
    by_folder = folder_bytes(run_dir)
    jpeg = tar_jpeg_bytes(run_dir / "shards")
    return {"photos": photos, "kept": summary["kept_rows"], "tar_jpeg_bytes": jpeg,
            "run_folder_bytes": sum(by_folder.values()),
            "bytes_stored_per_jpeg_byte": round(sum(by_folder.values()) / max(jpeg, 1), 2),
            "by_folder": by_folder}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--parts", type=int, default=40)
    parser.add_argument("--image-rows", type=int, default=10_000)
    parser.add_argument("--photos", type=int, default=600)
    parser.add_argument("--runs", type=int, default=2, help="whole runs of each size with images in the input "
                                                               "and with images from download")
    parser.add_argument("--download-rows", type=int, default=50_000,
                        help="rows of the whole runs with images from download (fetched over loopback)")
    parser.add_argument("--download-parts", type=int, default=10)
    parser.add_argument("--only", default="", help="comma-separated parts to run: scale, images_in_input, "
                                                   "images_from_download, storage (default: all)")
    args = parse_args(parser, argv, smoke={"rows": 400, "parts": 2, "image_rows": 100, "photos": 8, "runs": 1,
                                           "download_rows": 200, "download_parts": 2})
    wanted = set(filter(None, args.only.split(","))) or {"scale", "images_in_input", "images_from_download",
                                                          "storage"}
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        if "scale" in wanted:
            results.update(scale(args.rows, args.parts, args.image_rows, Path(tmp)))
        if "images_in_input" in wanted:
            results["images_in_input"] = input_images_runs(args.rows, args.parts, args.runs,
                                                           Path(tmp) / "input-images")
        if "images_from_download" in wanted:
            results["images_from_download"] = download_images_runs(args.download_rows, args.download_parts,
                                                                   args.runs, Path(tmp) / "download-images")
        if "storage" in wanted and not args.smoke:   # download and CLIP scoring: minutes even at a tiny size
            results["storage"] = storage(args.photos, Path(tmp) / "storage")
    report("global_steps" if wanted == {"scale", "images_in_input", "images_from_download", "storage"}
           else "global_steps_" + "_".join(sorted(wanted)), results)
    return results


if __name__ == "__main__":
    main()
