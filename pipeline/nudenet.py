"""NudeNet's detector (the ONNX model inside the `nudenet` wheel, `320n.onnx`), run batch-wise
with onnxruntime on one intra-op thread, for the heads stage's `model: nudenet`.

Each image goes in as `NudeDetector.detect` gives it to the network (decoded, padded at the
bottom and right to a square, resized to 320 x 320 by `cv2.dnn.blobFromImage`, scaled to
0..1, in the channel order NudeDetector ends up with for JPEGs: BGR), so the detections are
NudeDetector's: its box arithmetic, OpenCV's class-agnostic NMS at IoU 0.45. Per image:

- `score`: the highest confidence of any box for one of `score_classes` (by default the
  exposed-nudity classes, `EXPOSED`), 0..1, before any threshold;
- `classes`: the classes of the boxes NudeDetector reports at confidence >= `min_confidence`
  (sorted, each once; 0.25 is NudeDetector's own cut), e.g. `FACE_FEMALE`, `FEET_EXPOSED`.

An image that does not decode gets a NaN score and no classes (None). The network's output
for an image does not depend on the other images of its batch (checked in the tests).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

SIDE = 320
LABELS = (
    "FEMALE_GENITALIA_COVERED", "FACE_FEMALE", "BUTTOCKS_EXPOSED", "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED", "MALE_BREAST_EXPOSED", "ANUS_EXPOSED", "FEET_EXPOSED", "BELLY_COVERED",
    "FEET_COVERED", "ARMPITS_COVERED", "ARMPITS_EXPOSED", "FACE_MALE", "BELLY_EXPOSED",
    "MALE_GENITALIA_EXPOSED", "ANUS_COVERED", "FEMALE_BREAST_COVERED", "BUTTOCKS_COVERED",
)
EXPOSED = ("FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED", "FEMALE_BREAST_EXPOSED",
           "BUTTOCKS_EXPOSED", "ANUS_EXPOSED")
CANDIDATE = 0.2   # NudeDetector keeps boxes from this confidence into NMS
NMS_IOU = 0.45


def model_path() -> str:
    """`320n.onnx` inside the installed nudenet package (ImportError when not installed)."""
    import importlib.util

    spec = importlib.util.find_spec("nudenet")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the nudenet head needs the nudenet package (pip install nudenet)")
    return os.path.join(list(spec.submodule_search_locations)[0], "320n.onnx")


def session(model, threads: int = 1):
    """An onnxruntime CPU session of `model` (a path, or the file's bytes) with `threads`
    intra-op threads, run sequentially."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


def check_session(sess) -> None:
    """ValueError unless it takes [batch, 3, h, w] and gives [batch, 4 + len(LABELS), boxes]."""
    inputs, outputs = sess.get_inputs(), sess.get_outputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 4 or inputs[0].shape[1] != 3:
        raise ValueError(f"expected one input [batch, 3, height, width], got {[i.shape for i in inputs]}")
    if not outputs or len(outputs[0].shape) != 3 or outputs[0].shape[1] != 4 + len(LABELS):
        raise ValueError(f"expected an output [batch, {4 + len(LABELS)}, boxes] (NudeNet's 18 classes), "
                         f"got {[o.shape for o in outputs]}")


def decode(data: Optional[bytes]) -> Optional[np.ndarray]:
    """A BGR uint8 image, or None when the bytes are not a decodable image."""
    import cv2

    if not data:
        return None
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return image if image is not None and image.size else None


def network_input(image: np.ndarray) -> np.ndarray:
    """[3, SIDE, SIDE] float32: padded to a square at the bottom and right, resized, 0..1."""
    import cv2

    height, width = image.shape[:2]
    side = max(height, width)
    square = cv2.copyMakeBorder(image, 0, side - height, 0, side - width, cv2.BORDER_CONSTANT)
    return cv2.dnn.blobFromImage(square, 1 / 255.0, (SIDE, SIDE), (0, 0, 0), swapRB=False, crop=False)[0]


def detections(output: np.ndarray, height: int, width: int, min_confidence: float) -> list[tuple[str, float]]:
    """(class, confidence) of the boxes NudeDetector reports for one image's output
    [4 + classes, boxes] at `min_confidence` (NMS as NudeDetector: boxes scaled back to
    the image and clipped, class-agnostic)."""
    import cv2

    rows = output.T
    scores = rows[:, 4:]
    best = scores.max(axis=1)
    picked = np.flatnonzero(best >= max(CANDIDATE, min_confidence))
    if not len(picked):
        return []
    side = max(height, width)
    x, y, w, h = (rows[picked, k].astype(np.float64) * side / SIDE for k in range(4))
    x, y = x - w / 2, y - h / 2
    x, y = np.clip(x, 0, width), np.clip(y, 0, height)
    w, h = np.minimum(w, width - x), np.minimum(h, height - y)
    boxes = np.stack([x, y, w, h], axis=1).tolist()
    confidences = best[picked].astype(np.float64).tolist()
    kept = cv2.dnn.NMSBoxes(boxes, confidences, max(0.25, min_confidence), NMS_IOU)
    labels = scores[picked].argmax(axis=1)
    return [(LABELS[labels[i]], confidences[i]) for i in np.asarray(kept).reshape(-1)]


@dataclass
class NudeNet:
    """A loaded model (one per worker process) and how to read its output."""
    sess: object
    score_classes: tuple = EXPOSED
    min_confidence: float = 0.25
    batch_size: int = 16

    def outputs(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """The network's raw output [n, 4 + classes, boxes] for BGR images, batch by batch."""
        name = self.sess.get_inputs()[0].name
        parts = []
        for start in range(0, len(images), self.batch_size):
            batch = np.stack([network_input(image) for image in images[start:start + self.batch_size]])
            parts.append(self.sess.run(None, {name: batch})[0])
        return np.concatenate(parts) if parts else np.zeros((0, 4 + len(LABELS), 0), np.float32)

    def run(self, jpgs: Sequence[Optional[bytes]]) -> tuple[np.ndarray, list]:
        """(float32 score per image, NaN where undecodable; sorted detected classes per image,
        None where undecodable)."""
        decoded = [decode(data) for data in jpgs]
        valid = [i for i, image in enumerate(decoded) if image is not None]
        out = self.outputs([decoded[i] for i in valid])
        columns = [4 + LABELS.index(name) for name in self.score_classes]
        scores = np.full(len(jpgs), np.nan, dtype=np.float32)
        classes: list = [None] * len(jpgs)
        if valid:
            scores[valid] = out[:, columns, :].max(axis=(1, 2))
        for row, i in enumerate(valid):
            height, width = decoded[i].shape[:2]
            classes[i] = sorted({name for name, _ in detections(out[row], height, width, self.min_confidence)})
        return scores, classes
