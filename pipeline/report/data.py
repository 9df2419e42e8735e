"""What the report reads from a run folder; each loader returns None
when the run has no such data, so its section is left out."""
from __future__ import annotations

import io
import math
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core import parts, storage
from pipeline.core.tasks import part_path

SCORE = "clip_score"


def read_json(path: str):
    try:
        return storage.read_json(path)
    except (OSError, ValueError):
        return None


def step_records(run_dir: str, name: str) -> list[tuple[str, dict]]:
    """(folder, stats.json record) of each step of a stage, in pipeline order; steps are
    found through summary.json (a step's index is its place there), never by listing."""
    summary = read_json(storage.join(run_dir, "summary.json")) or {}
    found = []
    for index, stage in enumerate(summary.get("stages") or []):
        if stage.get("name") == name:
            step_dir = storage.join(run_dir, "steps", f"{index:02d}_{name}")
            record = read_json(storage.join(step_dir, "stats.json"))
            if record:
                found.append((step_dir, record))
    return found


def phase_files(run_dir: str, name: str, kind: str, suffix: str = ".parquet",
                first_phase: bool = False) -> list[str]:
    """The `data`, `dropped` or `done` files of a stage's phases (only the first with
    `first_phase`), from the phase task counts its steps recorded."""
    paths = []
    for step_dir, record in step_records(run_dir, name):
        phases = record.get("phases") or []
        for phase in phases[:1] if first_phase else phases:
            phase_dir = storage.join(step_dir, phase["name"])
            paths.extend(part_path(phase_dir, kind, i, suffix) for i in range(phase["tasks"]))
    return paths


def read_columns(source, columns: list[str], filter=None) -> pa.Table | None:
    """The named columns (those present) of a committed folder or a file list; None if none."""
    files = storage.folder_files(source) if isinstance(source, str) else source
    if not files:
        return None
    tables = []
    for path in files:
        present = [c for c in columns if c in parts.read_schema(path).names]
        if present:
            table = parts.read_ref(path, present)
            tables.append(table.filter(filter) if filter is not None else table)
    return parts.concat(tables) if tables else None


def language_counts(run_dir: str, top: int = 15) -> list[tuple[str, int]] | None:
    """Kept rows per language, the most frequent first, the rest summed as `other`."""
    table = read_columns(storage.join(run_dir, "kept"), ["language"])
    if table is None or "language" not in table.column_names or table.num_rows == 0:
        return None
    counts = pc.value_counts(pc.fill_null(table["language"], "unknown")).to_pylist()
    ranked = sorted(((c["values"], c["counts"]) for c in counts), key=lambda lc: (-lc[1], lc[0]))
    rest = sum(n for _, n in ranked[top:])
    return ranked[:top] + ([("other", rest)] if rest else [])


@dataclass
class ClipScores:
    kept: pa.Array          # scores of kept rows
    dropped: pa.Array       # scores of scored rows that were not kept (where stored)
    threshold: float | None
    filter: str


def clip_scores(run_dir: str) -> ClipScores | None:
    kept = read_columns(storage.join(run_dir, "kept"), ["uid", SCORE])
    if kept is None or SCORE not in kept.column_names:
        return None
    steps = read_columns(phase_files(run_dir, "clip_score", "data", first_phase=True), ["uid", SCORE])
    dropped = pa.array([], pa.float32())
    if steps is not None and SCORE in steps.column_names and "uid" in kept.column_names:
        others = steps.filter(pc.invert(pc.is_in(steps["uid"], value_set=kept["uid"].combine_chunks())))
        unique = others.group_by("uid").aggregate([(SCORE, "max")])
        dropped = unique[f"{SCORE}_max"].combine_chunks()
    stored = dropped_scores(run_dir)
    if stored is not None:
        dropped = pa.concat_arrays([dropped.cast(pa.float32()), stored])
    threshold, mode = clip_threshold(run_dir)
    return ClipScores(finite(kept[SCORE].combine_chunks()), finite(dropped), threshold, mode)


