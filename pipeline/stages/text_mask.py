"""text_mask: T-MARS's text spotting. Pairs whose image only writes out its caption, over a
picture that does not show it, score high with CLIP (it reads text); masking the text and
scoring again shows what the picture itself matches.

For each row clip_score kept, PP-OCR's text detector (`pipeline.text_spotting`, loaded once
per worker, batches of `batch_size`, one onnxruntime thread) finds text boxes; the stage adds
`text_boxes` (`[x0, y0, x1, y1]` per box, in the image's pixels), `text_area` (the fraction
of the image they cover) and `masked_clip_score`: the image with each box filled with the
mean colour of its border (as T-MARS does), embedded by clip_score's model and compared
with clip_score's `text_embedding` (not encoded again). An image without text keeps its
`clip_score` and costs only the detection; an undecodable one gets null boxes and area and
a NaN score, and is never dropped here.

Filters (reason `text_spotting`): with `filter: threshold`, a row with text goes when its
masked score is below `threshold` (default: clip_score's threshold) or, with `max_drop`,
when it lost more than `max_drop` of its score; `filter: top_fraction` keeps the top
`top_fraction` of all rows by masked score (with or without text, as T-MARS ranks), a global
two-phase step like clip_score's; `none` only scores. The report shows the distributions of
`text_area` and of the score drop, and removed pairs beside their masked image.
"""
from __future__ import annotations

import base64
import dataclasses
import io
from dataclasses import dataclass
from typing import Annotated, Literal, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.clip.embeddings import TEXT_EMBEDDING, embedding_rows
from pipeline.clip.threshold import ScoreHistogram
from pipeline.core import storage
from pipeline.core.constraints import AtLeast, Between
from pipeline.core.parts import PartRef
from pipeline.core.stage import Resources, Stage, set_column, with_reason
from pipeline.core.steps import Step, StepContext, part_readers
from pipeline.core.tasks import built_once
from pipeline.errors import UserError

SECTION = "text_mask"


@dataclass
class TextMaskSettings:
    filter: Literal["threshold", "top_fraction", "none"] = "threshold"
    threshold: Optional[Annotated[float, Between(-1, 1)]] = None   # masked score; default: clip_score's threshold
    max_drop: Optional[Annotated[float, Between(0, 2)]] = None     # clip_score - masked score, at most
    top_fraction: Annotated[float, Between(0, 1, low_open=True)] = 0.5   # T-MARS keeps half
    side: Annotated[int, AtLeast(32)] = 256              # the detector sees the longer side at this size
    box_threshold: Annotated[float, Between(0, 1)] = 0.5   # PP-OCR's mean text probability of a box
    max_box_height: Annotated[float, Between(0, 1, low_open=True)] = 0.3   # taller boxes are not text lines
    batch_size: Annotated[int, AtLeast(1)] = 16          # images through the detector at once
    examples: Annotated[int, AtLeast(0)] = 8             # removed pairs shown in the report
    enabled: bool = True


SETTINGS = TextMaskSettings

TEXT_AREA = "text_area"
TEXT_BOXES = "text_boxes"
MASKED_SCORE = "masked_clip_score"
REASON_NAME = "text_spotting"
BOXES_TYPE = pa.list_(pa.list_(pa.int32()))
AREA_EDGES = np.linspace(0.0, 1.0, 21)
DROP_EDGES = np.linspace(-0.2, 0.6, 33)
THUMB = 128


@dataclass(frozen=True)
class ClipSpec:
    """clip_score's model, as text_mask loads it (the same weights as the text embeddings)."""
    model: str
    pretrained: Optional[str]
    device: str
    precision: str
    batch_size: int


class TextMaskStage(Stage):
    name = "text_mask"
    label = "text spotting (T-MARS)"
    inputs = ("uid", "text", "jpg", "clip_score", TEXT_EMBEDDING)
    outputs = ((TEXT_AREA, pa.float32()), (TEXT_BOXES, BOXES_TYPE), (MASKED_SCORE, pa.float32()))
    inputs_from = "clip_score"
    reads_images = True


# --- per part: detect, mask, score ----------------------------------------------------------

