import io

import numpy as np
from PIL import Image

from pipeline.testing.world import (
    COLOURS,
    SHAPES,
    altered_captions,
    class_names,
    class_prompts,
    describe,
    make_world,
    shuffled_captions,
    world_rows,
)


def _nearest_colour(pixel) -> str:
    return min(COLOURS, key=lambda name: sum((int(a) - b) ** 2 for a, b in zip(pixel, COLOURS[name])))


def test_world_is_deterministic_per_seed():
    first, again, other = make_world(20, seed=3), make_world(20, seed=3), make_world(20, seed=4)
    assert first == again
    assert [s.jpg for s in first] != [s.jpg for s in other]


def test_images_show_what_captions_say():
    for index, sample in enumerate(make_world(40, seed=1, image_size=64)):
        image = Image.open(io.BytesIO(sample.jpg))
        assert image.format == "JPEG" and image.size == (64, 64) and image.mode == "RGB"
        scene = describe(index, seed=1)
        words = sample.caption.split()
        assert sample.caption == f"a {scene.colour} {scene.shape} on a {scene.background} background"
        assert words[1] in COLOURS and words[2] in SHAPES and words[1] != words[5]
        centre = (int(scene.centre[0] * 64), int(scene.centre[1] * 64))
        assert _nearest_colour(image.getpixel(centre)) == scene.colour
        assert _nearest_colour(image.getpixel((0, 0))) == scene.background
        assert class_names()[sample.label] == f"{scene.colour} {scene.shape}"


def test_labels_and_prompts_cover_all_classes():
    assert len(class_names()) == len(class_prompts()) == len(COLOURS) * len(SHAPES)
    labels = {s.label for s in make_world(400, seed=0)}
    assert labels == set(range(len(class_names())))


def test_shuffled_captions_never_keep_their_own_text():
    captions = [s.caption for s in make_world(200, seed=2)]
    shuffled = shuffled_captions(captions, seed=5)
    assert sorted(shuffled) == sorted(captions)
    assert all(a != b for a, b in zip(captions, shuffled))
    assert shuffled == shuffled_captions(captions, seed=5)
    few = ["x", "x", "y", "y"]
    assert all(a != b for a, b in zip(few, shuffled_captions(few)))


def test_altered_captions_change_exactly_one_attribute():
    captions = [s.caption for s in make_world(100, seed=2)]
    for original, altered in zip(captions, altered_captions(captions, seed=1)):
        changed = [a != b for a, b in zip(original.split(), altered.split())]
        assert sum(changed) == 1
        words = altered.split()
        assert words[1] != words[5]


def test_world_rows_have_unique_uids():
    rows = world_rows(50, seed=9)
    assert {"uid", "url", "text", "jpg", "label"} <= set(rows[0])
    assert len({r["uid"] for r in rows}) == 50
    assert np.all([len(r["uid"]) == 32 for r in rows])