def dropped_scores(run_dir: str) -> pa.Array | None:
    """Scores of rows the threshold dropped, kept by the step as per-part extras."""
    import numpy as np

    arrays = []
    for path in phase_files(run_dir, "clip_score", "done", ".npz"):
        try:
            extras = np.load(io.BytesIO(storage.read_bytes(path)))
        except FileNotFoundError:   # a task that wrote no extras
            continue
        with extras:
            if "dropped_scores" in extras.files:
                arrays.append(extras["dropped_scores"])
    return pa.array(np.concatenate(arrays), pa.float32()) if arrays else None


def finite(values: pa.Array) -> pa.Array:
    values = values.cast(pa.float64()).drop_null()
    return values.filter(pc.is_finite(values))


def clip_threshold(run_dir: str) -> tuple[float | None, str]:
    """The score cut: `threshold.json` (top_fraction), else config's `clip_score.threshold`."""
    section = (read_json(storage.join(run_dir, "config.json")) or {}).get("clip_score") or {}
    mode = section.get("filter", "threshold")
    for step, _ in reversed(step_records(run_dir, "clip_score")):
        written = read_json(storage.join(step, "threshold.json"))
        if written and written.get("threshold") is not None:
            return float(written["threshold"]), mode
    if mode == "threshold" and section.get("threshold") is not None:
        return float(section["threshold"]), mode
    return None, mode


def histogram_counts(values: pa.Array, edges: list[float]) -> list[int]:
    """Counts per bin `edges[i] <= v < edges[i+1]` (the last bin closed)."""
    bins = len(edges) - 1
    counts = [0] * bins
    if len(values) == 0:
        return counts
    width = (edges[-1] - edges[0]) / bins or 1.0
    index = pc.floor(pc.divide(pc.subtract(values, edges[0]), width)).cast(pa.int64())
    index = pc.max_element_wise(pc.min_element_wise(index, bins - 1), 0)
    for item in pc.value_counts(index).to_pylist():
        counts[item["values"]] += item["counts"]
    return counts


def bin_edges(arrays: list[pa.Array], marks: list[float], bins: int = 40) -> list[float]:
    """`bins` equal bins spanning every value and mark."""
    lows, highs = list(marks), list(marks)
    for values in arrays:
        if len(values):
            extent = pc.min_max(values).as_py()
            lows.append(extent["min"])
            highs.append(extent["max"])
    lo, hi = min(lows, default=0.0), max(highs, default=1.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    return [lo + (hi - lo) * i / bins for i in range(bins + 1)]


def entry_counts(run_dir: str, points: int = 300, language: str | None = None
                 ) -> dict[str, list[tuple[int, int]]] | None:
    """Rank vs count (descending, zeros left out) before and after balancing, thinned to
    about `points` log-spaced ranks per series; with `language`, that language's entries only."""
    paths = [storage.join(d, "entry_counts.parquet") for d, _ in step_records(run_dir, "metadata")]
    only, columns = (None, []) if language is None else (pc.field("language") == language, ["language"])
    table = read_columns(paths[-1:], ["count_before", "count_after", *columns], filter=only)
    if table is None or table.num_columns < 2 + len(columns):
        return None
    series = {}
    for name, column in (("before", "count_before"), ("after", "count_after")):
        counts = table[column].combine_chunks()
        counts = counts.filter(pc.fill_null(pc.greater(counts, 0), False))
        ranked = counts.take(pc.array_sort_indices(counts, order="descending"))
        ranks = log_ranks(len(ranked), points)
        series[name] = list(zip([r + 1 for r in ranks], ranked.take(pa.array(ranks, pa.int64())).to_pylist()))
    return series if any(series.values()) else None


def log_ranks(n: int, points: int) -> list[int]:
    """Up to about `points` indexes in 0..n-1, evenly spaced in log(rank), first and last kept."""
    if n <= points:
        return list(range(n))
    picked = {min(n - 1, int(round(math.exp(math.log(n) * i / (points - 1)))) - 1) for i in range(points)}
    return sorted(picked | {0, n - 1})