def detector(settings: TextMaskSettings):
    from pipeline.text_spotting import TextDetector

    key = ("text_mask.detector", settings.side, settings.box_threshold, settings.max_box_height, settings.batch_size)
    return built_once(key, lambda: TextDetector(side=settings.side, box_threshold=settings.box_threshold,
                                                max_box_height=settings.max_box_height,
                                                batch_size=settings.batch_size, threads=1))


def scorer(spec: ClipSpec):
    def load():
        from pipeline.clip.model import load_clip
        from pipeline.clip.score import ClipScorer

        clip = load_clip(spec.model, spec.pretrained, device=spec.device, precision=spec.precision)
        return ClipScorer(clip, batch_size=spec.batch_size)

    return built_once(("text_mask.clip", spec), load)


def mask_and_score(table: pa.Table, settings: TextMaskSettings, spec: ClipSpec) -> pa.Table:
    """The table with `text_area`, `text_boxes` and `masked_clip_score`."""
    from PIL import Image

    from pipeline.clip.masked import image_scores
    from pipeline.text_spotting import decode_rgb, mask_boxes, text_area

    n = table.num_rows
    pixels = [decode_rgb(data) for data in table["jpg"].to_pylist()]
    decoded = np.array([p is not None for p in pixels], bool)
    boxes: list = [None] * n
    rows = np.flatnonzero(decoded)
    for i, found in zip(rows, detector(settings).detect([pixels[i] for i in rows])):
        boxes[i] = found
    areas = np.full(n, np.nan, np.float32)
    scores = table["clip_score"].to_numpy(zero_copy_only=False).astype(np.float32)
    scores[~decoded] = np.nan
    texts, has_text = embedding_rows(table[TEXT_EMBEDDING])
    with_text = [i for i in rows if len(boxes[i])]
    for i in rows:
        areas[i] = text_area(boxes[i], pixels[i].shape[:2])
    masked = [i for i in with_text if has_text[i]]
    if masked:
        images = [Image.fromarray(mask_boxes(pixels[i], boxes[i])) for i in masked]
        scores[masked] = image_scores(scorer(spec), images, texts[masked])
    table = set_column(table, TEXT_AREA, pa.array(areas, pa.float32(), mask=~decoded))
    table = set_column(table, TEXT_BOXES, pa.array([None if b is None else b.tolist() for b in boxes], BOXES_TYPE))
    return set_column(table, MASKED_SCORE, pa.array(scores, pa.float32()))


def text_reasons(table: pa.Table, threshold: float, max_drop: Optional[float]) -> pa.Array:
    """`text_spotting` for rows with text whose masked score is below `threshold` or fell by
    more than `max_drop`."""
    masked = table[MASKED_SCORE]
    found = pc.greater(pc.list_value_length(table[TEXT_BOXES]), 0)
    low = pc.less(masked, pa.scalar(threshold, pa.float32()))
    if max_drop is not None:
        low = pc.or_(low, pc.greater(pc.subtract(table["clip_score"], masked), pa.scalar(max_drop, pa.float32())))
    drop = pc.fill_null(pc.and_(found, low), False)
    return pc.if_else(drop, pa.scalar(REASON_NAME), pa.scalar(None, pa.string()))


def cut_reasons(table: pa.Table, threshold: float) -> pa.Array:
    """Phase 2 of `top_fraction`: `text_spotting` below the global threshold (NaN never goes)."""
    below = pc.fill_null(pc.less(table[MASKED_SCORE], pa.scalar(threshold, pa.float64())), False)
    return pc.if_else(below, pa.scalar(REASON_NAME), pa.scalar(None, pa.string()))


