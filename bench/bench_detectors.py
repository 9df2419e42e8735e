"""The learned detectors that ship in wheels (issue 24.2), per image per core (one thread each).

- NudeNet: our heads op (`model: nudenet`: `apply_heads` on a table of JPEG bytes: decode,
  NudeDetector's input, the network batch-wise, its detections and the score) beside
  NudeNet's own `NudeDetector.detect_batch` (its decode, input, network and output; its
  session given one intra-op thread too) and beside the bare ONNX session on ready inputs
  (the network alone: what no wrapper can go under), on the same images; same classes
  asserted. Ratios: NudeDetector's seconds over ours, ours over the bare network.
- Faces: face_blur's detectors on the same decoded images, MTCNN vs the Haar cascade
  (detection alone), and `blur_table` with each (decode, detect, blur, re-encode: what the
  shard step adds per image), on all the images and on the 256 px ones (`_256px`).

Images: scikit-image's real photos (astronaut, coffee, chelsea, rocket, cameraman, ...) and
generated faces, at 256 px (img2dataset's default size) and at their own size (up to 1024).

    .venv/bin/python bench/bench_detectors.py [--images 64] [--repeat 3]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import parse_args, report  # noqa: E402

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "immunohistochemistry", "retina", "coins")


def images(count: int) -> list[bytes]:
    """`count` JPEGs: real photos and generated faces, at 256 px and at their own size."""
    import cv2
    from skimage import data

    from pipeline.testing.faces import face_sample

    base = []
    for name in PHOTOS:
        image = getattr(data, name)()
        image = image if image.ndim == 3 else np.stack([image] * 3, axis=-1)
        image = cv2.cvtColor(np.ascontiguousarray(image[..., :3]), cv2.COLOR_RGB2BGR)
        own = min(1.0, 1024 / max(image.shape[:2]))
        for size in ((256, 256), (round(image.shape[1] * own), round(image.shape[0] * own))):
            scaled = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            base.append(cv2.imencode(".jpg", scaled, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    base += [face_sample(i)[0] for i in range(8)]
    return [base[i % len(base)] for i in range(count)]


def per_image_ms(fns: dict, count: int, repeat: int) -> dict:
    """name -> ms per image of `fns[name]()` over `count` images, best of `repeat`, the
    functions taking turns (a busy machine's load falls on each alike)."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeat):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: round(1000 * seconds / count, 2) for name, seconds in best.items()}


def nudenet(jpgs: list[bytes], repeat: int) -> dict:
    import pyarrow as pa
    from nudenet import NudeDetector
    from nudenet.nudenet import _read_image

    from pipeline.nudenet import LABELS, NudeNet, model_path, session
    from pipeline.stages.heads import HeadSettings, apply_heads, load_head

    head = load_head(HeadSettings(name="nsfw", model="nudenet", batch_size=16))
    table = pa.table({"jpg": pa.array(jpgs, pa.binary())})
    theirs = NudeDetector()
    theirs.onnx_session = session(model_path())   # one intra-op thread, as ours
    blobs = np.concatenate([_read_image(j, 320)[0] for j in jpgs])
    bare = session(model_path())

    def network():
        for start in range(0, len(blobs), 16):
            bare.run(None, {"images": blobs[start:start + 16]})

    ours_classes = NudeNet(session(model_path()), LABELS, 0.25, 16).run(jpgs)[1]
    assert ours_classes == [sorted({d["class"] for d in found}) for found in theirs.detect_batch(jpgs, 16)]
    apply_heads(table.slice(0, 4), [head])   # warm
    ms = per_image_ms({"ours": lambda: apply_heads(table, [head]),
                       "detector": lambda: theirs.detect_batch(jpgs, batch_size=16), "alone": network},
                      len(jpgs), repeat)
    ours, detector, alone = ms["ours"], ms["detector"], ms["alone"]
    return {"nudenet_images": len(jpgs), "nudenet_head_ms": ours, "nudedetector_detect_batch_ms": detector,
            "onnx_session_alone_ms": alone, "nudedetector_over_head": round(detector / ours, 2),
            "head_over_session_alone": round(ours / alone, 2)}


def faces(jpgs: list[bytes], repeat: int, tag: str) -> dict:
    import cv2
    import pyarrow as pa

    from pipeline.stages.face_blur import FaceBlurSettings, blur_table, decode, detector

    cv2.setNumThreads(1)
    decoded = [decode(j) for j in jpgs]
    table = pa.table({"jpg": pa.array(jpgs, pa.binary())})
    out = {f"face_images{tag}": len(jpgs)}
    fns = {}
    for name in ("haar", "mtcnn"):
        settings = FaceBlurSettings(detector=name)
        found = detector(settings)
        out[f"{name}_faces{tag}"] = int(sum(len(b) for b in found.detect(decoded)))   # and warm
        fns[f"{name}_detect_ms{tag}"] = lambda f=found: f.detect(decoded)
        fns[f"{name}_blur_table_ms{tag}"] = lambda s=settings: blur_table(table, s)
    out.update(per_image_ms(fns, len(jpgs), repeat))
    out[f"mtcnn_over_haar_detect{tag}"] = round(out[f"mtcnn_detect_ms{tag}"] / out[f"haar_detect_ms{tag}"], 2)
    out[f"mtcnn_over_haar_blur_table{tag}"] = round(out[f"mtcnn_blur_table_ms{tag}"] /
                                                    out[f"haar_blur_table_ms{tag}"], 2)
    return out


def decode_shape(jpg: bytes) -> tuple:
    from pipeline.stages.face_blur import decode

    return decode(jpg).shape[:2]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    args = parse_args(parser, argv, smoke={"images": 8, "repeat": 1})
    import torch

    torch.set_num_threads(1)
    jpgs = images(args.images)
    small = [j for j in jpgs if decode_shape(j) == (256, 256)]
    results = {**nudenet(jpgs, args.repeat), **faces(jpgs, args.repeat, ""),
               **faces(small, args.repeat, "_256px"), "threads": 1}
    report("detectors", results)
    return results


if __name__ == "__main__":
    main()
