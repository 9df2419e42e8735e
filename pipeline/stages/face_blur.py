"""face_blur: blur the faces in the kept images, as the shard step writes them into the tars.

A section without a step of its own: an image transform (`ImageTransform`) that the step
writing the images out (shard) applies. That step already reads every kept image's bytes
from where download stored them, so it passes each one through the blurrer on its way into
the tar. No copy of any image is stored, and only kept images are touched.

The detector (`detector`) is MTCNN (`pipeline.mtcnn`: the weights inside the facenet-pytorch
wheel, one torch thread, images of one size `batch_size` at a time), the default when
facenet-pytorch is installed, or OpenCV's Haar cascade (`haarcascade_frontalface_default.xml`,
shipped inside the opencv wheel), the default otherwise (said in one log line); nothing is
downloaded, and the detector is loaded once per worker process. Each detected box,
enlarged by `margin` of its side on each side and clipped to the image, gets a Gaussian blur
of sigma `blur` x the box side (computed on a downscaled copy: cheap even for large faces),
and the image is re-encoded as JPEG at `quality`. An image where no face is found keeps its
exact bytes. Each sample gets `faces`, the number of boxes blurred, in its tar JSON and in
the shard step's rows (so in `kept/`).

Everything is deterministic (boxes sorted before blurring, integer block means, OpenCV's
bit-exact 8-bit Gaussian and linear resize, libjpeg's integer DCT; MTCNN on one thread, its
boxes rounded to pixels), so tars stay byte-identical across engines and reruns (with MTCNN,
on the same kind of CPU: its float results may differ in the last bits between CPUs).
A Haar cascade finds frontal, upright, reasonably lit faces; it misses profiles, small
(< `min_size`) or occluded faces, and has false positives on textured regions. MTCNN finds
more of the faces Haar misses (recall measured in tests/unit/test_face_detectors.py, and in
docs/stages.md), and on real photos costs no more (bench/bench_detectors.py).
"""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Optional

import numpy as np
import pyarrow as pa

from pipeline.core.constraints import Above, AtLeast, Between
from pipeline.core.stage import ImageTransform, set_column
from pipeline.core.tasks import built_once
from pipeline.errors import UserError

SECTION = "face_blur"
FACES = "faces"
log = logging.getLogger(__name__)


@dataclass
class FaceBlurSettings:
    detector: Literal["auto", "mtcnn", "haar"] = "auto"   # auto: mtcnn where facenet-pytorch is installed, else haar
    min_size: Annotated[int, AtLeast(1)] = 24          # px: the smallest face side looked for (the cascade's
                                                       # window is 24)
    scale_factor: Annotated[float, Above(1)] = 1.1     # detectMultiScale: step between scales (> 1)
    min_neighbors: Annotated[int, AtLeast(0)] = 5      # detectMultiScale: overlapping hits a face needs (more:
                                                       # fewer false faces)
    margin: Annotated[float, Between(0, 1)] = 0.2      # each box grows by this fraction of its side on every side (Haar
                                                       # boxes are tight: eyebrows to mouth)
    blur: Annotated[float, Above(0)] = 0.2             # Gaussian sigma as a fraction of the (enlarged) box side
    quality: Annotated[int, Between(1, 100)] = 90      # JPEG quality of the re-encoded (blurred) images
    cascade: str = "haarcascade_frontalface_default.xml"   # a file in OpenCV's cv2.data.haarcascades, or a path
    confidence: Annotated[float, Between(0, 1)] = 0.8   # mtcnn: the face probability a box needs (O-Net's)
    batch_size: Annotated[int, AtLeast(1)] = 16        # mtcnn: images (of one size) through the networks at once
    enabled: bool = True


SETTINGS = FaceBlurSettings


class FaceBlur(ImageTransform):
    name = "face_blur"
    label = "face blur"
    outputs = ((FACES, pa.int32()),)

    def apply(self, table: pa.Table) -> pa.Table:
        return blur_table(table, self.settings)


TRANSFORM = FaceBlur


def image_transform(settings: FaceBlurSettings) -> FaceBlur:
    """The transform of this section (its settings checked here, on the driver, and `auto`
    made the detector it stands for, so every worker uses the same)."""
    settings = resolved(settings, announce=True)
    check(settings)
    return FaceBlur(settings)


