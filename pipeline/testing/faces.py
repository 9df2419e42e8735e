"""Synthetic frontal faces that OpenCV's Haar cascade detects, for testing face blurring.

A face is a skin-toned oval under a darker hair cap, with two dark eyebrows, two eyes
(white with a dark iris), a nose a little darker than the skin and a red mouth, slightly
smoothed: the light/dark pattern (eyes darker than cheeks and nose bridge) that the
Viola-Jones features respond to. With `haarcascade_frontalface_default.xml` at
`scaleFactor=1.1, minNeighbors=5`, faces 60-200 px wide on plain backgrounds are found
(light and medium skin tones; very dark skin with these flat colours is missed, a known
weakness of Haar cascades on low-contrast faces). Every image is a pure function of its
arguments.

`recall_set()` is the face detectors' recall set (face_blur's haar vs mtcnn): generated faces
of five kinds (frontal, profile, small 20-30 px, dark skin tones, low contrast and dim) and
real ones (scikit-image's astronaut and cameraman, its 100 LFW face crops at 25 and 50 px,
and the astronaut darkened, low-contrast, small, mirrored and tilted), each image with the
boxes of its faces; `faceless_set()` is real photos and LFW non-face crops without faces.
"""
from __future__ import annotations

import io
from typing import NamedTuple, Sequence

from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

SKINS: tuple[tuple[int, int, int], ...] = ((255, 224, 196), (224, 172, 140), (198, 134, 66), (141, 85, 36))
DARK_SKINS: tuple[tuple[int, int, int], ...] = ((110, 68, 42), (86, 54, 34), (64, 42, 30))
BACKGROUNDS: tuple[tuple[int, int, int], ...] = ((120, 160, 200), (40, 170, 60), (30, 30, 30), (220, 40, 40))


class Face(NamedTuple):
    cx: float         # centre, pixels
    cy: float
    width: float      # width of the skin oval, pixels (its height is 1.3 x)
    skin: tuple[int, int, int] = SKINS[1]
    facing: int = 0   # 0: frontal; 1: a profile looking right, -1: left

    def box(self) -> tuple[int, int, int, int]:
        """The oval's bounding box `(x0, y0, x1, y1)`."""
        h = self.width * 1.3
        return (int(self.cx - self.width / 2), int(self.cy - h / 2),
                int(self.cx + self.width / 2), int(self.cy + h / 2))


def draw_face(draw: ImageDraw.ImageDraw, face: Face) -> None:
    if face.facing:
        return draw_profile(draw, face)
    cx, cy, w, skin, _ = face
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


def draw_profile(draw: ImageDraw.ImageDraw, face: Face) -> None:
    """A side view: hair on the back of the head, an ear, one eye and brow near the front,
    a nose standing out of the outline, a short mouth."""
    cx, cy, w, skin, side = face
    h = w * 1.3
    dark = (50, 35, 30)
    front = cx + side * w / 2
    draw.ellipse([cx - w * 0.55, cy - h * 0.58, cx + w * 0.55, cy + h * 0.1], fill=(60, 40, 25))   # hair
    draw.ellipse([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], fill=skin)
    hair_back = sorted([cx - side * w * 0.55, cx - side * w * 0.05])
    draw.ellipse([hair_back[0], cy - h * 0.55, hair_back[1], cy + h * 0.15], fill=(60, 40, 25))
    ear = tuple(int(c * 0.85) for c in skin)
    draw.ellipse([cx - side * w * 0.05 - w * 0.08, cy - h * 0.1, cx - side * w * 0.05 + w * 0.08, cy + h * 0.08],
                 fill=ear)
    ey, ex = cy - h * 0.08, cx + side * w * 0.3
    draw.rectangle([ex - w * 0.1, ey - h * 0.12, ex + w * 0.1, ey - h * 0.085], fill=dark)   # brow
    draw.ellipse([ex - w * 0.07, ey - h * 0.035, ex + w * 0.07, ey + h * 0.035], fill=(250, 250, 250))
    draw.ellipse([ex + side * w * 0.02 - w * 0.035, ey - h * 0.035, ex + side * w * 0.02 + w * 0.035,
                  ey + h * 0.035], fill=dark)   # iris, looking forward
    draw.polygon([(front - side * w * 0.04, ey), (front + side * w * 0.14, cy + h * 0.12),
                  (front - side * w * 0.04, cy + h * 0.15)], fill=skin)   # nose
    mouth = sorted([front - side * w * 0.2, front - side * w * 0.03])
    draw.rectangle([mouth[0], cy + h * 0.24, mouth[1], cy + h * 0.27], fill=(150, 50, 50))


def face_image(faces: Sequence[Face], size: tuple[int, int] = (256, 256),
               background: tuple[int, int, int] = BACKGROUNDS[0], smooth: float = 1.5,
               contrast: float = 1.0, light: float = 1.0) -> Image.Image:
    """The faces drawn on a plain background; `contrast` < 1 greys the picture towards its
    mean (PIL's ImageEnhance.Contrast), `light` < 1 dims it."""
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    for face in faces:
        draw_face(draw, face)
    image = image.filter(ImageFilter.GaussianBlur(smooth)) if smooth else image
    if contrast != 1.0:
        image = ImageEnhance.Contrast(image).enhance(contrast)
    return ImageEnhance.Brightness(image).enhance(light) if light != 1.0 else image


