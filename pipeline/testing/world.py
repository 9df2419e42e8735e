"""A generated "world" of image-text pairs: coloured shapes on coloured backgrounds.

Every sample is a pure function of `(seed, index)`: a JPEG of one shape (`circle`, `square`,
`triangle`, `cross`) in one colour on a plain background of another colour, with the caption
that describes it, e.g. "a red circle on a blue background", and a class label for the
(colour, shape) pair. Tests, the demo and the tiny trainer use it instead of real photos;
`shuffled_captions` and `altered_captions` make mismatched captions for negatives;
`write_eval_folder` writes a held-out zero-shot evaluation set for `train.eval_data`.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
from PIL import Image, ImageDraw

from pipeline.core.hashing import uid_of

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (240, 220, 50),
    "purple": (140, 60, 180),
    "white": (245, 245, 245),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
CAPTION_TEMPLATE = "a {colour} {shape} on a {background} background"
JPEG_QUALITY = 90
EVAL_SEED = 7_777_777  # held out: not a seed the tests or the demo train on
EVAL_SIZE = 480


class WorldSample(NamedTuple):
    jpg: bytes
    caption: str
    label: int


@dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    background: str
    centre: tuple[float, float]  # fractions of the image side
    radius: float  # fraction of the image side
    jitter: tuple[int, int, int]  # per-channel colour noise of the shape


def class_names() -> list[str]:
    """Names of the (colour, shape) classes, indexed by label: "red circle", ..."""
    return [f"{colour} {shape}" for colour in COLOURS for shape in SHAPES]


def class_prompts() -> list[str]:
    """One zero-shot prompt per class label: "a red circle", ..."""
    return [f"a {name}" for name in class_names()]


def label_of(colour: str, shape: str) -> int:
    return list(COLOURS).index(colour) * len(SHAPES) + SHAPES.index(shape)


def describe(index: int, seed: int) -> Scene:
    """The scene of sample `index` of world `seed` (deterministic)."""
    rng = np.random.default_rng([seed, index, 0x5EED])
    names = list(COLOURS)
    colour = names[rng.integers(len(names))]
    background = [n for n in names if n != colour][rng.integers(len(names) - 1)]
    shape = SHAPES[rng.integers(len(SHAPES))]
    radius = float(rng.uniform(0.22, 0.34))
    centre = (float(rng.uniform(radius, 1 - radius)), float(rng.uniform(radius, 1 - radius)))
    jitter = tuple(int(v) for v in rng.integers(-20, 21, size=3))
    return Scene(colour, shape, background, centre, radius, jitter)


def caption_for(scene: Scene) -> str:
    return CAPTION_TEMPLATE.format(colour=scene.colour, shape=scene.shape, background=scene.background)


def _shape_points(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "triangle":
        return [(cx, cy - r), (cx + 0.87 * r, cy + 0.5 * r), (cx - 0.87 * r, cy + 0.5 * r)]
    w = r / 3  # half width of the cross arms
    return [(cx - w, cy - r), (cx + w, cy - r), (cx + w, cy - w), (cx + r, cy - w),
            (cx + r, cy + w), (cx + w, cy + w), (cx + w, cy + r), (cx - w, cy + r),
            (cx - w, cy + w), (cx - r, cy + w), (cx - r, cy - w), (cx - w, cy - w)]


def render_scene(scene: Scene, image_size: int) -> Image.Image:
    """Draw a scene as an RGB image of `image_size` x `image_size` pixels."""
    image = Image.new("RGB", (image_size, image_size), COLOURS[scene.background])
    draw = ImageDraw.Draw(image)
    fill = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(COLOURS[scene.colour], scene.jitter))
    cx, cy = scene.centre[0] * image_size, scene.centre[1] * image_size
    r = scene.radius * image_size
    box = (cx - r, cy - r, cx + r, cy + r)
    if scene.shape == "circle":
        draw.ellipse(box, fill=fill)
    elif scene.shape == "square":
        draw.rectangle((cx - 0.8 * r, cy - 0.8 * r, cx + 0.8 * r, cy + 0.8 * r), fill=fill)
    else:
        draw.polygon(_shape_points(scene.shape, cx, cy, r), fill=fill)
    return image


def encode_jpeg(image: Image.Image, quality: int = JPEG_QUALITY) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def make_sample(index: int, seed: int = 0, image_size: int = 64) -> WorldSample:
    scene = describe(index, seed)
    jpg = encode_jpeg(render_scene(scene, image_size))
    return WorldSample(jpg, caption_for(scene), label_of(scene.colour, scene.shape))


def make_world(n: int, seed: int = 0, image_size: int = 64) -> list[WorldSample]:
    """`n` samples `(jpg_bytes, caption, label)` of world `seed`, identical on every call."""
    return [make_sample(i, seed, image_size) for i in range(n)]


def world_rows(n: int, seed: int = 0, image_size: int = 64) -> list[dict]:
    """The world as pipeline rows: `uid, url, text, jpg, label` (uid as ingest computes it)."""
    rows = []
    for i, sample in enumerate(make_world(n, seed, image_size)):
        url = f"https://world.example/{seed}/{i}.jpg"
        rows.append({"uid": uid_of(url, sample.caption), "url": url, "text": sample.caption,
                     "jpg": sample.jpg, "label": sample.label})
    return rows


def write_eval_folder(folder: str | Path, n: int = EVAL_SIZE, image_size: int = 64,
                      seed: int = EVAL_SEED) -> Path:
    """`n` held-out samples as a zero-shot evaluation folder (`pipeline.train.zero_shot`):
    `red_circle/00000.jpg`, ... and `prompts.json` with one prompt per possible background for
    each class ("a red circle on a blue background", ...). A class scores its best prompt:
    the average of its prompts would blur shape and background colour (an image of a red
    shape on blue matches "a blue ... on a red background" about as well)."""
    folder = Path(folder)
    names = [name.replace(" ", "_") for name in class_names()]
    for index, sample in enumerate(make_world(n, seed, image_size)):
        path = folder / names[sample.label] / f"{index:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(sample.jpg)
    prompts = {names[label_of(colour, shape)]: [CAPTION_TEMPLATE.format(colour=colour, shape=shape, background=b)
                                                for b in COLOURS if b != colour]
               for colour in COLOURS for shape in SHAPES}
    (folder / "prompts.json").write_text(json.dumps(prompts, indent=1))
    return folder


def shuffled_captions(captions: Sequence[str], seed: int = 0) -> list[str]:
    """The captions permuted so that no position keeps a caption equal to its own.

    Raises ValueError when that is impossible (one caption text makes up more than half).
    """
    n = len(captions)
    rng = np.random.default_rng([seed, 0xC0FFEE])
    order = rng.permutation(n)
    out = list(captions)
    for a, b in zip(order, np.roll(order, -1)):  # a cyclic shift of a random order
        out[a] = captions[b]
    for i in range(n):
        if out[i] == captions[i]:
            _swap_to_fix(out, captions, i, rng)
    return out


def _swap_to_fix(out: list[str], captions: Sequence[str], i: int, rng: np.random.Generator) -> None:
    for j in rng.permutation(len(out)):
        if out[j] != captions[i] and out[i] != captions[j]:
            out[i], out[j] = out[j], out[i]
            return
    raise ValueError("cannot mismatch captions: one caption makes up most of the list")


def altered_captions(captions: Sequence[str], seed: int = 0) -> list[str]:
    """Hard negatives: each world caption with exactly one of colour, shape or background changed."""
    rng = np.random.default_rng([seed, 0xA17E])
    return [_alter(caption, rng) for caption in captions]


def _alter(caption: str, rng: np.random.Generator) -> str:
    words = caption.split()  # a {colour} {shape} on a {background} background
    colour, shape, background = words[1], words[2], words[5]
    part = rng.integers(3)
    if part == 0:
        colour = _other(list(COLOURS), (colour, background), rng)
    elif part == 1:
        shape = _other(list(SHAPES), (shape,), rng)
    else:
        background = _other(list(COLOURS), (colour, background), rng)
    return CAPTION_TEMPLATE.format(colour=colour, shape=shape, background=background)


def _other(choices: list[str], avoid: tuple[str, ...], rng: np.random.Generator) -> str:
    left = [c for c in choices if c not in avoid]
    return left[rng.integers(len(left))]