def resolved(settings: FaceBlurSettings, announce: bool = False) -> FaceBlurSettings:
    """`detector: auto` as mtcnn when facenet-pytorch is installed, else haar."""
    from pipeline import mtcnn

    if settings.detector != "auto":
        return settings
    name = "mtcnn" if mtcnn.available() else "haar"
    if announce and name == "haar":
        log.info("face_blur: facenet-pytorch is not installed: detecting faces with OpenCV's Haar cascade "
                 "(frontal faces only; pip install --no-deps facenet-pytorch for MTCNN)")
    return dataclasses.replace(settings, detector=name)


def check(settings: FaceBlurSettings) -> None:
    """One clear line for a bad setting, a missing OpenCV, an unreadable cascade or a
    missing facenet-pytorch (run on the driver before any task starts)."""
    rules = [("detector", settings.detector in ("auto", "mtcnn", "haar"), "one of auto, mtcnn, haar"),
             ("confidence", 0.0 <= settings.confidence <= 1.0, "between 0 and 1"),
             ("batch_size", settings.batch_size >= 1, ">= 1"),
             ("min_size", settings.min_size >= 1, ">= 1"),
             ("scale_factor", settings.scale_factor > 1.0, "> 1"),
             ("min_neighbors", settings.min_neighbors >= 0, ">= 0"),
             ("margin", 0.0 <= settings.margin <= 1.0, "between 0 and 1"),
             ("blur", settings.blur > 0.0, "> 0"),
             ("quality", 1 <= settings.quality <= 100, "between 1 and 100")]
    for key, ok, rule in rules:
        if not ok:
            raise UserError(f"{SECTION}.{key}: must be {rule}, got {getattr(settings, key)!r}")
    import_cv2()
    if resolved(settings).detector == "haar":
        load_cascade(settings.cascade)
        return
    try:
        load_mtcnn(settings)
    except ImportError as exc:
        raise UserError(f"{SECTION}.detector: mtcnn needs facenet-pytorch (pip install --no-deps "
                        f"facenet-pytorch; or detector: haar): {exc}") from None


def cascade_path(name: str) -> str:
    cv2 = import_cv2()
    return name if os.path.sep in name or os.path.isfile(name) else os.path.join(cv2.data.haarcascades, name)


def import_cv2():
    try:
        import cv2
    except ImportError as exc:
        raise UserError(f"{SECTION}: needs OpenCV (pip install opencv-python-headless): {exc}") from None
    return cv2


def load_cascade(name: str) -> Any:
    cv2 = import_cv2()
    path = cascade_path(name)
    try:
        cascade = cv2.CascadeClassifier(path) if os.path.isfile(path) else None
    except (cv2.error, SystemError):   # a malformed file raises rather than loading empty
        cascade = None
    if cascade is None or cascade.empty():
        raise UserError(f"{SECTION}.cascade: {path}: not a readable OpenCV cascade file")
    return cascade


def load_mtcnn(settings: FaceBlurSettings) -> Any:
    from pipeline import mtcnn

    return mtcnn.MtcnnDetector(mtcnn.load(settings.min_size, settings.confidence), settings.batch_size)


@dataclass
class HaarDetector:
    cascade: Any
    settings: FaceBlurSettings

    def detect(self, images) -> list[list[tuple[int, int, int, int]]]:
        """Sorted face boxes `(x, y, w, h)` of each BGR image."""
        cv2 = import_cv2()
        s, found = self.settings, []
        for image in images:
            gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
            boxes = self.cascade.detectMultiScale(gray, scaleFactor=s.scale_factor, minNeighbors=s.min_neighbors,
                                                  minSize=(s.min_size, s.min_size))
            found.append(sorted(tuple(int(v) for v in box) for box in boxes))
        return found


def detector(settings: FaceBlurSettings) -> Any:
    """The detector of the settings (an object with `detect(images)`), loaded once per
    worker process."""
    settings = resolved(settings)
    if settings.detector == "mtcnn":
        key = (SECTION, "mtcnn", settings.min_size, settings.confidence, settings.batch_size)
        return built_once(key, lambda: load_mtcnn(settings))
    cascade = built_once((SECTION, cascade_path(settings.cascade)), lambda: load_cascade(settings.cascade))
    return HaarDetector(cascade, settings)


