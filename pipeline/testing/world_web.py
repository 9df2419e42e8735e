"""The demo's web: world images served by FakeWeb with the noise of real alt-text.

Most pairs go into a LAION-style URL list (`URL`, `TEXT`); the rest sit on a small site that
the crawl step finds. Noise, each a fixed share of the pool: exact duplicates, near-duplicate
images (re-encoded, another URL), captions in other languages, junk alt-text, mismatched
captions, broken links and opt-out headers, and text spotting: an image that writes out its
caption over a picture that does not show it (`reading_clip.spotting_image`), which a CLIP
that reads scores as a true pair (T-MARS; the demo's text_mask step removes them).
"""
from __future__ import annotations

import html
import io
import random
from dataclasses import dataclass, field

import pyarrow as pa
from PIL import Image

from pipeline.testing.fakeweb import FakeWeb
from pipeline.testing.reading_clip import spotting_pair
from pipeline.testing.world import describe, make_sample

TRANSLATIONS = {
    "fr": ("un {shape} {colour} sur un fond {background}",
           {"red": "rouge", "green": "vert", "blue": "bleu", "yellow": "jaune", "purple": "violet",
            "white": "blanc", "circle": "cercle", "square": "carré", "triangle": "triangle",
            "cross": "croix"}),
    "de": ("ein {colour}es {shape} vor einem {background}en Hintergrund",
           {"red": "rot", "green": "grün", "blue": "blau", "yellow": "gelb", "purple": "lila",
            "white": "weiß", "circle": "Kreis", "square": "Quadrat", "triangle": "Dreieck",
            "cross": "Kreuz"}),
    "es": ("un {shape} {colour} sobre un fondo {background}",
           {"red": "rojo", "green": "verde", "blue": "azul", "yellow": "amarillo", "purple": "morado",
            "white": "blanco", "circle": "círculo", "square": "cuadrado", "triangle": "triángulo",
            "cross": "cruz"}),
    "ja": ("{background}の背景に{colour}の{shape}",   # written without spaces
           {"red": "赤", "green": "緑", "blue": "青", "yellow": "黄色", "purple": "紫", "white": "白",
            "circle": "円", "square": "四角", "triangle": "三角", "cross": "十字"}),
}
JUNK = ["IMG_{n}.jpg", "DSC0{n}.JPG", "image", "untitled", "photo", "thumbnail", "", "logo"]
NOISE = [("duplicate", 0.05), ("near_duplicate", 0.05), ("foreign", 0.10), ("junk", 0.08),
         ("mismatched", 0.22), ("broken", 0.04), ("opt_out", 0.03), ("text_spotting", 0.06)]


@dataclass
class DemoWeb:
    pairs: pa.Table                       # URL, TEXT (the URL list to ingest)
    seeds: list[str]                      # where the crawl starts
    kinds: dict[str, str] = field(default_factory=dict)   # url -> noise kind (for the report)


def translate(index: int, seed: int, language: str) -> str:
    scene = describe(index, seed)
    template, words = TRANSLATIONS[language]
    return template.format(colour=words[scene.colour], shape=words[scene.shape],
                           background=words[scene.background])


def reencode(jpg: bytes) -> bytes:
    """A near-duplicate: slightly resized and re-encoded at another quality."""
    image = Image.open(io.BytesIO(jpg)).convert("RGB")
    image = image.resize((image.width + 4, image.height + 4))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=75)
    return out.getvalue()


def build_demo_web(web: FakeWeb, n: int, seed: int = 0, site_share: float = 0.2,
                   image_size: int = 96) -> DemoWeb:
    rng = random.Random(seed)
    samples = [make_sample(i, seed, image_size) for i in range(n)]
    rows: list[tuple[str, str, str]] = []   # (url, text, kind)
    for i, sample in enumerate(samples):
        kind = pick_kind(rng)
        rows.extend(noisy_rows(web, i, sample, kind, samples, seed, rng, image_size))
    rng.shuffle(rows)
    on_site = int(len(rows) * site_share)
    seeds = build_site(web, rows[:on_site])
    listed = rows[on_site:]
    pairs = pa.table({"URL": [r[0] for r in listed], "TEXT": [r[1] for r in listed]})
    return DemoWeb(pairs, seeds, {r[0]: r[2] for r in rows})


def pick_kind(rng: random.Random) -> str:
    roll, total = rng.random(), 0.0
    for kind, share in NOISE:
        total += share
        if roll < total:
            return kind
    return "clean"


def noisy_rows(web: FakeWeb, i: int, sample, kind: str, samples, seed: int, rng: random.Random,
               image_size: int):
    path = f"/world/{i:06d}.jpg"
    url = web.url(path)
    web.add_image(path, sample.jpg)
    caption = sample.caption
    if kind == "broken":
        return [(web.url(f"/fault/404/{i:06d}.jpg"), caption, kind)]
    if kind == "opt_out":
        return [(web.url(f"/fault/noai/{i:06d}.jpg"), caption, kind)]
    if kind == "text_spotting":
        web.add_image(path, spotting_pair(i, seed, image_size)[0])
        return [(url, caption, kind)]
    if kind == "duplicate":
        return [(url, caption, "clean"), (url, caption, kind)]
    if kind == "near_duplicate":
        web.add_image(f"/world/{i:06d}-copy.jpg", reencode(sample.jpg))
        return [(url, caption, "clean"), (web.url(f"/world/{i:06d}-copy.jpg"), caption, kind)]
    if kind == "foreign":
        caption = translate(i, seed, rng.choice(sorted(TRANSLATIONS)))
    elif kind == "junk":
        caption = rng.choice(JUNK).format(n=rng.randrange(1000, 99999))
    elif kind == "mismatched":
        caption = samples[rng.randrange(len(samples))].caption
    return [(url, caption, kind)]


def build_site(web: FakeWeb, rows: list, per_page: int = 10) -> list[str]:
    """Pages of <img alt> linked in a chain (plus robots.txt closing a private folder)."""
    pages = [rows[i:i + per_page] for i in range(0, len(rows), per_page)] or [[]]
    for p, page in enumerate(pages):
        imgs = "".join(f'<figure><img src="{html.escape(url)}" alt="{html.escape(text)}"></figure>'
                       for url, text, _ in page)
        web.add_page(f"/site/{p}.html", f"<html><body>{imgs}"
                                        f'<a href="/private/admin.html">admin</a></body></html>')
    links = "".join(f'<a href="/site/{p}.html">page {p}</a>' for p in range(len(pages)))
    web.add_page("/site/index.html", f"<html><body>{links}</body></html>")
    web.add_page("/private/admin.html", '<img src="/world/secret.jpg" alt="never crawled">')
    web.add_robots("User-agent: *\nDisallow: /private/\n")
    return [web.url("/site/index.html")]
