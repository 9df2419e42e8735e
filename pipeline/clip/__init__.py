"""CLIP scoring on top of open_clip: load a model (`model.py`), score image-text pairs
(`score.py`), pick global thresholds (`threshold.py`)."""
from pipeline.clip.model import LoadedClip, load_clip, resolve_device, resolve_precision
from pipeline.clip.score import ClipScorer, ScoreResult
from pipeline.clip.threshold import ScoreHistogram, top_fraction_threshold

__all__ = [
    "ClipScorer", "LoadedClip", "ScoreHistogram", "ScoreResult", "load_clip", "resolve_device",
    "resolve_precision", "top_fraction_threshold",
]
