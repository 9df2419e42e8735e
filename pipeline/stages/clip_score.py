"""clip_score: LAION's filter, the cosine similarity of a reference CLIP's embeddings.

Reads `jpg` (encoded image bytes) and `text`; adds `clip_score` (float32, NaN where the
image cannot be decoded) and, with `keep_embeddings` or when a later stage declares that it
reads them, `image_embedding` / `text_embedding` (fixed-size lists of float16, zeros
where undecodable; `pipeline.clip.embeddings`); with `keep_embeddings` the step also writes
them, for the rows it keeps, in
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

from pipeline.clip.embeddings import EMBEDDING_TYPE, IMAGE_EMBEDDING, TEXT_EMBEDDING, embedding_array
from pipeline.clip.threshold import ScoreHistogram
from pipeline.core import storage
from pipeline.core.constraints import AtLeast, Between, Matches
from pipeline.core.parts import PartRef
from pipeline.core.stage import REASON, Resources, Stage, set_column, with_reason
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
LOW_SCORE = "low_clip_score"
UNDECODABLE = "undecodable_image"


class ClipScoreStage(Stage):
    name = "clip_score"
    label = "CLIP score"
    inputs = ("jpg", "text")
    outputs = ((SCORE, pa.float32()), (IMAGE_EMBEDDING, EMBEDDING_TYPE), (TEXT_EMBEDDING, EMBEDDING_TYPE))
    optional = (IMAGE_EMBEDDING, TEXT_EMBEDDING)
    inputs_from = "download"
    reads_images = True

    @classmethod
    def output_fields(cls, settings) -> tuple:
        """The score, and with `keep_embeddings` the embeddings: fixed-size lists of the
        model's width where its config tells it without loading the model."""
        if not settings.keep_embeddings:
            return cls.outputs[:1]
        dim = model_embed_dim(settings.model)
        type_ = pa.list_(pa.float16(), dim) if dim else EMBEDDING_TYPE
        return (cls.outputs[0], (IMAGE_EMBEDDING, type_), (TEXT_EMBEDDING, type_))

    @classmethod
    def kept_columns(cls, settings) -> tuple:
        return cls.optional if settings.keep_embeddings else ()

    @classmethod
    def wants(cls, settings, columns: frozenset):
        return dataclasses.replace(settings, keep_embeddings=True) if columns & set(cls.optional) else settings

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


def model_embed_dim(model: str) -> Optional[int]:
    """The embedding width of an open_clip model from its config, where that is known
    without loading the model (None otherwise)."""
    try:
        import open_clip

        from pipeline.models import register_models

        register_models()
        config = open_clip.get_model_config(model)
        return int(config["embed_dim"]) if config else None
    except Exception:   # a best-effort early check, never a reason to fail
        return None


def add_score_columns(table: pa.Table, result) -> pa.Table:
    """`clip_score` and, when present, the float16 embedding columns (replacing old ones)."""
    table = set_column(table, SCORE, pa.array(result.scores, pa.float32()))
    if result.image_embeddings is not None:
        table = set_column(table, IMAGE_EMBEDDING, embedding_array(result.image_embeddings))
    if result.text_embeddings is not None:
        table = set_column(table, TEXT_EMBEDDING, embedding_array(result.text_embeddings))
    return table


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

    def declared_columns(self) -> tuple:
        return self.stage.declared_columns()


@dataclass
class ScoreKeepingDroppedScores:
    """Threshold mode: score and filter, and keep the scores of the dropped rows as extras
    (the ledger keeps only their reason; the report plots both sides of the threshold)."""
    stage: StageOp

    def __call__(self, table: pa.Table):
        scored = self.stage(table)
        dropped = scored.filter(pc.is_valid(scored[REASON]))[SCORE].to_numpy(zero_copy_only=False)
        return scored, {"dropped_scores": dropped.astype(np.float32)}

    def declared_columns(self) -> tuple:
        return self.stage.declared_columns()


@dataclass
class CutBelow:
    """Phase 2 of `top_fraction`: drop rows scoring below the global threshold."""
    threshold: float

    def __call__(self, table: pa.Table) -> pa.Table:
        return with_reason(table, low_score_reasons(table[SCORE], self.threshold))


class ClipScoreStep(Step):
    """`threshold` and `none` filter part by part; `top_fraction` is two-phase: per-part
    score histograms are merged on the driver into one global threshold, then applied."""

    def __init__(self, settings):
        """With `keep_embeddings` it also writes the embeddings layout (`want` may turn
        the embedding columns on later, for a stage that reads them: that writes nothing)."""
        self.writes_layout = settings.keep_embeddings
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
    return ClipScoreStep(settings)


STAGE = ClipScoreStage
