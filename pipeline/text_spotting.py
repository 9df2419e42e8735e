"""Text spotting for `text_mask` (T-MARS): find text boxes in images and mask them.

The detector is PP-OCRv4's text detection network as `rapidocr_onnxruntime` ships it
(`models/ch_PP-OCRv4_det_infer.onnx`, detection only: no recognition), run here through
onnxruntime on batches of images of one shape, with one intra-op thread (the same boxes on
every engine), and its own DB post-processing (`DBPostProcess`: pyclipper and shapely).
An image is scaled so that its longer side is `side` pixels (rounded to a multiple of 32,
as the network needs), channels in BGR order as PP-OCR reads them; the quadrilaterals found
become axis-aligned boxes `[x0, y0, x1, y1]` in the image's pixels (x1, y1 exclusive).
Boxes taller than `max_box_height` of the image are left out: the network also marks large
flat shapes (a plain disc or square on a plain ground: measured 0.34-0.78 of the side, and
nearly square), while lines of text measured at most 0.23 of the side (2.8x as wide as tall).

`mask_boxes` fills each box with the mean colour of the pixels on its border (a ring of
`MASK_RING` pixels just outside it, inside the image), as T-MARS does, so the picture
stays and the text goes; `text_area` is the fraction of the image the boxes cover.
"""
from __future__ import annotations

import io
import os
from typing import Optional, Sequence

import numpy as np

MODEL_FILE = "ch_PP-OCRv4_det_infer.onnx"
MASK_RING = 2          # pixels around a box whose mean colour fills it
MIN_BOX_SIDE = 4       # boxes narrower or lower than this (in the image's pixels) are dropped, as PP-OCR does
MEAN = STD = 0.5       # PP-OCR's normalisation: (x / 255 - 0.5) / 0.5


def model_path() -> str:
    """The detection model inside the installed `rapidocr_onnxruntime` package."""
    import importlib.util

    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("text_mask needs rapidocr_onnxruntime (pip install --no-deps rapidocr_onnxruntime)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "models", MODEL_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"text_mask: {path}: the text detection model is missing from rapidocr_onnxruntime")
    return path


def onnx_session(path: Optional[str] = None, threads: int = 1):
    """An onnxruntime CPU session of the detection model with `threads` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return ort.InferenceSession(path or model_path(), sess_options=options, providers=["CPUExecutionProvider"])


def network_shape(height: int, width: int, side: int) -> tuple[int, int]:
    """(height, width) the network sees: the longer side scaled to `side`, both sides
    multiples of 32 (at least 32)."""
    scale = side / max(height, width)
    return (max(32, int(round(height * scale / 32)) * 32), max(32, int(round(width * scale / 32)) * 32))


def network_input(images: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """RGB uint8 images as the network's float32 batch [n, 3, h, w] (BGR, normalised)."""
    import cv2

    batch = np.empty((len(images), 3, *shape), np.float32)
    for i, image in enumerate(images):
        resized = cv2.resize(image[:, :, ::-1], (shape[1], shape[0]))
        batch[i] = ((resized.astype(np.float32) / 255.0 - MEAN) / STD).transpose(2, 0, 1)
    return batch


class TextDetector:
    """PP-OCR's detector on batches: `detect(images)` -> one int32 array [k, 4] of boxes per image."""

    def __init__(self, side: int = 256, box_threshold: float = 0.5, max_box_height: float = 0.3,
                 pixel_threshold: float = 0.3, unclip_ratio: float = 1.6, batch_size: int = 16, threads: int = 1):
        from rapidocr_onnxruntime.ch_ppocr_det.utils import DBPostProcess

        self.side = side
        self.max_box_height = max_box_height
        self.batch_size = max(1, batch_size)
        self.session = onnx_session(threads=threads)
        self.input_name = self.session.get_inputs()[0].name
        self.post = DBPostProcess(thresh=pixel_threshold, box_thresh=box_threshold, max_candidates=1000,
                                  unclip_ratio=unclip_ratio, score_mode="fast", use_dilation=True)

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """The network's text probability maps [n, 1, h, w] of a prepared batch."""
        return self.session.run(None, {self.input_name: batch})[0]

    def detect(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Boxes `[x0, y0, x1, y1]` (int32, x1/y1 exclusive) found in each RGB uint8 image;
        images of one network shape go through the network together, `batch_size` at a time."""
        found: list[np.ndarray] = [np.zeros((0, 4), np.int32)] * len(images)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            groups.setdefault(network_shape(*image.shape[:2], self.side), []).append(i)
        for shape, rows in groups.items():
            for start in range(0, len(rows), self.batch_size):
                chunk = rows[start:start + self.batch_size]
                maps = self.probabilities(network_input([images[i] for i in chunk], shape))
                for i, pred in zip(chunk, maps):
                    found[i] = self.boxes(pred[None], images[i].shape[:2])
        return found

    def boxes(self, pred: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """Axis-aligned boxes of one probability map [1, 1, h, w] in an image of `size` (h, w)."""
        height, width = size
        quads, _ = self.post(pred, (height, width))
        out = []
        for quad in quads:
            x0, y0 = np.clip(quad.min(axis=0), 0, (width, height))
            x1, y1 = np.clip(quad.max(axis=0) + 1, 0, (width, height))
            if x1 - x0 >= MIN_BOX_SIDE and MIN_BOX_SIDE <= y1 - y0 <= self.max_box_height * height:
                out.append((x0, y0, x1, y1))
        out.sort()
        return np.array(out, np.int32).reshape(-1, 4)


def decode_rgb(data: Optional[bytes]) -> Optional[np.ndarray]:
    """An image's RGB uint8 pixels [h, w, 3]; None when the bytes are missing or not an image."""
    from PIL import Image

    if not data:
        return None
    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"))
    except Exception:  # noqa: BLE001 - an undecodable image is a row without boxes, never a crash
        return None


def text_area(boxes: np.ndarray, size: tuple[int, int]) -> float:
    """The fraction of an image of `size` (h, w) that the boxes cover (overlaps counted once)."""
    height, width = size
    if not len(boxes) or not height or not width:
        return 0.0
    covered = np.zeros((height, width), bool)
    for x0, y0, x1, y1 in boxes:
        covered[y0:y1, x0:x1] = True
    return float(covered.mean())


def mask_boxes(image: np.ndarray, boxes: np.ndarray, ring: int = MASK_RING) -> np.ndarray:
    """A copy of `image` (RGB uint8) with each box filled with the mean colour of the pixels on
    its border (`ring` pixels just outside it, inside the image; the box's own edge where it
    fills the image), every mean taken on the unmasked image."""
    out = image.copy()
    height, width = image.shape[:2]
    for x0, y0, x1, y1 in boxes:
        outer = image[max(0, y0 - ring):min(height, y1 + ring), max(0, x0 - ring):min(width, x1 + ring)]
        inner = (outer.shape[0] * outer.shape[1]) - (y1 - y0) * (x1 - x0)
        if inner > 0:
            total = outer.reshape(-1, 3).sum(axis=0, dtype=np.int64) - \
                image[y0:y1, x0:x1].reshape(-1, 3).sum(axis=0, dtype=np.int64)
            colour = total / inner
        else:
            edge = np.concatenate([image[y0, x0:x1], image[y1 - 1, x0:x1], image[y0:y1, x0], image[y0:y1, x1 - 1]])
            colour = edge.mean(axis=0)
        out[y0:y1, x0:x1] = np.round(colour).astype(np.uint8)
    return out
