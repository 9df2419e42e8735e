"""Batched CLIP scoring: cosine similarity of normalised image and text embeddings.

Images arrive as encoded bytes (JPEG, PNG, ...), are decoded with Pillow and preprocessed with
the model's own eval transform. Captions are tokenized with the model's tokenizer and, for
open_clip text towers with a causal mask and EOT/first-token pooling, trimmed to the longest
caption of the batch: with a causal mask no token before the EOT attends to the padding
after it, so the embeddings equal those of full-length padding while the text tower does
only a fraction of the work. Rows whose image cannot be decoded get a NaN score.
"""
from __future__ import annotations

import io
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pipeline.clip.model import LoadedClip

TRIMMABLE_POOLING = ("argmax", "eos", "first")


@dataclass
class ScoreResult:
    scores: np.ndarray  # float32 [n], NaN where the image could not be decoded
    image_embeddings: np.ndarray | None = None  # float16 [n, dim] (zeros where undecodable)
    text_embeddings: np.ndarray | None = None  # float16 [n, dim]

    @property
    def decoded(self) -> np.ndarray:
        return ~np.isnan(self.scores)


def decode_image(data: bytes | None, preprocess) -> torch.Tensor | None:
    """Decode and preprocess one image; None when the bytes are missing or not an image."""
    if not data:
        return None
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return preprocess(image)
    except Exception:  # any undecodable input is a bad row, never a crash
        return None


def can_trim_text(model: torch.nn.Module, tokenizer) -> bool:
    """True where right padding cannot change the text embedding: open_clip's `CLIP` text
    tower with a causal mask, EOT (argmax/eos) or first-token pooling, and its BPE tokenizer
    (pad id 0, EOT the largest id)."""
    import open_clip
    from open_clip.tokenizer import SimpleTokenizer

    return (isinstance(model, open_clip.CLIP) and isinstance(tokenizer, SimpleTokenizer)
            and getattr(model, "attn_mask", None) is not None
            and model.text_pool_type in TRIMMABLE_POOLING)


def trim_tokens(tokens: torch.Tensor, pad_id: int = 0) -> torch.Tensor:
    """Drop the padding columns after the longest sequence of the batch."""
    used = (tokens != pad_id).any(dim=0).nonzero()
    length = int(used.max()) + 1 if len(used) else 1
    return tokens[:, :length]


def encode_text_trimmed(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip `CLIP.encode_text` for tokens shorter than the context (see `can_trim_text`)."""
    from open_clip.transformer import text_global_pool

    length = tokens.shape[1]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype)
    x = x + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    if model.text_projection is not None:
        if isinstance(model.text_projection, torch.nn.Linear):
            x = model.text_projection(x)
        else:
            x = x @ model.text_projection
    return x


def default_decode_workers(device: torch.device) -> int:
    """On CUDA, decode in threads (Pillow releases the GIL) to keep the GPU fed; on CPU the
    model already uses the cores."""
    return min(8, os.cpu_count() or 1) if device.type == "cuda" else 1


class ClipScorer:
    """Scores (image bytes, caption) pairs with one loaded model, `batch_size` pairs at a time."""

    def __init__(self, clip: LoadedClip, batch_size: int = 256, trim_text: bool = True,
                 decode_workers: int | None = None):
        self.clip = clip
        self.batch_size = max(1, int(batch_size))
        self.trim_text = trim_text and can_trim_text(clip.model, clip.tokenizer)
        self.decode_workers = decode_workers or default_decode_workers(clip.device)
        self._dim: int | None = None

    def score(self, images: Sequence[bytes | None], texts: Sequence[str | None],
              with_embeddings: bool = False) -> ScoreResult:
        n = len(images)
        scores = np.full(n, np.nan, dtype=np.float32)
        dim = self.embed_dim() if with_embeddings else 0
        image_emb = np.zeros((n, dim), np.float16) if with_embeddings else None
        text_emb = np.zeros((n, dim), np.float16) if with_embeddings else None
        for start, pixels in self._decoded_batches(images):
            rows, image_part, text_part = self._score_batch(pixels, texts[start:start + len(pixels)])
            if not len(rows):
                continue
            rows = rows + start
            scores[rows] = (image_part * text_part).sum(dim=-1).numpy()
            if with_embeddings:
                image_emb[rows] = image_part.numpy().astype(np.float16)
                text_emb[rows] = text_part.numpy().astype(np.float16)
        return ScoreResult(scores, image_emb, text_emb)

    def _decoded_batches(self, images: Sequence[bytes | None]) -> Iterator[tuple[int, list]]:
        """(start, preprocessed tensors or None) per batch; with several decode workers the
        next batch is decoded while the model encodes the current one."""
        decode = partial(decode_image, preprocess=self.clip.preprocess)
        starts = range(0, len(images), self.batch_size)
        if self.decode_workers <= 1:
            for start in starts:
                yield start, [decode(data) for data in images[start:start + self.batch_size]]
            return
        with ThreadPoolExecutor(self.decode_workers) as pool:
            pending: deque = deque()
            for start in starts:
                pending.append((start, pool.map(decode, images[start:start + self.batch_size])))
                if len(pending) > 1:
                    first, decoded = pending.popleft()
                    yield first, list(decoded)
            while pending:
                first, decoded = pending.popleft()
                yield first, list(decoded)

    @torch.inference_mode()
    def _score_batch(self, pixels: list, texts) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        """Normalised float32 embeddings (on CPU) of the decodable rows, and those rows."""
        rows = np.array([i for i, p in enumerate(pixels) if p is not None], dtype=np.int64)
        if not len(rows):
            return rows, torch.empty(0), torch.empty(0)
        batch = torch.stack([pixels[i] for i in rows])
        captions = [texts[i] or "" for i in rows]
        return rows, self.encode_images(batch), self.encode_texts(captions)

    def embed_dim(self) -> int:
        """The embedding size (measured once on an empty caption)."""
        if self._dim is None:
            with torch.inference_mode():
                self._dim = int(self.encode_texts([""]).shape[-1])
        return self._dim

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        clip = self.clip
        if clip.device.type == "cuda":
            pixels = pixels.pin_memory().to(clip.device, non_blocking=True)
        pixels = pixels.to(dtype=clip.input_dtype)
        features = clip.model.encode_image(pixels)
        return F.normalize(features.float(), dim=-1).cpu()

    def encode_texts(self, captions: list[str]) -> torch.Tensor:
        clip = self.clip
        tokens = clip.tokenizer(captions)
        if self.trim_text:
            tokens = trim_tokens(tokens).to(clip.device, non_blocking=True)
            features = encode_text_trimmed(clip.model, tokens)
        else:
            features = clip.model.encode_text(tokens.to(clip.device, non_blocking=True))
        return F.normalize(features.float(), dim=-1).cpu()
