"""text_mask (issue 25): detection plus masking plus re-embedding per image per core, on 256 px
images with and without text, against the detector run alone through onnxruntime.

Images: `pipeline.testing.rendered_text` pictures (world scenes and real photo tiles) at
256 px, half with a line of rendered words, half without. Everything on one core (one
onnxruntime thread, one torch thread, one OpenCV thread). Per image:

- `onnx_network_ms`: the PP-OCRv4 detection network alone (`InferenceSession.run`, batch 1,
  inputs prepared beforehand): the raw library's floor;
- `rapidocr_detector_ms`: rapidocr_onnxruntime's own `TextDetector` (its pre-processing,
  network and DB post-processing, one image at a time, `limit_side_len` = our `side`);
- `our_detection_ms`: `pipeline.text_spotting.TextDetector.detect` (batches of 16), decoding
  the JPEGs included;
- `stage_ms_text` / `stage_ms_plain`: the stage's whole per-part work (`mask_and_score`:
  decode, detect, mask, re-embed the masked images with the CLIP model) on images with /
  without text. The CLIP model is ViT-B-32 with random weights by default (the cost of the
  real one; no download here), `--model curate-tiny --pretrained <ckpt>` for another.

Ratios: each beside `rapidocr_detector_ms` (the detector run alone through onnxruntime).

    .venv/bin/python bench/bench_text_mask.py [--images 64] [--model ViT-B-32]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import parse_args, report  # noqa: E402

SIZE = 256


def per_image_ms(fn, items: list, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn(items)
        best = min(best, time.perf_counter() - start)
    return 1000 * best / len(items)


def table_of(jpgs: list, dim: int):
    import pyarrow as pa

    from pipeline.clip.embeddings import embedding_array

    rng = np.random.default_rng(0)
    texts = rng.standard_normal((len(jpgs), dim)).astype(np.float32)
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    return pa.table({"uid": [f"{i:05d}" for i in range(len(jpgs))], "text": ["words"] * len(jpgs), "jpg": jpgs,
                     "clip_score": pa.array(np.full(len(jpgs), 0.3, np.float32)),
                     "text_embedding": embedding_array(texts.astype(np.float16))})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=64, help="images of each kind (with, without text)")
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--pretrained", default=None)
    args = parse_args(parser, smoke={"images": 4})

    import cv2
    import torch
    from rapidocr_onnxruntime.ch_ppocr_det import TextDetector as RapidDetector

    from pipeline.stages.text_mask import ClipSpec, TextMaskSettings, detector, mask_and_score, scorer
    from pipeline.testing.photos import jpeg
    from pipeline.testing.rendered_text import plain_cases, text_cases
    from pipeline.text_spotting import decode_rgb, model_path, network_input, network_shape, onnx_session

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    with_text = [jpeg(c.image) for c in text_cases(args.images, SIZE, seed=5)]
    plain = [jpeg(c.image) for c in plain_cases(args.images, SIZE, seed=6)]
    both = with_text + plain
    pixels = [decode_rgb(j) for j in both]
    settings = TextMaskSettings()

    session = onnx_session(threads=1)
    name = session.get_inputs()[0].name
    prepared = [network_input([p], network_shape(*p.shape[:2], settings.side)) for p in pixels]
    network = per_image_ms(lambda items: [session.run(None, {name: x}) for x in items], prepared)

    rapid = RapidDetector({"model_path": model_path(), "limit_side_len": settings.side, "limit_type": "max",
                           "intra_op_num_threads": 1, "inter_op_num_threads": 1, "box_thresh": settings.box_threshold,
                           "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]})
    bgr = [p[:, :, ::-1].copy() for p in pixels]
    rapid_ms = per_image_ms(lambda items: [rapid(x) for x in items], bgr)
    ours = detector(settings)
    found = ours.detect(pixels)
    detection = per_image_ms(lambda items: ours.detect([decode_rgb(j) for j in items]), both)

    spec = ClipSpec(args.model, args.pretrained, "cpu", "fp32", 64)
    dim = int(scorer(spec).embed_dim())
    texts, plains = table_of(with_text, dim), table_of(plain, dim)
    stage_text = per_image_ms(lambda t: mask_and_score(t, settings, spec), texts)
    stage_plain = per_image_ms(lambda t: mask_and_score(t, settings, spec), plains)
    results = {
        "images_with_text": len(with_text), "images_without_text": len(plain), "side": SIZE,
        "clip_model": args.model + ("" if args.pretrained else " (random weights: the cost of the real one)"),
        "found_in_text_images": round(float(np.mean([len(b) > 0 for b in found[:len(with_text)]])), 3),
        "found_in_plain_images": round(float(np.mean([len(b) > 0 for b in found[len(with_text):]])), 3),
        "onnx_network_ms": round(network, 2), "rapidocr_detector_ms": round(rapid_ms, 2),
        "our_detection_ms": round(detection, 2), "stage_ms_text": round(stage_text, 2),
        "stage_ms_plain": round(stage_plain, 2),
        "our_detection_over_rapidocr": round(detection / rapid_ms, 2),
        "stage_text_over_rapidocr": round(stage_text / rapid_ms, 2),
        "stage_plain_over_rapidocr": round(stage_plain / rapid_ms, 2),
    }
    report("text_mask", results)


if __name__ == "__main__":
    main()
