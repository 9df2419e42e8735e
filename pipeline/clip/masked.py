"""Scores of changed images against captions already embedded (text_mask's masked images).

The images go through the loaded model's own eval transform and image tower
(`ClipScorer.encode_images`), `batch_size` at a time; the captions are not encoded again:
their embeddings are clip_score's `text_embedding` column (float16, re-normalised by
`embedding_rows`), so a masked score differs from an unmasked one only by the image.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from pipeline.clip.score import ClipScorer


@torch.inference_mode()
def image_scores(scorer: ClipScorer, images: Sequence, text_embeddings: np.ndarray) -> np.ndarray:
    """Cosine similarity (float32 [n]) of each PIL image with its row of `text_embeddings`
    (float32 [n, dim], L2-normalised)."""
    scores = np.empty(len(images), np.float32)
    step = scorer.batch_size
    for start in range(0, len(images), step):
        pixels = torch.stack([scorer.clip.preprocess(image) for image in images[start:start + step]])
        features = scorer.encode_images(pixels).numpy()
        scores[start:start + len(features)] = (features * text_embeddings[start:start + len(features)]).sum(axis=1)
    return scores
