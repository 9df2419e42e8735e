"""A tiny, randomly initialised image-to-text model (BLIP's architecture) built from its config
and saved with its processor as `save_pretrained` writes them: what the `transformers`
captioner loads in tests, with no weights from a hub. Its captions are nonsense words from a
small vocabulary, the same for the same image (the weights come from a fixed seed)."""
from __future__ import annotations

from pathlib import Path

WORDS = ("a", "the", "red", "green", "blue", "yellow", "circle", "square", "triangle", "cross", "on", "of",
         "photo", "picture", "small", "large", "background", "with", "and", "shape")
SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]")


def save_tiny_blip(folder: str | Path, seed: int = 0, image_size: int = 32) -> Path:
    """Write a tiny BlipForConditionalGeneration and its BlipProcessor to `folder`."""
    import torch
    from transformers import (
        BertTokenizerFast,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(SPECIAL + WORDS) + "\n")
    tokenizer = BertTokenizerFast(str(vocab), bos_token="[DEC]", do_lower_case=True)
    ids = {token: i for i, token in enumerate(SPECIAL + WORDS)}
    text = {"vocab_size": len(SPECIAL) + len(WORDS), "hidden_size": 32, "intermediate_size": 37,
            "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 64,
            "bos_token_id": ids["[DEC]"], "pad_token_id": ids["[PAD]"], "sep_token_id": ids["[SEP]"],
            "eos_token_id": ids["[SEP]"]}
    vision = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 2,
              "image_size": image_size, "patch_size": 8}
    text["initializer_range"] = vision["initializer_range"] = 0.5   # large weights: the image shows in the words
    config = BlipConfig(text_config=text, vision_config=vision, projection_dim=32, initializer_range=0.5)
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(config).eval()
    image_processor = BlipImageProcessor(size={"height": image_size, "width": image_size})
    BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    model.save_pretrained(folder)
    return folder