def jpeg_of(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def face_jpeg(faces: Sequence[Face], size: tuple[int, int] = (256, 256),
              background: tuple[int, int, int] = BACKGROUNDS[0], quality: int = 90) -> bytes:
    return jpeg_of(face_image(faces, size, background), quality)


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


# --- the detectors' recall set ------------------------------------------------------------

Box = tuple[int, int, int, int]   # (x0, y0, x1, y1) of a face


class Labelled(NamedTuple):
    kind: str          # generated: frontal, profile, small, dark, low_contrast; real: real_*
    jpg: bytes
    faces: list        # the faces' boxes (x0, y0, x1, y1)


def generated_set(per_kind: int = 12) -> list[Labelled]:
    """`per_kind` images of each generated kind, 256 px (small: three faces each)."""
    out = []
    for i in range(per_kind):
        background = BACKGROUNDS[i % len(BACKGROUNDS)]
        skin = SKINS[i % len(SKINS)]
        width = 256 * (0.32 + 0.04 * (i % 4))
        place = (128 + 12 * ((i % 3) - 1), 128 + 8 * ((i % 2) * 2 - 1))
        frontal = Face(*place, width, skin)
        out.append(Labelled("frontal", face_jpeg([frontal], background=background), [frontal.box()]))
        profile = Face(*place, width * 0.8, skin, facing=1 if i % 2 else -1)
        out.append(Labelled("profile", face_jpeg([profile], background=background), [profile.box()]))
        small = [Face(50 + 75 * k, 90 + 40 * ((k + i) % 2), 20 + (i + 3 * k) % 11, SKINS[(i + k) % 2])
                 for k in range(3)]
        out.append(Labelled("small", jpeg_of(face_image(small, background=background, smooth=0.6)),
                            [f.box() for f in small]))
        dark = Face(*place, width, DARK_SKINS[i % len(DARK_SKINS)])
        out.append(Labelled("dark", face_jpeg([dark], background=background), [dark.box()]))
        faint = Face(*place, width, skin)
        contrast, light = (0.35, 1.0) if i % 2 else (0.6, 0.45)
        image = face_image([faint], background=background, contrast=contrast, light=light)
        out.append(Labelled("low_contrast", jpeg_of(image), [faint.box()]))
    return out


def real_set() -> list[Labelled]:
    """Real faces from scikit-image's data: the astronaut (and five changed copies), the
    cameraman, and LFW's 100 face crops (25 px as stored, and 50 px) on a grey canvas."""
    import numpy as np
    from skimage import data

    astronaut = Image.fromarray(data.astronaut())
    face: Box = (170, 50, 280, 185)
    out = [Labelled("real_astronaut", jpeg_of(astronaut), [face]),
           Labelled("real_cameraman", jpeg_of(Image.fromarray(data.camera()).convert("RGB")), [(190, 105, 265, 205)])]
    changed = [("real_dark", ImageEnhance.Brightness(astronaut).enhance(0.3), face),
               ("real_low_contrast", ImageEnhance.Contrast(astronaut).enhance(0.3), face),
               ("real_small", astronaut.resize((128, 128), Image.BILINEAR), tuple(v // 4 for v in face)),
               ("real_mirrored", astronaut.transpose(Image.FLIP_LEFT_RIGHT), (512 - face[2], face[1], 512 - face[0],
                                                                               face[3]))]
    out += [Labelled(kind, jpeg_of(image), [box]) for kind, image, box in changed]
    tilted = astronaut.rotate(20, resample=Image.BILINEAR, center=(225, 118))   # about the face's centre
    out.append(Labelled("real_tilted", jpeg_of(tilted), [face]))
    crops = (data.lfw_subset()[:100] * 255).round().astype(np.uint8)
    for side, canvas in ((25, 96), (50, 128)):
        at = (canvas - side) // 2
        for crop in crops:
            image = Image.new("L", (canvas, canvas), 128)
            image.paste(Image.fromarray(crop).resize((side, side), Image.BICUBIC), (at, at))
            out.append(Labelled(f"real_lfw_{side}px", jpeg_of(image.convert("RGB")), [(at, at, at + side, at + side)]))
    return out


def faceless_set() -> list[Labelled]:
    """Real images without a face: scikit-image's photographs and textures, and LFW's 100
    non-face crops (50 px on a grey canvas)."""
    import numpy as np
    from skimage import data

    out = []
    for name in ("coffee", "chelsea", "rocket", "coins", "hubble_deep_field", "immunohistochemistry", "retina",
                 "brick", "grass", "gravel", "horse", "page", "text", "moon", "clock", "logo", "colorwheel"):
        array = getattr(data, name)()
        if array.dtype != np.uint8:
            array = (np.clip(array, 0, 1) * 255).astype(np.uint8)
        out.append(Labelled(f"faceless_{name}", jpeg_of(Image.fromarray(array).convert("RGB")), []))
    out.append(Labelled("faceless_motorcycle", jpeg_of(Image.fromarray(data.stereo_motorcycle()[0])), []))
    for crop in (data.lfw_subset()[100:] * 255).round().astype(np.uint8):
        image = Image.new("L", (128, 128), 128)
        image.paste(Image.fromarray(crop).resize((50, 50), Image.BICUBIC), (39, 39))
        out.append(Labelled("faceless_lfw", jpeg_of(image.convert("RGB")), []))
    return out
