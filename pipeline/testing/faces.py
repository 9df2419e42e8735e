"""Synthetic frontal faces that OpenCV's Haar cascade detects, for testing face blurring.

A face is a skin-toned oval under a darker hair cap, with two dark eyebrows, two eyes
(white with a dark iris), a nose a little darker than the skin and a red mouth, slightly
smoothed: the light/dark pattern (eyes darker than cheeks and nose bridge) that the
Viola-Jones features respond to. With `haarcascade_frontalface_default.xml` at
`scaleFactor=1.1, minNeighbors=5`, faces 60-200 px wide on plain backgrounds are found
(light and medium skin tones; very dark skin with these flat colours is missed, a known
weakness of Haar cascades on low-contrast faces). Every image is a pure function of its
arguments.
"""
from __future__ import annotations

import io
from typing import NamedTuple, Sequence

from PIL import Image, ImageDraw, ImageFilter

SKINS: tuple[tuple[int, int, int], ...] = ((255, 224, 196), (224, 172, 140), (198, 134, 66), (141, 85, 36))
BACKGROUNDS: tuple[tuple[int, int, int], ...] = ((120, 160, 200), (40, 170, 60), (30, 30, 30), (220, 40, 40))


class Face(NamedTuple):
    cx: float         # centre, pixels
    cy: float
    width: float      # width of the skin oval, pixels (its height is 1.3 x)
    skin: tuple[int, int, int] = SKINS[1]

    def box(self) -> tuple[int, int, int, int]:
        """The oval's bounding box `(x0, y0, x1, y1)`."""
        h = self.width * 1.3
        return (int(self.cx - self.width / 2), int(self.cy - h / 2),
                int(self.cx + self.width / 2), int(self.cy + h / 2))


def draw_face(draw: ImageDraw.ImageDraw, face: Face) -> None:
    cx, cy, w, skin = face
    h = w * 1.3
    dark = (50, 35, 30)
    draw.ellipse([cx - w * 0.55, cy - h * 0.58, cx + w * 0.55, cy + h * 0.1], fill=(60, 40, 25))  # hair
    draw.ellipse([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], fill=skin)
    ey = cy - h * 0.08
    for side in (-1, 1):
        ex = cx + side * w * 0.2
        draw.rectangle([ex - w * 0.13, ey - h * 0.12, ex + w * 0.13, ey - h * 0.085], fill=dark)   # brow
        draw.ellipse([ex - w * 0.1, ey - h * 0.035, ex + w * 0.1, ey + h * 0.035], fill=(250, 250, 250))
        draw.ellipse([ex - w * 0.05, ey - h * 0.035, ex + w * 0.05, ey + h * 0.035], fill=dark)   # iris
    nose = tuple(int(c * 0.85) for c in skin)
    draw.polygon([(cx, ey), (cx - w * 0.07, cy + h * 0.14), (cx + w * 0.07, cy + h * 0.14)], fill=nose)
    draw.ellipse([cx - w * 0.17, cy + h * 0.22, cx + w * 0.17, cy + h * 0.28], fill=(150, 50, 50))  # mouth


def face_image(faces: Sequence[Face], size: tuple[int, int] = (256, 256),
               background: tuple[int, int, int] = BACKGROUNDS[0], smooth: float = 1.5) -> Image.Image:
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    for face in faces:
        draw_face(draw, face)
    return image.filter(ImageFilter.GaussianBlur(smooth)) if smooth else image


def face_jpeg(faces: Sequence[Face], size: tuple[int, int] = (256, 256),
              background: tuple[int, int, int] = BACKGROUNDS[0], quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    face_image(faces, size, background).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def face_sample(index: int, size: int = 256) -> tuple[bytes, list[Face]]:
    """Image `index` of a small set: one face (skin, background, width and place vary with
    `index`), every fourth image two faces side by side; returns the JPEG and its faces."""
    skin, background = SKINS[index % len(SKINS)], BACKGROUNDS[(index // len(SKINS)) % len(BACKGROUNDS)]
    if index % 4 == 3:
        width = size * 0.34
        faces = [Face(size * 0.27, size / 2, width, skin), Face(size * 0.73, size / 2, width, skin)]
    else:
        width = size * (0.35 + 0.05 * (index % 5))
        offset = size * 0.04 * ((index % 3) - 1)
        faces = [Face(size / 2 + offset, size / 2 - offset, width, skin)]
    return face_jpeg(faces, (size, size), background), faces
