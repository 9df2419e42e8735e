"""CLIP scoring on top of open_clip: load a model (`model.py`), score image-text pairs
(`score.py`), pick global thresholds (`threshold.py`). Import the submodules (torch loads
with `model` and `score` only)."""