def distributions(table: pa.Table) -> dict:
    """Counts of `text_area` and of the score drop (rows with text), and of rows with text."""
    boxes = pc.fill_null(pc.list_value_length(table[TEXT_BOXES]), 0).to_numpy(zero_copy_only=False)
    found = boxes > 0
    area = table[TEXT_AREA].to_numpy(zero_copy_only=False)[found]
    drop = (table["clip_score"].to_numpy(zero_copy_only=False) - table[MASKED_SCORE].to_numpy(zero_copy_only=False))
    drop = drop[found & np.isfinite(drop)]
    return {"rows": np.array([table.num_rows, int(found.sum())], np.int64),
            "area_counts": np.histogram(np.clip(area, 0, 1), AREA_EDGES)[0].astype(np.int64),
            "drop_counts": np.histogram(np.clip(drop, DROP_EDGES[0], DROP_EDGES[-1]), DROP_EDGES)[0].astype(np.int64)}


def examples(table: pa.Table, dropped: np.ndarray, count: int) -> dict:
    """Up to `count` dropped rows (smallest uids): uid, caption, scores, and the image beside
    its masked image as small JPEG `data:` URIs."""
    from PIL import Image

    from pipeline.text_spotting import decode_rgb, mask_boxes

    rows = np.flatnonzero(dropped)
    if not len(rows) or not count:
        return {}
    uids = np.array(table["uid"].to_pylist(), dtype=object)[rows].astype(str)
    rows = rows[np.argsort(uids, kind="stable")[:count]]
    picked = table.take(pa.array(rows))
    images, masked = [], []
    for data, boxes in zip(picked["jpg"].to_pylist(), picked[TEXT_BOXES].to_pylist()):
        pixels = decode_rgb(data)
        if pixels is None:   # never dropped here; an image that no longer decodes is shown as none
            images.append("")
            masked.append("")
            continue
        images.append(thumbnail(Image.fromarray(pixels)))
        masked.append(thumbnail(Image.fromarray(mask_boxes(pixels, np.array(boxes or [], np.int32).reshape(-1, 4)))))
    return {"example_uid": np.array(picked["uid"].to_pylist(), dtype=str),
            "example_text": np.array([t or "" for t in picked["text"].to_pylist()], dtype=str),
            "example_score": picked["clip_score"].to_numpy(zero_copy_only=False).astype(np.float32),
            "example_masked_score": picked[MASKED_SCORE].to_numpy(zero_copy_only=False).astype(np.float32),
            "example_area": picked[TEXT_AREA].to_numpy(zero_copy_only=False).astype(np.float32),
            "example_image": np.array(images, dtype=str), "example_masked": np.array(masked, dtype=str)}


def thumbnail(image) -> str:
    image = image.convert("RGB")
    image.thumbnail((THUMB, THUMB))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode("ascii")


@dataclass
class MaskText:
    """Op of `map` (threshold, none) and of `score` (top_fraction, `threshold` None: no drops):
    mask and score each part; extras: the distributions, the masked scores' histogram
    (top_fraction) and example removed pairs."""
    settings: TextMaskSettings
    spec: ClipSpec
    threshold: Optional[float]
    histogram: bool = False

    def __call__(self, table: pa.Table):
        table = mask_and_score(table, self.settings, self.spec)
        extras = distributions(table)
        if self.histogram:
            extras["histogram"] = ScoreHistogram.of(table[MASKED_SCORE].to_numpy(zero_copy_only=False)).counts
        if self.threshold is None:
            return with_reason(table, pa.nulls(table.num_rows, pa.string())), extras
        reasons = text_reasons(table, self.threshold, self.settings.max_drop)
        extras.update(examples(table, reasons.is_valid().to_numpy(zero_copy_only=False), self.settings.examples))
        return with_reason(table, reasons), extras

    def declared_columns(self) -> tuple:
        return TextMaskStage.output_columns(self.settings)


@dataclass
class CutMasked:
    """Op of `cut` (top_fraction): drop rows below the global masked-score threshold."""
    threshold: float
    examples: int

    def __call__(self, table: pa.Table):
        reasons = cut_reasons(table, self.threshold)
        return with_reason(table, reasons), examples(table, reasons.is_valid().to_numpy(zero_copy_only=False),
                                                      self.examples)


# --- the step -------------------------------------------------------------------------------

