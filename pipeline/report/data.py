"""What the report reads from a run folder; each loader returns None
when the run has no such data, so its section is left out."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

SCORE = "clip_score"


def read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def step_dirs(run_dir: Path, name: str) -> list[Path]:
    """`steps/NN_<name>` folders of a stage, in pipeline order."""
    return sorted(p for p in (run_dir / "steps").glob(f"*_{name}") if p.is_dir())


def read_columns(source, columns: list[str], filter=None) -> pa.Table | None:
    """The named columns (those present) of a parquet folder or file list; None if none."""
    if isinstance(source, Path) and not source.is_dir():
        return None
    if isinstance(source, list) and not source:
        return None
    dataset = ds.dataset(source if isinstance(source, list) else str(source), format="parquet")
    present = [c for c in columns if c in dataset.schema.names]
    if not present:
        return None
    return dataset.to_table(columns=present, filter=filter)


def language_counts(run_dir: Path, top: int = 15) -> list[tuple[str, int]] | None:
    """Kept rows per language, the most frequent first, the rest summed as `other`."""
    table = read_columns(run_dir / "kept", ["language"])
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


def clip_scores(run_dir: Path) -> ClipScores | None:
    kept = read_columns(run_dir / "kept", ["uid", SCORE])
    if kept is None or SCORE not in kept.column_names:
        return None
    scored = [str(p) for d in step_dirs(run_dir, "clip_score") for p in sorted(d.glob("*/data/*.parquet"))]
    steps = read_columns(scored, ["uid", SCORE])
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


def dropped_scores(run_dir: Path) -> pa.Array | None:
    """Scores of rows the threshold dropped, kept by the step as per-part extras."""
    import numpy as np

    arrays = []
    for step in step_dirs(run_dir, "clip_score"):
        for path in sorted(step.glob("*/done/*.npz")):
            with np.load(path) as extras:
                if "dropped_scores" in extras.files:
                    arrays.append(extras["dropped_scores"])
    return pa.array(np.concatenate(arrays), pa.float32()) if arrays else None


def finite(values: pa.Array) -> pa.Array:
    values = values.cast(pa.float64()).drop_null()
    return values.filter(pc.is_finite(values))


def clip_threshold(run_dir: Path) -> tuple[float | None, str]:
    """The score cut: `threshold.json` (top_fraction), else config's `clip_score.threshold`."""
    section = (read_json(run_dir / "config.json") or {}).get("clip_score") or {}
    mode = section.get("filter", "threshold")
    for step in reversed(step_dirs(run_dir, "clip_score")):
        written = read_json(step / "threshold.json")
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


def entry_counts(run_dir: Path, points: int = 300) -> dict[str, list[tuple[int, int]]] | None:
    """Rank vs count (descending, zeros left out) before and after balancing, thinned to
    about `points` log-spaced ranks per series."""
    paths = [d / "entry_counts.parquet" for d in step_dirs(run_dir, "metadata")]
    paths = [str(p) for p in paths if p.exists()]
    table = read_columns(paths[-1:], ["count_before", "count_after"])
    if table is None or table.num_columns < 2:
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
