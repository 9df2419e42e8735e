"""Images with rendered text, for text spotting (`text_mask`) tests, its benchmark and the demo.

`text_cases(n, size)` draws a caption-like line of words over a picture (a world scene or
a real photo tile) in one of the fonts found here (PIL's default font and every TrueType
font under the system font folders), at several sizes and colours, and records the true
box of the text; `plain_cases` are the same pictures without text.
"""
from __future__ import annotations

import glob
import os
from functools import lru_cache
from typing import NamedTuple, Optional

import numpy as np
from PIL import Image, ImageDraw, ImageFont

FONT_FOLDERS = ("/usr/share/fonts", "/usr/local/share/fonts", "/Library/Fonts", "C:/Windows/Fonts")
TEXT_COLOURS = ((255, 255, 255), (0, 0, 0), (230, 30, 30), (250, 220, 40), (30, 60, 200))
WORDS = ("sale", "summer", "photo", "free", "shipping", "best", "price", "today", "new", "offer", "garden",
         "coffee", "travel", "street", "music", "night", "city", "red", "circle", "square", "blue", "green")


class TextCase(NamedTuple):
    image: Image.Image                  # RGB
    text: str                           # the words drawn ("" for none)
    box: Optional[tuple[int, int, int, int]]   # the text's true box (x0, y0, x1, y1), None for none
    font: str                           # the font's name


@lru_cache(maxsize=1)
def font_files() -> tuple[str, ...]:
    """TrueType fonts installed on this machine, sorted (none on a bare container)."""
    found = set()
    for folder in FONT_FOLDERS:
        for pattern in ("**/*.ttf", "**/*.TTF"):
            found.update(glob.glob(os.path.join(folder, pattern), recursive=True))
    return tuple(sorted(found))


def font(name: str, size: int):
    """`default` (PIL's own font, scalable) or a TrueType file, at `size` pixels."""
    if name == "default":
        return ImageFont.load_default(size)
    return ImageFont.truetype(name, size)


def font_names(limit: int = 6) -> list[str]:
    """PIL's default font and up to `limit - 1` TrueType fonts spread over those installed."""
    files = font_files()
    step = max(1, len(files) // max(1, limit - 1))
    return ["default"] + list(files[::step][:limit - 1])


def backgrounds(size: int) -> list[Image.Image]:
    """Pictures to write on: world scenes and real photo tiles (the photo of a text page left out)."""
    from pipeline.testing.photos import photo_tiles
    from pipeline.testing.world import describe, render_scene

    scenes = [render_scene(describe(i, 11), size) for i in range(24)]
    return scenes + [t.resize((size, size)) for t in photo_tiles(128)[:160:4]]


def draw_text(picture: Image.Image, text: str, font_name: str, height: int, colour: tuple,
              rng: np.random.Generator) -> TextCase:
    """`text` drawn on a copy of `picture` at a random place that holds it, about `height` px tall."""
    image = picture.copy()
    draw = ImageDraw.Draw(image)
    face = font(font_name, height)
    while True:
        x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=face)
        if x1 - x0 <= image.width - 4 or " " not in text:
            break
        text = text.rsplit(" ", 1)[0]
    left = int(rng.integers(2, max(3, image.width - (x1 - x0) - 2)))
    top = int(rng.integers(2, max(3, image.height - (y1 - y0) - 2)))
    draw.text((left - x0, top - y0), text, font=face, fill=colour)
    box = (left, top, min(image.width, left + x1 - x0), min(image.height, top + y1 - y0))
    return TextCase(image, text, box, os.path.basename(font_name))


def text_cases(n: int, size: int = 256, seed: int = 0, heights=(0.07, 0.1, 0.14)) -> list[TextCase]:
    """`n` pictures of `size` px with a line of 2-4 words, fonts, heights (fractions of the
    side) and colours taken in turn; the colour the one of TEXT_COLOURS most unlike the picture."""
    rng = np.random.default_rng([seed, 0x7E47])
    pictures, fonts = backgrounds(size), font_names()
    cases = []
    for i in range(n):
        picture = pictures[int(rng.integers(len(pictures)))]
        words = " ".join(WORDS[int(k)] for k in rng.choice(len(WORDS), int(rng.integers(2, 5)), replace=False))
        height = max(8, int(round(heights[i % len(heights)] * size)))
        cases.append(draw_text(picture, words, fonts[i % len(fonts)], height, contrasting(picture, rng), rng))
    return cases


def plain_cases(n: int, size: int = 256, seed: int = 0) -> list[TextCase]:
    """`n` pictures of `size` px without text."""
    rng = np.random.default_rng([seed, 0x9141])
    pictures = backgrounds(size)
    return [TextCase(pictures[int(rng.integers(len(pictures)))].copy(), "", None, "") for _ in range(n)]


def contrasting(picture: Image.Image, rng: np.random.Generator) -> tuple:
    """A text colour that stands out from the picture's mean colour (two candidates, the farther)."""
    mean = np.asarray(picture, np.float32).reshape(-1, 3).mean(axis=0)
    picks = [TEXT_COLOURS[int(k)] for k in rng.choice(len(TEXT_COLOURS), 2, replace=False)]
    return max(picks, key=lambda c: float(np.abs(np.array(c) - mean).sum()))
