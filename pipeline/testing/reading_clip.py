"""A curate-tiny that reads: trained on world pairs plus text-spotting pairs, for text_mask.

curate-tiny trained on world pairs alone cannot read (a caption written over another
picture scores as that picture: median -0.10 against 0.97 for the picture it describes).
Web-scale CLIPs learned to read from pairs whose image spells out the caption; so does this
one: `spotting_pair` writes a caption's three words (colour, shape, background) in white
with a black outline over an unrelated world scene, and `text_pairs` of them join the
world pairs it trains on. After the same 120 steps such pairs score like true pairs (median
0.89 against 0.90, held-out seeds), and with the text masked they fall (median 0.20).

    ensure_reading_checkpoint(cache_dir) -> path of `epoch_latest.pt` (trained once, cached)
"""
from __future__ import annotations

import hashlib
import inspect
import io
import os
import shutil
from functools import lru_cache
from pathlib import Path
from typing import Optional

from PIL import Image, ImageDraw, ImageFont

from pipeline.core import storage
from pipeline.testing import tiny_clip
from pipeline.testing.tiny_clip import CHECKPOINT_NAME, TinyTrainConfig

TEXT_PAIRS = 1024
OTHER = 50_000          # the picture under pair i is world scene i + OTHER (of the same seed)
FONT_SIZE = 13          # px, on 64 px images: three lines
DRAWN = 64              # px: pairs are drawn at curate-tiny's input size, then scaled to the size asked


@lru_cache(maxsize=4)
def caption_font(size: int = FONT_SIZE):
    """DejaVu Sans Bold where installed, else PIL's default font (at `size` px)."""
    from pipeline.testing.rendered_text import font_files

    bold = [f for f in font_files() if os.path.basename(f) == "DejaVuSans-Bold.ttf"]
    return ImageFont.truetype(bold[0], size) if bold else ImageFont.load_default(size)


def spotting_image(words: tuple[str, ...], picture: Image.Image) -> Image.Image:
    """`words` written one per line, white outlined in black, over a copy of `picture`."""
    image = picture.copy()
    draw = ImageDraw.Draw(image)
    step = image.height // 3
    for k, word in enumerate(words):
        draw.text((3, 3 + step * k), word, font=caption_font(max(8, round(FONT_SIZE * image.height / DRAWN))),
                  fill=(255, 255, 255), stroke_width=1, stroke_fill=(0, 0, 0))
    return image


def spotting_pair(index: int, seed: int, image_size: int = 64) -> tuple[bytes, str]:
    """(JPEG, caption): world pair `index`'s caption written over world scene `index + OTHER`
    (a picture that does not show it; redrawn until its colours differ from the caption's),
    drawn at 64 px and scaled to `image_size` (text drawn at 96 px and downloaded at 64 px
    reads differently: 8% of such pairs scored above 0.8, against all of those drawn at 64)."""
    from pipeline.testing.world import caption_for, describe, encode_jpeg, render_scene

    scene = describe(index, seed)
    other, k = describe(index + OTHER, seed), 1
    while other.colour in (scene.colour, scene.background) or other.shape == scene.shape:
        other, k = describe(index + OTHER * (k + 1), seed), k + 1
    image = spotting_image((scene.colour, scene.shape, scene.background), render_scene(other, DRAWN))
    if image_size != DRAWN:   # drawn at the model's size, then scaled (the model learned these glyphs)
        image = image.resize((image_size, image_size), Image.BICUBIC)
    return encode_jpeg(image), caption_for(scene)


def train_reading_tiny(out_dir: str | Path, config: TinyTrainConfig, text_pairs: int = TEXT_PAIRS) -> Path:
    """`tiny_clip.train_tiny` with `text_pairs` spotting pairs (seed `config.seed`) added."""
    import open_clip
    import torch

    from pipeline.models import register_models

    register_models()
    previous = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        torch.manual_seed(config.seed)
        model, _, preprocess = open_clip.create_model_and_transforms(config.model)
        tokenizer = open_clip.get_tokenizer(config.model)
        size = tiny_clip._image_size(model)
        images, tokens = tiny_clip.world_tensors(config, preprocess, tokenizer, size)
        pairs = [spotting_pair(i, config.seed, size) for i in range(text_pairs)]
        images = torch.cat([images, torch.stack([preprocess(Image.open(io.BytesIO(j))) for j, _ in pairs])])
        tokens = torch.cat([tokens, tokenizer([c for _, c in pairs])])
        tiny_clip.run_training(model, images, tokens, config)
    finally:
        torch.set_num_threads(previous)
    return tiny_clip.save_checkpoint(model, out_dir, config.model, epoch=1)


def ensure_reading_checkpoint(cache_dir: str | Path, config: Optional[TinyTrainConfig] = None,
                              text_pairs: int = TEXT_PAIRS) -> Path:
    """A reading checkpoint cached under `cache_dir` (keyed like curate-tiny's, plus this file;
    default: curate-tiny's training on one thread)."""
    config = config or TinyTrainConfig(threads=1)
    digest = hashlib.sha256((tiny_clip._cache_key(config) + str(text_pairs)).encode())
    digest.update(inspect.getsource(inspect.getmodule(spotting_pair)).encode())
    folder = Path(cache_dir) / f"{config.model}-reading-{digest.hexdigest()[:16]}"
    checkpoint = folder / CHECKPOINT_NAME
    if checkpoint.is_file():
        return checkpoint
    staging = storage.tmp_name(folder)
    train_reading_tiny(staging, config, text_pairs)
    try:
        os.replace(staging, folder)   # atomic; another process may have won the race
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
    return checkpoint
