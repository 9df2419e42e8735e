"""MTCNN (Zhang et al., 2016) face detection with the weights inside the `facenet-pytorch`
wheel (`facenet_pytorch/data/{pnet,rnet,onet}.pt`), for face_blur's `detector: mtcnn`.

facenet-pytorch's own `MTCNN` module runs the three networks (installed with `pip install
--no-deps facenet-pytorch`: its pins on torch and numpy are older than ours, and it needs
nothing else). Images go through on CPU with one torch thread (set for the call, then put
back), images of one shape `batch_size` at a time. A batch's float results may differ from
one image's alone in the last bits, so a box's pixels depend only on the images that share
its batch: the same rows give the same boxes on every engine and rerun.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

STAGE_THRESHOLDS = (0.6, 0.7)   # P-Net and R-Net's (facenet-pytorch's defaults); O-Net's is `confidence`


def available() -> bool:
    """Whether facenet-pytorch is installed (without importing torch)."""
    return importlib.util.find_spec("facenet_pytorch") is not None


def load(min_size: int, confidence: float) -> Any:
    """facenet-pytorch's MTCNN on CPU, every face kept, boxes only."""
    from facenet_pytorch import MTCNN

    return MTCNN(keep_all=True, device="cpu", min_face_size=int(min_size),
                 thresholds=[*STAGE_THRESHOLDS, float(confidence)], post_process=False)


@dataclass
class MtcnnDetector:
    model: Any
    batch_size: int = 16

    def detect(self, images: Sequence[np.ndarray]) -> list[list[tuple[int, int, int, int]]]:
        """Sorted face boxes `(x, y, w, h)` (integers, inside the image) of each BGR image."""
        import torch

        found: list = [[] for _ in images]
        groups: dict = {}
        for i, image in enumerate(images):
            groups.setdefault(image.shape, []).append(i)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for members in groups.values():
                for start in range(0, len(members), self.batch_size):
                    chunk = members[start:start + self.batch_size]
                    rgb = np.stack([images[i][:, :, ::-1] for i in chunk])
                    boxes, _ = self.model.detect(rgb)
                    for i, image_boxes in zip(chunk, boxes):
                        found[i] = pixel_boxes(image_boxes, images[i].shape)
        finally:
            torch.set_num_threads(threads)
        return found


def pixel_boxes(boxes, shape) -> list[tuple[int, int, int, int]]:
    """MTCNN's float corners `[x0, y0, x1, y1]` as sorted integer `(x, y, w, h)` clipped to
    the image (empty ones left out)."""
    if boxes is None:
        return []
    corners = np.floor(np.asarray(boxes, dtype=np.float64).reshape(-1, 4) + 0.5).astype(np.int64)
    height, width = shape[:2]
    corners[:, [0, 2]] = corners[:, [0, 2]].clip(0, width)
    corners[:, [1, 3]] = corners[:, [1, 3]].clip(0, height)
    out = [(int(x0), int(y0), int(x1 - x0), int(y1 - y0)) for x0, y0, x1, y1 in corners if x1 > x0 and y1 > y0]
    return sorted(out)