def detect_faces(image: np.ndarray, settings: FaceBlurSettings, found: Any = None) -> list[tuple[int, int, int, int]]:
    """Face boxes `(x, y, w, h)` of a BGR image, sorted (the same order on every run)."""
    return (found if found is not None else detector(settings)).detect([image])[0]


def blur_boxes(image: np.ndarray, boxes, settings: FaceBlurSettings) -> np.ndarray:
    """`image` (BGR, changed in place) with each box, enlarged by the margin and clipped to
    the image, Gaussian-blurred."""
    height, width = image.shape[:2]
    for x, y, w, h in boxes:
        dx, dy = int(round(w * settings.margin)), int(round(h * settings.margin))
        x0, y0 = max(0, x - dx), max(0, y - dy)
        x1, y1 = min(width, x + w + dx), min(height, y + h + dy)
        if x1 <= x0 or y1 <= y0:
            continue
        image[y0:y1, x0:x1] = gaussian(image[y0:y1, x0:x1], settings.blur * max(x1 - x0, y1 - y0))
    return image


def gaussian(region: np.ndarray, sigma: float) -> np.ndarray:
    """A Gaussian blur of `sigma` px, done at 1/k of the size (k ~ sigma / 4: exact k x k block
    means down, OpenCV's bit-exact linear up): the look of the full-size blur at ~1/k^3 of
    its cost, and the same bytes on every machine."""
    cv2 = import_cv2()
    height, width = region.shape[:2]
    k = max(1, min(int(sigma // 4), height, width))
    if k == 1:
        return cv2.GaussianBlur(region, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REPLICATE)
    tall, wide = -(-height // k) * k, -(-width // k) * k
    padded = np.pad(region, ((0, tall - height), (0, wide - width), (0, 0)), mode="edge")
    small = padded.reshape(tall // k, k, wide // k, k, -1).mean(axis=(1, 3)).round().astype(np.uint8)
    small = cv2.GaussianBlur(small, (0, 0), sigmaX=sigma / k, sigmaY=sigma / k, borderType=cv2.BORDER_REPLICATE)
    return cv2.resize(small, (wide, tall), interpolation=cv2.INTER_LINEAR_EXACT)[:height, :width]


def decode(data: Optional[bytes]) -> Optional[np.ndarray]:
    """A BGR image, or None for no bytes or bytes that are not a decodable image."""
    if not data:
        return None
    cv2 = import_cv2()
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


def blur_jpeg(data: Optional[bytes], settings: FaceBlurSettings, found: Any = None) -> tuple[Optional[bytes], int]:
    """`(bytes, faces)`: the image with its faces blurred and re-encoded as JPEG, or the very
    same bytes and 0 when no face is found (or the bytes are not a decodable image)."""
    image = decode(data)
    if image is None:
        return data, 0
    return blurred_jpeg(data, image, detect_faces(image, settings, found), settings)


def blurred_jpeg(data: bytes, image: np.ndarray, boxes, settings: FaceBlurSettings) -> tuple[bytes, int]:
    """The image (decoded from `data`) with `boxes` blurred, re-encoded; `data` itself when
    there are none."""
    cv2 = import_cv2()
    if not boxes:
        return data, 0
    blurred = blur_boxes(image, boxes, settings)
    ok, encoded = cv2.imencode(".jpg", blurred, [cv2.IMWRITE_JPEG_QUALITY, int(settings.quality)])
    if not ok:   # pragma: no cover - encoding a decoded 8-bit image does not fail
        raise RuntimeError("face_blur: JPEG encoding failed")
    return encoded.tobytes(), len(boxes)


def blur_table(table: pa.Table, settings: FaceBlurSettings, image_column: str = "jpg") -> pa.Table:
    """`table` with the faces in `image_column` blurred and an int32 `faces` column set
    (the images' faces detected batch-wise)."""
    found = detector(settings)
    column = table[image_column]
    datas = column.to_pylist()
    images = [decode(data) for data in datas]
    valid = [i for i, image in enumerate(images) if image is not None]
    boxes = dict(zip(valid, found.detect([images[i] for i in valid])))
    results = [blurred_jpeg(data, images[i], boxes[i], settings) if i in boxes else (data, 0)
               for i, data in enumerate(datas)]
    table = set_column(table, image_column, pa.array([r[0] for r in results], column.type))
    return set_column(table, FACES, pa.array([r[1] for r in results], pa.int32()))
