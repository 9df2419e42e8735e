"""Zero-shot top-1 of a checkpoint on an evaluation set: labelled images and, per class,
its prompts; a class scores its best-matching prompt.

The caller builds the `EvalSet`; `load_eval_folder` reads one from a folder of
`class_name/*.jpg` (underscores read as spaces), prompt "a photo of a {class name}." unless the
folder's `prompts.json` (`{"class_name": ["prompt", ...], ...}`) gives a class its own prompts.
This is what `train.eval_data` names. The result is written to `eval.json`:
`{"top1": ..., "steps": ..., "n": ..., "classes": ...}`.

    python -m pipeline.train.zero_shot CHECKPOINT MODEL EVAL_FOLDER OUT.json
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from PIL import Image

from pipeline.core import storage
from pipeline.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
FOLDER_TEMPLATE = "a photo of a {}."
PROMPTS_FILE = "prompts.json"


@dataclass
class EvalSet:
    images: list[Callable[[], Image.Image]]  # loaders, so a big folder is not held in memory
    labels: list[int]
    classnames: list[str]
    prompts: list[list[str]]  # per class
    name: str = ""            # what eval.json names as its data


def load_eval_folder(folder: str | Path) -> EvalSet:
    """The evaluation set of a folder of `class_name/*.jpg` (and an optional `prompts.json`)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"train.eval_data: {folder}: not a folder of class_name/*.jpg images")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    images, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((folder / name).iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                images.append(lambda p=path: Image.open(p))
                labels.append(label)
    if not images:
        raise UserError(f"train.eval_data: {folder}: no class_name/*.jpg images found")
    own = _read_prompts(folder / PROMPTS_FILE)
    names = [c.replace("_", " ") for c in classes]
    prompts = [list(own.get(c) or [FOLDER_TEMPLATE.format(n)]) for c, n in zip(classes, names)]
    return EvalSet(images, labels, names, prompts, str(folder))


def _read_prompts(path: Path) -> dict[str, list[str]]:
    if not path.is_file():
        return {}
    try:
        prompts = json.loads(path.read_text())
    except ValueError as error:
        raise UserError(f"train.eval_data: {path}: not valid JSON ({error})") from None
    if not isinstance(prompts, dict) or not all(
            isinstance(v, list) and all(isinstance(p, str) for p in v) for v in prompts.values()):
        raise UserError(f"train.eval_data: {path}: expected {{class_name: [prompt, ...]}}")
    return prompts


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


def evaluate_zero_shot(checkpoint: str | Path, model_name: str, eval_set: EvalSet, out_path: str | Path,
                       steps: Optional[int] = None, device: str = "auto", precision: str = "auto",
                       batch_size: int = 256) -> dict:
    """Zero-shot top-1 of `checkpoint` on `eval_set`, written to `out_path` (eval.json)."""
    from pipeline.clip.model import load_clip

    clip = load_clip(model_name, str(checkpoint), device=device, precision=precision)
    top1 = top1_accuracy(clip, eval_set, batch_size)
    result = {"top1": top1, "steps": steps, "n": len(eval_set.labels), "classes": len(eval_set.classnames),
              "chance": 1 / len(eval_set.classnames), "data": eval_set.name, "checkpoint": str(checkpoint)}
    storage.write_json(result, out_path)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("model")
    parser.add_argument("eval_folder")
    parser.add_argument("out")
    args = parser.parse_args(argv)
    eval_set = load_eval_folder(args.eval_folder)
    print(json.dumps(evaluate_zero_shot(args.checkpoint, args.model, eval_set, args.out)))


if __name__ == "__main__":
    main()
