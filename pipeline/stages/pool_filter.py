"""pool_filter: judge a pool's rows by their metadata, before any download.

A DataComp pool (or any input with these columns) carries each image's original size and
precomputed CLIP scores; this stage filters on them so only surviving rows are downloaded:

- `small_image`: the smaller of `width_col`/`height_col` is below `min_side` (or missing);
- `extreme_aspect`: the larger side over the smaller (in float64) is above `max_aspect`;
- `low_clip_score`: `score_col` below `min_score`, or outside the global `top_fraction`;
- `no_entity`: with `entities` (a file of WordNet ids such as `n02084071`, DataComp's
  ImageNet-21k list), no word of the caption (`str.split`) has a first WordNet synset
  (`pipeline.wordnet`, NLTK's `synsets(word)[0]`) whose offset is in the list.

Comparisons follow DataComp's `baselines/apply_filter.py`: a score is compared in its
column's own type (a float32 column against the threshold rounded to float32, as numpy
compares a float32 array with a Python float), and missing or NaN values never pass.
`top_fraction` keeps the rows scoring at least the score at descending rank
`int(rows * top_fraction)` (0-based; DataComp's `-np.sort(-scores)[n]`): ties at the cut are
all kept, NaNs sort last. The rank is found exactly, without moving rows to the driver: a
radix select over the scores' 64-bit order keys, 16 bits per pass, each pass a map over the
parts that reads only the score column and returns a 65,536-bin histogram (with each bin's
smallest and largest key, so it stops as soon as the bin at the rank holds one value: three
passes for float32 scores). Its tasks, and those of the cut after it, take consecutive parts
up to `task_rows` rows (a step over 10x the parts runs as many tasks). The chosen threshold is
written to the step's `threshold.json`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Annotated, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core import storage
from pipeline.core.constraints import AtLeast, Between, Invalid
from pipeline.core.stage import Stage, first_reason, with_reason
from pipeline.core.steps import Step, StepContext, group_by_rows
from pipeline.core.tasks import ReadParts, StageOp

SECTION = "pool_filter"
DIGIT_BITS = 16
BINS = 1 << DIGIT_BITS


@dataclass
class PoolFilterSettings:
    min_side: Annotated[int, AtLeast(0)] = 0        # px: the smaller original side at least this
    max_aspect: Optional[Annotated[float, AtLeast(1)]] = None   # larger side / smaller side at most this
    width_col: str = "original_width"
    height_col: str = "original_height"
    score_col: Optional[str] = None                 # e.g. clip_b32_similarity_score, clip_l14_similarity_score
    min_score: Optional[float] = None               # keep score >= min_score
    top_fraction: Optional[Annotated[float, Between(0, 1, low_open=True, high_open=True)]] = None
    entities: Optional[str] = None                  # WordNet ids, one per line: a caption must name one
    enabled: bool = True

    def validate(self) -> None:
        if self.min_score is not None and self.top_fraction is not None:
            raise Invalid("top_fraction", "give min_score or top_fraction, not both", self.top_fraction)
        if (self.min_score is not None or self.top_fraction is not None) and not self.score_col:
            raise Invalid("score_col", "min_score and top_fraction need the column of precomputed scores",
                          self.score_col)


SETTINGS = PoolFilterSettings


def _uses_size(s: PoolFilterSettings) -> bool:
    return s.min_side > 0 or s.max_aspect is not None


class PoolFilterStage(Stage):
    name = "pool_filter"
    label = "pool metadata filter"
    outputs = ()

    @classmethod
    def input_columns(cls, settings: PoolFilterSettings) -> tuple:
        columns = (settings.width_col, settings.height_col) if _uses_size(settings) else ()
        columns += ("text",) if settings.entities else ()
        return columns + ((settings.score_col,) if settings.score_col else ())

    def setup(self) -> None:
        from pipeline.wordnet import read_entity_ids

        self.entity_ids = read_entity_ids(self.settings.entities) if self.settings.entities else None

    def check_columns_of(self, table: pa.Table) -> None:
        from pipeline.core.stage import check_columns

        check_columns(self.name, self.input_columns(self.settings), table.column_names, "the input")

    def process(self, table: pa.Table) -> pa.Table:
        s = self.settings
        self.check_columns_of(table)
        checks = []
        if _uses_size(s):
            width = pc.cast(table[s.width_col], pa.float64())
            height = pc.cast(table[s.height_col], pa.float64())
            smaller, larger = pc.min_element_wise(width, height), pc.max_element_wise(width, height)
            checks.append((pc.invert(_passes(pc.greater_equal(smaller, float(s.min_side)))), "small_image"))
            if s.max_aspect is not None:
                aspect = pc.divide(larger, smaller)   # float64 (inf at a zero side, NaN at two)
                checks.append((pc.invert(_passes(pc.less_equal(aspect, s.max_aspect))), "extreme_aspect"))
        if s.min_score is not None:
            checks.append((pc.invert(_passes(at_least(table[s.score_col], s.min_score))), "low_clip_score"))
        if self.entity_ids is not None:
            checks.append((pa.array([not names_entity(t, self.entity_ids) for t in table["text"].to_pylist()]),
                           "no_entity"))
        return with_reason(table, first_reason(checks, table.num_rows))


def names_entity(text: str | None, entity_ids: frozenset) -> bool:
    """DataComp's `does_contain_text_entity`: a word whose first synset's offset is listed."""
    from pipeline.wordnet import first_synset_offset

    return text is not None and any(first_synset_offset(word) in entity_ids for word in text.split())


def _passes(condition) -> pa.Array:
    """True where the comparison holds; missing values (and NaN comparisons) do not pass."""
    return pc.fill_null(condition, False)


def at_least(scores, threshold: float):
    """scores >= threshold, compared in the scores' own floating type (as numpy does)."""
    if not pa.types.is_floating(scores.type):
        scores = pc.cast(scores, pa.float64())
    return pc.greater_equal(scores, pa.scalar(threshold, pa.float64()).cast(scores.type))


