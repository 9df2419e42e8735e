"""A generated URL-caption list with the noise of real alt-text (for the demo and tests):
exact duplicates, several languages, junk alt-text, file names, bad URLs, popular queries."""
from __future__ import annotations

import random

import pyarrow as pa

OBJECTS = ["dog", "cat", "bicycle", "car", "house", "tree", "mountain", "beach", "guitar",
           "coffee cup", "laptop", "chair", "flower", "bird", "boat", "bridge", "train",
           "pizza", "cake", "horse", "lamp", "book", "clock", "river", "forest", "street"]
ADJECTIVES = ["red", "blue", "green", "old", "small", "large", "wooden", "modern", "vintage",
              "bright", "dark", "yellow", "white", "black", "beautiful", "tiny"]
PLACES = ["in the park", "on a table", "near the lake", "at sunset", "in the snow",
          "on the street", "in a kitchen", "by the window", "under a blue sky", "at night"]
FOREIGN = [
    "un chien rouge dans le parc au coucher du soleil", "une maison ancienne près de la rivière",
    "ein kleiner Hund spielt im Garten mit einem Ball", "das alte Haus am See im Winter",
    "un perro pequeño jugando en la playa", "una casa vieja cerca del río al atardecer",
    "un gatto nero dorme sulla sedia", "uma bicicleta vermelha na rua da cidade",
    "кошка сидит на окне и смотрит на улицу", "公园里的一只小狗在草地上玩耍",
    "夕焼けの海辺を歩く犬の写真", "빨간 자전거가 거리에 주차되어 있다",
]
JUNK = ["IMG_{n:04d}.jpg", "DSC0{n:04d}.JPG", "image", "untitled", "photo", "   ", "",
        "thumbnail", "P10{n:05d}.png", "logo"]
BAD_URLS = ["", "UNLIKELY", "ftp://files.example.com/a.jpg", "data:image/png;base64,AAAA",
            "javascript:void(0)", "//cdn.example.com/x.jpg", "file:///etc/passwd", "http://",
            "mailto:someone@example.com"]


def english_caption(rng: random.Random) -> str:
    obj = rng.choice(OBJECTS)
    if rng.random() < 0.15:  # a few hugely popular queries, so balancing has work to do
        obj = "dog"
    return f"a {rng.choice(ADJECTIVES)} {obj} {rng.choice(PLACES)}"


def text_sample(rows: int, seed: int = 0, host: str = "https://images.example.com") -> pa.Table:
    """`rows` rows of (url, text, width) with duplicates, languages, junk and bad URLs."""
    rng = random.Random(seed)
    urls, texts = [], []
    for i in range(rows):
        roll = rng.random()
        if roll < 0.08 and urls:  # exact duplicate of an earlier pair
            j = rng.randrange(len(urls))
            urls.append(urls[j])
            texts.append(texts[j])
            continue
        url = f"{host}/{i // 1000:03d}/{i:07d}.jpg"
        if roll < 0.20:
            text = rng.choice(FOREIGN)
        elif roll < 0.30:
            text = rng.choice(JUNK).format(n=rng.randrange(10_000, 99_999))
        elif roll < 0.33:
            url = rng.choice(BAD_URLS)
            text = english_caption(rng)
        elif roll < 0.34:
            text = None
        else:
            text = english_caption(rng)
        urls.append(url)
        texts.append(text)
    width = [rng.choice([256, 512, 640, 1024]) for _ in range(rows)]
    return pa.table({"url": urls, "text": pa.array(texts, pa.string()), "width": width})
