"""PDQ (issue 24): hashing cost per image, and matching images/s per core against 1M and 10M
list hashes.

- Hashing: `pdqhash.compute` (the raw library, the reference C++) beside our
  `pipeline.pdq.hash_pixels` on the same decoded arrays (same bits and quality, asserted),
  our `hash_image` on the JPEG bytes (decode + hash: what the download task adds per image),
  and, for scale, img2dataset's `Resizer` (decode + resize + encode: the download task's own
  CPU work per image), on real photos (scikit-image's) at their sizes and at 1024 px.
- In the download task: `DownloadStage.process` over a loopback corpus (bench_download's:
  generated JPEGs of 200..800 px, served from another process), `download.pdq` off and on,
  best of 3 each, alternating: what always-on hashing costs the stage.
- Matching: `PdqIndex.matches` (16 x 16-bit multi-index, exact) one image at a time, as the
  download task calls it, against the raw baselines on the same queries: numpy popcount over
  every list hash and faiss `IndexBinaryFlat` (1 thread), both exact. Queries: half near
  copies of list hashes (0..30 bits flipped, as resized/re-encoded/cropped variants measure),
  half random (no match). Same answers asserted.

    .venv/bin/python bench/bench_pdq.py [--sizes 1000000,10000000] [--queries 2000] [--urls 600] [--smoke]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import parse_args, report, server_process  # noqa: E402
from pipeline.pdq import PdqIndex, brute_force_matches, hash_image, hash_pixels, reference_hash  # noqa: E402

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "immunohistochemistry", "motorcycle_left")


def photos() -> list[bytes]:
    import cv2
    from skimage import data

    encoded = []
    for name in PHOTOS:
        try:
            image = getattr(data, name)()
        except Exception:  # pylint: disable=broad-except  # a photo needing a download is skipped
            continue
        image = image if image.ndim == 3 else np.stack([image] * 3, axis=-1)
        image = np.ascontiguousarray(image[..., :3])
        for scale in (None, 1024):
            if scale:
                f = scale / max(image.shape[:2])
                image = cv2.resize(image, (round(image.shape[1] * f), round(image.shape[0] * f)))
            encoded.append(cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                                        [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    return encoded


def per_image_ms(fn, items, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, time.perf_counter() - start)
    return 1000 * best / len(items)


def hashing() -> dict:
    import io

    import cv2
    import pdqhash
    from img2dataset.resizer import Resizer

    cv2.setNumThreads(1)
    images = photos()
    decoded = [cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR) for b in images]
    rgb = [cv2.cvtColor(d, cv2.COLOR_BGR2RGB) for d in decoded]
    assert [hash_pixels(d) for d in decoded] == [reference_hash(d) for d in decoded], "same bits and quality"
    resizer = Resizer(image_size=256, resize_mode="center_crop", resize_only_if_bigger=False,
                      encode_quality=95, encode_format="jpg")
    raw = per_image_ms(pdqhash.compute, rgb)
    ours = per_image_ms(hash_pixels, decoded)
    with_decode = per_image_ms(hash_image, images)
    resize = per_image_ms(lambda b: resizer(io.BytesIO(b)), images)
    return {"images": len(images), "mean_pixels": int(np.mean([d.shape[0] * d.shape[1] for d in decoded])),
            "pdqhash_compute_ms": round(raw, 2), "hash_pixels_ms": round(ours, 2),
            "pdqhash_over_ours": round(raw / ours, 1), "hash_image_with_decode_ms": round(with_decode, 2),
            "resizer_ms": round(resize, 2), "hash_image_over_resizer": round(with_decode / resize, 2)}


def download_stage(urls: int) -> dict:
    from bench_download import LOCAL, SETTINGS, corpus_sizes, corpus_table, serve
    from pipeline.stages.download import DownloadStage

    sizes = corpus_sizes(urls)
    with server_process(serve, sizes) as port:
        table = corpus_table(port, sizes)
        stages = {pdq: DownloadStage({**SETTINGS, "threads": 16, "pdq": pdq}, allow_networks=LOCAL)
                  for pdq in (False, True)}
        best = {False: float("inf"), True: float("inf")}
        for stage in stages.values():
            stage.setup()
            stage.process(table.slice(0, 20))     # warm: imports, OpenCV, the guarded opener
        for _ in range(3):
            for pdq, stage in stages.items():
                start = time.perf_counter()
                out = stage.process(table)
                best[pdq] = min(best[pdq], time.perf_counter() - start)
                assert out["_reason"].null_count == urls and out["pdq"].null_count == (0 if pdq else urls)
    return {"download_images": urls, "download_images_per_s_pdq_off": round(urls / best[False], 1),
            "download_images_per_s_pdq_on": round(urls / best[True], 1),
            "download_pdq_on_over_off_seconds": round(best[True] / best[False], 2)}


def queries(codes: np.ndarray, count: int, rng) -> np.ndarray:
    """Half near copies of list codes (0..30 bits flipped), half random codes."""
    near = codes[rng.integers(0, len(codes), count // 2)].copy()
    for row in near:
        for bit in rng.choice(256, int(rng.integers(0, 31)), replace=False):
            row[bit // 8] ^= np.uint8(1 << (bit % 8))
    far = rng.integers(0, 256, (count - len(near), 32), dtype=np.uint8)
    return np.concatenate([near, far])


def matching(size: int, count: int, seed: int = 0) -> dict:
    import faiss

    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 256, (size, 32), dtype=np.uint8)
    asked = queries(codes, count, rng)
    hexes = [bytes(q).hex() for q in asked]
    start = time.perf_counter()
    index = PdqIndex(codes)
    build = time.perf_counter() - start
    start = time.perf_counter()
    ours = np.array([index.matches([h])[0] for h in hexes])
    ours_rate = count / (time.perf_counter() - start)
    start = time.perf_counter()
    batched = index.matches(hexes)
    batch_rate = count / (time.perf_counter() - start)

    few = max(10, count // max(1, size // 50_000))     # the scans take ~0.1 s an image per 1M hashes
    picked = np.concatenate([np.arange(few // 2), count // 2 + np.arange(few - few // 2)])
    start = time.perf_counter()
    scanned = brute_force_matches(codes, asked[picked], 31, queries=1)
    numpy_rate = len(picked) / (time.perf_counter() - start)
    flat = faiss.IndexBinaryFlat(256)
    flat.add(codes)
    start = time.perf_counter()
    found = []
    for q in asked[picked]:
        distances, _ = flat.search(q[None, :], 1)
        found.append(distances[0, 0] <= 31)
    faiss_rate = len(picked) / (time.perf_counter() - start)
    assert (ours == batched).all() and (ours[picked] == scanned).all() and (scanned == np.array(found)).all()
    assert ours[:count // 2].all(), "every near copy (<= 30 bits) matches"
    return {f"{size}_build_s": round(build, 1), f"{size}_ours_images_per_s": round(ours_rate),
            f"{size}_ours_batched_images_per_s": round(batch_rate),
            f"{size}_numpy_scan_images_per_s": round(numpy_rate, 1),
            f"{size}_faiss_flat_images_per_s": round(faiss_rate, 1),
            f"{size}_ours_over_numpy": round(ours_rate / numpy_rate, 1),
            f"{size}_ours_over_faiss_flat": round(ours_rate / faiss_rate, 1),
            f"{size}_false_matches_of_random": int(ours[count // 2:].sum())}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000000,10000000")
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--urls", type=int, default=600)
    args = parse_args(parser, smoke={"sizes": "20000", "queries": 40, "urls": 40})
    results = {"note": "one core (numpy single-threaded, faiss omp 1); distance 31", **hashing(),
               **download_stage(args.urls)}
    for size in (int(s) for s in args.sizes.split(",")):
        results.update(matching(size, args.queries))
    report("pdq", results)


if __name__ == "__main__":
    main()