class TextMaskStep(Step):
    """Per part (threshold, none), or two-phase like clip_score's top_fraction: per-part
    histograms of the masked scores merged on the driver into one threshold, then a cut."""

    def __init__(self, settings: TextMaskSettings, spec: ClipSpec, threshold: float):
        super().__init__(TextMaskStage, settings)
        self.spec = spec
        self.threshold = threshold   # the masked-score threshold of `filter: threshold`

    def run(self, ctx: StepContext, inputs: list[PartRef]) -> list[PartRef]:
        s = self.settings
        gpus = 1.0 if _wants_gpu(self.spec.device) else 0.0
        resources = Resources(cpus=1.0, gpus=gpus, stateful=True)
        readers = part_readers(inputs)
        record = {"filter": s.filter, "threshold": None, "max_drop": None, "top_fraction": None}
        if s.filter != "top_fraction":
            threshold = self.threshold if s.filter == "threshold" else None
            ctx.run_phase("map", readers, MaskText(s, self.spec, threshold), resources, images=True)
            outputs, phase = ctx.data_parts("map", len(readers)), "map"
            if threshold is not None:
                record.update(threshold=threshold, max_drop=s.max_drop)
        else:
            ctx.run_phase("score", readers, MaskText(s, self.spec, None, histogram=True), resources, images=True)
            histogram = ScoreHistogram()
            for extras in ctx.extras("score"):
                histogram = histogram.merge(ScoreHistogram(len(extras["histogram"]), extras["histogram"]))
            threshold = histogram.threshold(s.top_fraction)
            storage.write_json({"top_fraction": s.top_fraction, "threshold": threshold, "scored": histogram.total},
                               ctx.path("threshold.json"))
            outputs = ctx.run_grouped("cut", ctx.data_parts("score", len(readers)), CutMasked(threshold, s.examples),
                                      images=True)
            record.update(threshold=threshold, top_fraction=s.top_fraction)
            phase = "cut"
        ctx.record[SECTION] = summary(ctx, "map" if phase == "map" else "score", phase, s.examples, record)
        return outputs


def summary(ctx: StepContext, scored: str, cut: str, count: int, record: dict) -> dict:
    """What the report shows: rows with text, the distributions, removed example pairs."""
    rows = np.zeros(2, np.int64)
    area = np.zeros(len(AREA_EDGES) - 1, np.int64)
    drop = np.zeros(len(DROP_EDGES) - 1, np.int64)
    for extras in ctx.extras(scored):
        rows += extras["rows"]
        area += extras["area_counts"]
        drop += extras["drop_counts"]
    found = []
    for extras in ctx.extras(cut):
        if "example_uid" in extras:
            found += [{"uid": str(u), "text": str(t), "clip_score": round(float(c), 4),
                       "masked_clip_score": round(float(m), 4), "text_area": round(float(a), 4),
                       "image": str(i), "masked_image": str(k)}
                      for u, t, c, m, a, i, k in zip(*(extras[f"example_{key}"] for key in
                                                      ("uid", "text", "score", "masked_score", "area", "image",
                                                       "masked")))]
    return {**record, "rows": int(rows[0]), "with_text": int(rows[1]),
            "area_edges": [round(float(e), 4) for e in AREA_EDGES], "area_counts": area.tolist(),
            "drop_edges": [round(float(e), 4) for e in DROP_EDGES], "drop_counts": drop.tolist(),
            "examples": sorted(found, key=lambda e: e["uid"])[:count]}


def _wants_gpu(device: str) -> bool:
    if str(device).startswith("cuda"):
        return True
    if device == "auto":
        import torch

        return torch.cuda.is_available()
    return False


def build_step(settings: TextMaskSettings, run) -> TextMaskStep:
    """clip_score's model (its text embeddings are reused) and, by default, its threshold."""
    clip = run.section("clip_score") if run is not None and hasattr(run, "section") else None
    if clip is None or not getattr(clip, "enabled", True):
        raise UserError("text_mask: needs a clip_score section before it (its model scores the masked images "
                        "against its text embeddings)")
    spec = ClipSpec(clip.model, clip.pretrained, clip.device, clip.precision, clip.batch_size)
    threshold = settings.threshold if settings.threshold is not None else clip.threshold
    return TextMaskStep(dataclasses.replace(settings), spec, float(threshold))


STAGE = TextMaskStage
