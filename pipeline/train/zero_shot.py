"""Zero-shot top-1 of a checkpoint: on a labelled image folder or on the generated world.

`eval_data` is either a folder of `class_name/*.jpg` (prompt "a photo of a {class name}.",
underscores read as spaces) or `world` / `world:N` (N generated `pipeline.world` samples of a
held-out seed, labels the world's (colour, shape) classes, one prompt per possible background:
"a red circle on a blue background", ...). A class scores its best-matching prompt: the
average of a world class's prompts blurs shape and background colour (an image of a red shape
on blue then matches "blue ... on a red background" about as well), the best one does not.
The result is written to `eval.json`: `{"top1": ..., "steps": ..., "n": ..., "classes": ...}`.

    python -m pipeline.train.zero_shot CHECKPOINT MODEL EVAL_DATA OUT.json
"""
from __future__ import annotations

import argparse
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from PIL import Image

from pipeline.core import storage
from pipeline.errors import UserError

WORLD_EVAL_SEED = 7_777_777  # not a seed the tests or the demo train on
WORLD_EVAL_SIZE = 480
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
FOLDER_TEMPLATE = "a photo of a {}."


@dataclass
class EvalSet:
    images: list[Callable[[], Image.Image]]  # loaders, so a big folder is not held in memory
    labels: list[int]
    classnames: list[str]
    prompts: list[list[str]]  # per class


def world_eval_set(n: int, image_size: int) -> EvalSet:
    from pipeline import world

    samples = world.make_world(n, seed=WORLD_EVAL_SEED, image_size=image_size)
    images = [lambda jpg=s.jpg: Image.open(io.BytesIO(jpg)) for s in samples]
    prompts = [[world.CAPTION_TEMPLATE.format(colour=colour, shape=shape, background=background)
                for background in world.COLOURS if background != colour]
               for colour in world.COLOURS for shape in world.SHAPES]  # in label order
    return EvalSet(images, [s.label for s in samples], world.class_names(), prompts)


def folder_eval_set(folder: Path) -> EvalSet:
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    images, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((folder / name).iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                images.append(lambda p=path: Image.open(p))
                labels.append(label)
    if not images:
        raise UserError(f"train.eval_data: {folder}: no class_name/*.jpg images found")
    names = [c.replace("_", " ") for c in classes]
    return EvalSet(images, labels, names, [[FOLDER_TEMPLATE.format(n)] for n in names])


def load_eval_set(eval_data: str, image_size: int) -> EvalSet:
    """`world`, `world:N` or a labelled folder."""
    if eval_data == "world" or eval_data.startswith("world:"):
        n = int(eval_data.split(":", 1)[1]) if ":" in eval_data else WORLD_EVAL_SIZE
        return world_eval_set(n, image_size)
    folder = Path(eval_data)
    if not folder.is_dir():
        raise UserError(f"train.eval_data: {eval_data}: not a folder (nor 'world' / 'world:N')")
    return folder_eval_set(folder)


@torch.no_grad()
def prompt_features(clip, prompts: list[list[str]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised text features of all prompts `[P, D]` and the class of each `[P]`."""
    flat = [p for class_prompts in prompts for p in class_prompts]
    owner = torch.tensor([c for c, class_prompts in enumerate(prompts) for _ in class_prompts])
    features = [clip.model.encode_text(clip.tokenizer(flat[i:i + 256]).to(clip.device), normalize=True)
                for i in range(0, len(flat), 256)]
    return torch.cat(features), owner


@torch.no_grad()
def top1_accuracy(clip, eval_set: EvalSet, batch_size: int = 256) -> float:
    """Share of images whose best-matching class (its best prompt) is their label."""
    text, owner = prompt_features(clip, eval_set.prompts)
    owner = owner.to(clip.device)
    correct = 0
    for start in range(0, len(eval_set.images), batch_size):
        loaders = eval_set.images[start:start + batch_size]
        batch = torch.stack([clip.preprocess(load().convert("RGB")) for load in loaders])
        image = clip.model.encode_image(batch.to(clip.device, clip.input_dtype), normalize=True)
        similarity = image @ text.T  # [B, P]
        scores = torch.full((len(batch), len(eval_set.prompts)), -torch.inf, device=clip.device,
                            dtype=similarity.dtype)
        scores = scores.scatter_reduce(1, owner.expand_as(similarity), similarity, reduce="amax")
        predicted = scores.argmax(dim=-1).cpu()
        correct += int((predicted == torch.tensor(eval_set.labels[start:start + batch_size])).sum())
    return correct / len(eval_set.images)


def evaluate_zero_shot(checkpoint: str | Path, model_name: str, eval_data: str, out_path: str | Path,
                       steps: Optional[int] = None, device: str = "auto", precision: str = "auto",
                       batch_size: int = 256) -> dict:
    """Zero-shot top-1 of `checkpoint` on `eval_data`, written to `out_path` (eval.json)."""
    from pipeline.clip.model import load_clip

    clip = load_clip(model_name, str(checkpoint), device=device, precision=precision)
    size = clip.model.visual.image_size
    eval_set = load_eval_set(eval_data, int(size[0] if isinstance(size, (tuple, list)) else size))
    top1 = top1_accuracy(clip, eval_set, batch_size)
    result = {"top1": top1, "steps": steps, "n": len(eval_set.labels), "classes": len(eval_set.classnames),
              "chance": 1 / len(eval_set.classnames), "data": eval_data, "checkpoint": str(checkpoint)}
    storage.write_json(result, out_path)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("model")
    parser.add_argument("eval_data")
    parser.add_argument("out")
    args = parser.parse_args(argv)
    print(json.dumps(evaluate_zero_shot(args.checkpoint, args.model, args.eval_data, args.out)))


if __name__ == "__main__":
    main()
