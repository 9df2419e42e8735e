"""Real photographs offline, for decontamination tests and benchmarks.

scikit-image ships a few real photographs (astronaut, chelsea the cat, coffee, the Hubble
deep field, a retina, a rocket, a motorcycle, textures of brick, grass and gravel, ...).
Too few to be a pool, so each is cut into non-overlapping square tiles, and the tiles that
are not nearly flat (grey-level std >= `MIN_STD`) count as distinct photos: about 220 at
128 px. `augment` makes the copies a scraped pool would hold: a 5-10% crop, a resize,
a small colour shift and a low-quality JPEG re-encode.
"""
from __future__ import annotations

import io
import os

import numpy as np

PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "hubble_deep_field.jpg", "ihc.png", "retina.jpg",
          "rocket.jpg", "motorcycle_left.png", "camera.png", "coins.png", "moon.png", "brick.png", "grass.png",
          "gravel.png", "color.png", "cell.png", "microaneurysms.png", "clock_motion.png", "page.png")
MIN_STD = 20.0


def photo_folder() -> str:
    import skimage

    return os.path.join(os.path.dirname(skimage.__file__), "data")


def photo_tiles(size: int = 128) -> list:
    """Distinct real-photo tiles (PIL RGB images, `size` px), in a fixed order."""
    from PIL import Image

    tiles = []
    for name in PHOTOS:
        with Image.open(os.path.join(photo_folder(), name)) as image:
            image = image.convert("RGB")
        width, height = image.size
        for top in range(0, height - size + 1, size):
            for left in range(0, width - size + 1, size):
                tile = image.crop((left, top, left + size, top + size))
                if np.asarray(tile.convert("L"), dtype=np.float32).std() >= MIN_STD:
                    tiles.append(tile)
    return tiles


def jpeg(image, quality: int = 90) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def augment(image, rng: np.random.Generator) -> bytes:
    """A scraped copy: 5-10% cropped off (at a random place), resized 0.6-1.4x, each colour
    channel shifted by up to 10 levels and saturation by up to 10%, saved at JPEG quality 20-35."""
    from PIL import Image, ImageEnhance

    width, height = image.size
    cut = rng.uniform(0.05, 0.10)
    w, h = round(width * (1 - cut)), round(height * (1 - cut))
    left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
    image = image.crop((left, top, left + w, top + h))
    scale = rng.uniform(0.6, 1.4)
    image = image.resize((max(16, round(w * scale)), max(16, round(h * scale))), Image.BILINEAR)
    shifted = np.asarray(image, dtype=np.float32) + rng.uniform(-10, 10, size=3)
    image = Image.fromarray(np.clip(shifted, 0, 255).astype(np.uint8))
    image = ImageEnhance.Color(image).enhance(rng.uniform(0.9, 1.1))
    return jpeg(image, int(rng.integers(20, 36)))
