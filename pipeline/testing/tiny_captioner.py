"""Tiny image-to-text models (BLIP's architecture) built from a config and saved with their
processor as `save_pretrained` writes them, with no weights from a hub:

- `save_tiny_blip`: randomly initialised (large weights, so the image shows in its nonsense
  words), what the `transformers` captioner's tests load;
- `ensure_world_captioner`: trained briefly on the trusted world samples (seed 0, as the demo's
  reference CLIP is bootstrapped), so it writes the world's clean captions ("a red circle on a
  blue background") for the demo's recaption step; cached by its settings and these sources.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

WORDS = ("a", "the", "red", "green", "blue", "yellow", "circle", "square", "triangle", "cross", "on", "of",
         "photo", "picture", "small", "large", "background", "with", "and", "shape")
SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]")


def build_tiny_blip(folder: Path, words: tuple, seed: int = 0, image_size: int = 32, width: int = 32,
                    initializer_range: float = 0.02, intermediate: int = 0):
    """(model, processor) of a tiny BlipForConditionalGeneration over `words` (vocab in `folder`)."""
    import torch
    from transformers import (
        BertTokenizerFast,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(SPECIAL + tuple(words)) + "\n")
    tokenizer = BertTokenizerFast(str(vocab), bos_token="[DEC]", do_lower_case=True)
    ids = {token: i for i, token in enumerate(SPECIAL + tuple(words))}
    intermediate = intermediate or 2 * width
    text = {"vocab_size": len(ids), "hidden_size": width, "intermediate_size": intermediate,
            "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 64,
            "bos_token_id": ids["[DEC]"], "pad_token_id": ids["[PAD]"], "sep_token_id": ids["[SEP]"],
            "eos_token_id": ids["[SEP]"], "initializer_range": initializer_range}
    vision = {"hidden_size": width, "intermediate_size": intermediate, "num_hidden_layers": 2,
              "num_attention_heads": 2, "image_size": image_size, "patch_size": 8,
              "initializer_range": initializer_range}
    config = BlipConfig(text_config=text, vision_config=vision, projection_dim=width,
                        initializer_range=initializer_range)
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(config)
    image_processor = BlipImageProcessor(size={"height": image_size, "width": image_size})
    return model, BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)


def save_tiny_blip(folder: str | Path, seed: int = 0, image_size: int = 32) -> Path:
    """Write a tiny random BlipForConditionalGeneration and its BlipProcessor to `folder`."""
    folder = Path(folder)
    # large weights: the image shows in the (random) words
    model, processor = build_tiny_blip(folder, WORDS, seed, image_size, initializer_range=0.5, intermediate=37)
    processor.save_pretrained(folder)
    model.eval().save_pretrained(folder)
    return folder


def train_world_captioner(folder: Path, samples: int = 2048, steps: int = 300, batch_size: int = 64,
                          image_size: int = 64, seed: int = 0, threads: int = 1) -> Path:
    """A tiny BLIP trained on `samples` trusted world samples (world seed 0) to write their
    captions; saved with its processor in `folder`."""
    import io

    import torch
    from PIL import Image

    from pipeline.testing.world import make_world

    world = make_world(samples, seed=0, image_size=image_size)
    words = tuple(sorted({w for s in world for w in s.caption.split()} | set(WORDS)))
    model, processor = build_tiny_blip(folder, words, seed, image_size, width=64)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        pictures = [Image.open(io.BytesIO(s.jpg)).convert("RGB") for s in world]
        encoded = processor(images=pictures, text=[s.caption for s in world], return_tensors="pt", padding=True)
        optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
        generator = torch.Generator().manual_seed(seed)
        model.train()
        for _ in range(steps):
            rows = torch.randint(0, samples, (batch_size,), generator=generator)
            ids = encoded["input_ids"][rows]
            labels = ids.masked_fill(encoded["attention_mask"][rows] == 0, -100)
            loss = model(pixel_values=encoded["pixel_values"][rows], input_ids=ids,
                         attention_mask=encoded["attention_mask"][rows], labels=labels).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(previous)
    processor.save_pretrained(folder)
    model.eval().save_pretrained(folder)
    return folder


def ensure_world_captioner(cache_dir: str | Path, **options) -> Path:
    """`train_world_captioner(**options)`'s model folder, cached under `cache_dir` by the
    options, the library versions and the sources (trained only when missing)."""
    import torch
    import transformers

    from pipeline.testing import world

    digest = hashlib.sha256(repr((sorted(options.items()), torch.__version__, transformers.__version__)).encode())
    for source in (Path(__file__), Path(world.__file__)):
        digest.update(source.read_bytes())
    folder = Path(cache_dir) / f"captioner-{digest.hexdigest()[:12]}"
    if (folder / "config.json").is_file():
        return folder
    staging = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    train_world_captioner(staging, **options)
    try:
        os.replace(staging, folder)
    except OSError:   # another process won the race
        shutil.rmtree(staging, ignore_errors=True)
    return folder
