"""schemas/columns.py is generated from the stages' declarations and kept equal to them."""
from pathlib import Path

from schemas.generate import declared, render


def test_the_schema_file_equals_the_declarations():
    path = Path(__file__).resolve().parents[2] / "schemas" / "columns.py"
    assert path.read_text() == render(), "run `python -m schemas.generate` after changing a stage's columns"


def test_every_stage_that_adds_columns_is_in_it():
    found = declared()
    assert {"language", "metadata", "download", "image_dedup", "clip_score", "shard", "face_blur",
            "crawl"} <= set(found)
    assert ("clip_score", ) == tuple(n for n, _ in found["clip_score"][:1])
