"""clip_score: LAION's filter, the cosine similarity of a reference CLIP's embeddings.

Reads `jpg` (encoded image bytes) and `text`; adds `clip_score` (float32, NaN where the
image cannot be decoded) and, with `keep_embeddings` or for the steps that read them (heads,
semantic_dedup), `image_embedding` / `text_embedding` (fixed-size lists of float16, zeros
where undecodable); with `keep_embeddings` the step also writes them, for the rows it keeps, in
clip-retrieval's layout under `<run>/embeddings/` (`pipeline.clip.index`). Reasons:
`undecodable_image`, and with `filter: threshold`, `low_clip_score` for scores below
`threshold`. `filter: top_fraction` is a global two-phase step: this stage only scores; the
engine merges `ScoreHistogram`s of the scores (see `score_histogram`), takes its threshold,
and drops rows with `low_score_reasons`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Annotated, Literal, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.clip.threshold import ScoreHistogram
from pipeline.core import storage
from pipeline.core.constraints import AtLeast, Between, Matches
from pipeline.core.parts import PartRef
from pipeline.core.stage import Resources, Stage, set_column, with_reason
from pipeline.core.steps import Step, StepContext, part_readers
from pipeline.core.tasks import StageOp

SECTION = "clip_score"


@dataclass
class ClipScoreSettings:
    model: str = "ViT-B-32"
    pretrained: Optional[str] = "openai"
    threshold: Annotated[float, Between(-1, 1)] = 0.28   # cosine similarity
    filter: Literal["threshold", "top_fraction", "none"] = "threshold"
    top_fraction: Annotated[float, Between(0, 1, low_open=True)] = 0.3
    batch_size: Annotated[int, AtLeast(1)] = 256
    device: Annotated[str, Matches(r"auto|cpu|cuda(:\d+)?", "auto, cpu, cuda or cuda:N")] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    keep_embeddings: bool = False
    decode_workers: Optional[Annotated[int, AtLeast(1)]] = None   # threads decoding images; default from the device
    enabled: bool = True


SETTINGS = ClipScoreSettings


SCORE = "clip_score"
EMBEDDING_READERS = ("heads", "semantic_dedup")   # later steps that read the embedding columns
IMAGE_EMBEDDING = "image_embedding"
TEXT_EMBEDDING = "text_embedding"
LOW_SCORE = "low_clip_score"
UNDECODABLE = "undecodable_image"


class ClipScoreStage(Stage):
    name = "clip_score"
    inputs = ("jpg", "text")
    outputs = (SCORE, IMAGE_EMBEDDING, TEXT_EMBEDDING)   # embeddings when a later stage or output asks
    inputs_from = "download"
    reads_images = True

    def __init__(self, settings, seed: int = 0):
        super().__init__(settings, seed)
        self.resources = Resources(cpus=1.0, gpus=1.0 if _wants_gpu(settings.device) else 0.0,
                                   stateful=True)
        self.scorer = None  # a ClipScorer, set by setup(), once per worker

    def setup(self) -> None:
        from pipeline.clip.model import load_clip
        from pipeline.clip.score import ClipScorer

        s = self.settings
        clip = load_clip(s.model, s.pretrained, device=s.device, precision=s.precision)
        self.scorer = ClipScorer(clip, batch_size=s.batch_size, decode_workers=s.decode_workers)

    def __getstate__(self) -> dict:
        """Ship the stage to workers without its model: each worker runs `setup()` itself."""
        return {**self.__dict__, "scorer": None}

    def process(self, table: pa.Table) -> pa.Table:
        self.check_columns(table.column_names)
        if self.scorer is None:
            self.setup()
        keep_embeddings = self.settings.keep_embeddings
        result = self.scorer.score(table["jpg"].to_pylist(), table["text"].to_pylist(),
                                    with_embeddings=keep_embeddings)
        table = add_score_columns(table, result)
        threshold = self.settings.threshold if self.settings.filter == "threshold" else None
        return with_reason(table, score_reasons(result.scores, threshold))


def _wants_gpu(device: str) -> bool:
    if str(device).startswith("cuda"):
        return True
    if device == "auto":
        import torch

        return torch.cuda.is_available()
    return False


def add_score_columns(table: pa.Table, result) -> pa.Table:
    """`clip_score` and, when present, the float16 embedding columns (replacing old ones)."""
    table = set_column(table, SCORE, pa.array(result.scores, pa.float32()))
    if result.image_embeddings is not None:
        table = set_column(table, IMAGE_EMBEDDING, embedding_array(result.image_embeddings))
    if result.text_embeddings is not None:
        table = set_column(table, TEXT_EMBEDDING, embedding_array(result.text_embeddings))
    return table


def embedding_array(embeddings: np.ndarray) -> pa.FixedSizeListArray:
    values = np.ascontiguousarray(embeddings, dtype=np.float16)
    return pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), values.shape[1])


def embedding_rows(column) -> tuple[np.ndarray, np.ndarray]:
    """An embedding column (`embedding_array`'s fixed-size lists) as float32 rows,
    re-normalised (float16 rounding), and which rows have one (not null, not zero: an
    undecodable image's rows are zeros)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], column.type)
    dim = column.type.list_size
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    x = np.zeros((len(column), dim), dtype=np.float32)
    if valid.any():
        present = column.filter(pa.array(valid)).flatten().to_numpy(zero_copy_only=False)
        x[valid] = present.astype(np.float32).reshape(-1, dim)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
    return x, valid & (norms[:, 0] > 0)


def score_reasons(scores: np.ndarray, threshold: float | None) -> pa.Array:
    """`undecodable_image` for NaN scores, `low_clip_score` below `threshold` (if given)."""
    scores = pa.array(scores, pa.float32())
    reasons = pa.nulls(len(scores), pa.string())
    if threshold is not None:
        reasons = low_score_reasons(scores, threshold)
    return pc.if_else(pc.is_nan(scores), pa.scalar(UNDECODABLE), reasons)


def low_score_reasons(scores: pa.Array | pa.ChunkedArray, threshold: float) -> pa.Array:
    """Phase 2 of `top_fraction` (and the threshold filter): `low_clip_score` where score < threshold."""
    below = pc.fill_null(pc.less(scores, pa.scalar(threshold, pa.float64())), False)
    return pc.if_else(below, pa.scalar(LOW_SCORE), pa.scalar(None, pa.string()))


def score_histogram(table: pa.Table) -> ScoreHistogram:
    """Phase 1 of `top_fraction`: the mergeable histogram of one part's scores."""
    return ScoreHistogram.of(table[SCORE].to_numpy())


@dataclass
class ScoreAndHistogram:
    """Phase 1 of `top_fraction`: score every row (no filter), and count its scores."""
    stage: StageOp

    def __call__(self, table: pa.Table):
        scored = self.stage(table)
        return scored, {"histogram": score_histogram(scored).counts}


@dataclass
class ScoreKeepingDroppedScores:
    """Threshold mode: score and filter, and keep the scores of the dropped rows as extras
    (the ledger keeps only their reason; the report plots both sides of the threshold)."""
    stage: StageOp

    def __call__(self, table: pa.Table):
        scored = self.stage(table)
        dropped = scored.filter(pc.is_valid(scored["_reason"]))[SCORE].to_numpy(zero_copy_only=False)
        return scored, {"dropped_scores": dropped.astype(np.float32)}


@dataclass
class CutBelow:
    """Phase 2 of `top_fraction`: drop rows scoring below the global threshold."""
    threshold: float

    def __call__(self, table: pa.Table) -> pa.Table:
        return with_reason(table, low_score_reasons(table[SCORE], self.threshold))


class ClipScoreStep(Step):
    """`threshold` and `none` filter part by part; `top_fraction` is two-phase: per-part
    score histograms are merged on the driver into one global threshold, then applied."""

    def __init__(self, settings, embed: bool = False):
        """`embed`: add the embedding columns even without `keep_embeddings` (later steps,
        heads and semantic_dedup, read them; the last of them drops them unless
        `keep_embeddings`)."""
        self.writes_layout = settings.keep_embeddings
        if embed:
            settings = dataclasses.replace(settings, keep_embeddings=True)
        super().__init__(ClipScoreStage, settings)

    def run(self, ctx: StepContext, inputs: list[PartRef]) -> list[PartRef]:
        outputs = self.score(ctx, inputs)
        if self.writes_layout:
            from pipeline.clip.index import write_embeddings

            ctx.record["embeddings"] = write_embeddings(ctx.engine, outputs, ctx.run_dir,
                                                        ctx.phase_dir("embeddings"))
        return outputs

    def score(self, ctx: StepContext, inputs: list[PartRef]) -> list[PartRef]:
        if self.settings.filter == "threshold":
            op = ScoreKeepingDroppedScores(StageOp(ClipScoreStage, self.settings, ctx.seed))
            readers = part_readers(inputs)
            ctx.run_phase("map", readers, op, ClipScoreStage(self.settings).resources, images=True)
            return ctx.data_parts("map", len(readers))
        if self.settings.filter != "top_fraction":
            return super().run(ctx, inputs)
        scoring = dataclasses.replace(self.settings, filter="none")
        op = ScoreAndHistogram(StageOp(ClipScoreStage, scoring, ctx.seed))
        resources = ClipScoreStage(scoring).resources
        readers = part_readers(inputs)
        ctx.run_phase("score", readers, op, resources, images=True)
        histogram = ScoreHistogram()
        for extras in ctx.extras("score"):
            counts = extras["histogram"]
            histogram = histogram.merge(ScoreHistogram(len(counts), counts))
        threshold = histogram.threshold(self.settings.top_fraction)
        storage.write_json({"top_fraction": self.settings.top_fraction, "threshold": threshold,
                          "scored": histogram.total}, ctx.path("threshold.json"))
        return ctx.run_grouped("cut", ctx.data_parts("score", len(readers)), CutBelow(threshold))


def build_step(settings: ClipScoreSettings, run) -> ClipScoreStep:
    embed = run is not None and any(run.section(name) is not None for name in EMBEDDING_READERS)
    return ClipScoreStep(settings, embed=embed)