# --- the exact top fraction: a radix select over the parts ------------------------------

def order_keys(scores) -> np.ndarray:
    """The finite-or-infinite (not NaN, not missing) scores as uint64 keys in the same order."""
    values = pc.cast(scores, pa.float64()).to_numpy(zero_copy_only=False)
    values = values[~np.isnan(values)] + 0.0   # -0.0 -> 0.0
    bits = values.view(np.uint64)
    return np.where(bits >> np.uint64(63), ~bits, bits | np.uint64(1 << 63))


def key_value(key: int) -> float:
    bits = key & ~(1 << 63) if key >> 63 else ~key & ((1 << 64) - 1)
    return float(np.array([bits], np.uint64).view(np.float64)[0])


@dataclass
class DigitHistogram:
    """Op of one radix pass: among a part's keys whose top `known_bits` equal `prefix`, the
    count, smallest and largest key per value of the next 16 bits (sparse); no rows out."""
    column: str
    known_bits: int
    prefix: int
    summarizes = True

    def __call__(self, table: pa.Table):
        keys = order_keys(table[self.column])
        if self.known_bits:
            keys = keys[(keys >> np.uint64(64 - self.known_bits)) == np.uint64(self.prefix)]
        digits = ((keys >> np.uint64(64 - self.known_bits - DIGIT_BITS)) & np.uint64(BINS - 1)).astype(np.int64)
        order = np.argsort(keys, kind="stable")
        keys, digits = keys[order], digits[order]
        found, first, counts = np.unique(digits, return_index=True, return_counts=True)
        extras = {"digits": found, "counts": counts, "low": keys[first], "high": keys[first + counts - 1],
                  "total": np.array([table.num_rows], np.int64)}
        return table.slice(0, 0), extras


def exact_rank_threshold(ctx: StepContext, inputs: list, column: str, fraction: float) -> tuple[float, int]:
    """The score at descending rank int(rows * fraction) over every input row, and rows."""
    readers = [ReadParts(group, columns=[column]) for group in group_by_rows(inputs, ctx.task_rows)]
    known_bits, prefix, rank, rows = 0, 0, None, 0
    while True:
        phase = f"rank{known_bits // DIGIT_BITS}"
        ctx.run_phase(phase, readers, DigitHistogram(column, known_bits, prefix), counted=False)
        counts = np.zeros(BINS, np.int64)
        low = np.full(BINS, np.iinfo(np.uint64).max, np.uint64)
        high = np.zeros(BINS, np.uint64)
        total = 0
        for extras in ctx.extras(phase):
            digits = extras["digits"]
            counts[digits] += extras["counts"]
            low[digits] = np.minimum(low[digits], extras["low"])
            high[digits] = np.maximum(high[digits], extras["high"])
            total += int(extras["total"][0])
        if rank is None:   # first pass: every row and every finite score
            rows, finite = total, int(counts.sum())
            n = int(rows * fraction)
            if n >= finite:
                return float("nan"), rows     # the rank falls among NaNs: DataComp keeps none
            rank = finite - 1 - n             # ascending rank among the scores
        below = np.cumsum(counts)
        digit = int(np.searchsorted(below, rank, side="right"))
        rank -= int(below[digit - 1]) if digit else 0
        prefix, known_bits = (prefix << DIGIT_BITS) | digit, known_bits + DIGIT_BITS
        if low[digit] == high[digit] or known_bits == 64:
            return key_value(int(low[digit])), rows


class PoolFilterStep(Step):
    """A map over the parts; with `top_fraction`, radix passes first find the exact threshold."""

    def __init__(self, stage_cls: type, settings: PoolFilterSettings):
        if settings.entities:   # before any work: a missing or malformed list is one line
            from pipeline.wordnet import data_folder, read_entity_ids

            read_entity_ids(settings.entities)
            data_folder()
        super().__init__(stage_cls, settings)

    def run(self, ctx: StepContext, inputs: list) -> list:
        s = self.settings
        if s.top_fraction is None:
            return super().run(ctx, inputs)
        threshold, rows = exact_rank_threshold(ctx, inputs, s.score_col, s.top_fraction)
        storage.write_json({"score_col": s.score_col, "top_fraction": s.top_fraction, "rows": rows,
                            "threshold": None if threshold != threshold else threshold}, ctx.path("threshold.json"))
        cut = dataclasses.replace(s, top_fraction=None, min_score=threshold)
        return ctx.run_grouped("cut", inputs, StageOp(PoolFilterStage, cut, ctx.seed))


def build_step(settings: PoolFilterSettings, run) -> Step:
    return PoolFilterStep(PoolFilterStage, settings)


STAGE = PoolFilterStage
