"""ClipScoreStage.process vs a raw open_clip encode loop, same process, same model object.

Both start from JPEG bytes and captions and end with one cosine score per pair: decode and
preprocess with the model's transform, tokenize, encode image and text in batches of the same
size and precision. The raw loop pads text to the full context (open_clip's default); the
stage trims it to the longest caption of the batch. Runs alternate; best of `--repeat`.

    python bench/bench_clip_score.py                      # curate-tiny on CPU, fp32
    python bench/bench_clip_score.py --model ViT-B-32 --device cuda --precision bf16 \
        --n 8192 --batch-size 256 --image-size 256        # see bench/gpu.sh
"""
from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import parse_args, report, stage_settings  # noqa: E402
from pipeline.stages.clip_score import ClipScoreStage  # noqa: E402
from pipeline.testing.world import make_world  # noqa: E402


def raw_open_clip_scores(clip, jpgs: list[bytes], texts: list[str], batch_size: int) -> np.ndarray:
    """What a user would write with open_clip alone."""
    out = []
    with torch.inference_mode():
        for start in range(0, len(jpgs), batch_size):
            images = torch.stack([clip.preprocess(Image.open(io.BytesIO(j)))
                                  for j in jpgs[start:start + batch_size]])
            tokens = clip.tokenizer(texts[start:start + batch_size])
            image_features = clip.model.encode_image(images.to(clip.device, dtype=clip.input_dtype))
            text_features = clip.model.encode_text(tokens.to(clip.device))
            image_features = F.normalize(image_features.float(), dim=-1)
            text_features = F.normalize(text_features.float(), dim=-1)
            out.append((image_features * text_features).sum(-1).cpu().numpy())
    return np.concatenate(out)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="curate-tiny")
    parser.add_argument("--pretrained", default=None, help="tag or checkpoint; default random weights")
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=None, help="default: the model's input size")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads for both paths (on a shared machine use 1)")
    args = parse_args(parser, argv, smoke={"n": 32, "batch_size": 16, "repeat": 1, "threads": 1})
    if args.threads:
        torch.set_num_threads(args.threads)

    settings = stage_settings("clip_score", {"model": args.model, "pretrained": args.pretrained, "threshold": 0.0,
                                             "batch_size": args.batch_size, "device": args.device,
                                             "precision": args.precision, "filter": "none"})
    stage = ClipScoreStage(settings)
    stage.setup()
    clip = stage.scorer.clip
    image_size = args.image_size or _model_image_size(clip.model)
    world = make_world(args.n, seed=0, image_size=image_size)
    jpgs, texts = [s.jpg for s in world], [s.caption for s in world]
    table = pa.table({"jpg": pa.array(jpgs, pa.binary()), "text": texts})

    stage.process(table.slice(0, args.batch_size))  # warm up both paths
    raw_open_clip_scores(clip, jpgs[:args.batch_size], texts[:args.batch_size], args.batch_size)
    raw_best = ours_best = float("inf")
    for _ in range(args.repeat):
        raw_s, raw = _timed(lambda: raw_open_clip_scores(clip, jpgs, texts, args.batch_size))
        ours_s, out = _timed(lambda: stage.process(table))
        raw_best, ours_best = min(raw_best, raw_s), min(ours_best, ours_s)
    ours = out["clip_score"].to_numpy()
    results = {
        "model": args.model, "device": str(clip.device), "precision": clip.precision,
        "gpu": torch.cuda.get_device_name() if clip.device.type == "cuda" else None,
        "threads": torch.get_num_threads(), "pairs": args.n, "batch_size": args.batch_size,
        "image_size": image_size,
        "raw_open_clip_pairs_per_s": round(args.n / raw_best, 1),
        "clip_score_stage_pairs_per_s": round(args.n / ours_best, 1),
        "ratio": round(raw_best / ours_best, 3), "target": 0.85,
        "max_abs_score_diff": float(np.abs(ours - raw).max()),
    }
    report(f"clip_score_{args.model}_{clip.device.type}_{clip.precision}", results)
    return results


def _timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def _model_image_size(model) -> int:
    size = model.visual.image_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


if __name__ == "__main__":
    main()
