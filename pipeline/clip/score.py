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
from dataclasses import dataclass
from typing import Sequence

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


class ClipScorer:
    """Scores (image bytes, caption) pairs with one loaded model, `batch_size` pairs at a time."""

    def __init__(self, clip: LoadedClip, batch_size: int = 256, trim_text: bool = True):
        self.clip = clip
        self.batch_size = max(1, int(batch_size))
        self.trim_text = trim_text and can_trim_text(clip.model, clip.tokenizer)
        self._dim: int | None = None

    def score(self, images: Sequence[bytes | None], texts: Sequence[str | None],
              with_embeddings: bool = False) -> ScoreResult:
        n = len(images)
        scores = np.full(n, np.nan, dtype=np.float32)
        dim = self.embed_dim() if with_embeddings else 0
        image_emb = np.zeros((n, dim), np.float16) if with_embeddings else None
        text_emb = np.zeros((n, dim), np.float16) if with_embeddings else None
        for start in range(0, n, self.batch_size):
            stop = min(n, start + self.batch_size)
            rows, image_part, text_part = self._score_batch(images[start:stop], texts[start:stop])
            if not len(rows):
                continue
            rows = rows + start
            scores[rows] = (image_part * text_part).sum(dim=-1).numpy()
            if with_embeddings:
                image_emb[rows] = image_part.numpy().astype(np.float16)
                text_emb[rows] = text_part.numpy().astype(np.float16)
        return ScoreResult(scores, image_emb, text_emb)

    @torch.inference_mode()
    def _score_batch(self, images, texts) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        """Normalised float32 embeddings (on CPU) of the decodable rows, and those rows."""
        pixels = [decode_image(data, self.clip.preprocess) for data in images]
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
        pixels = pixels.to(clip.device, dtype=clip.input_dtype, non_blocking=True)
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
