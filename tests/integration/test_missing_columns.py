"""A stage whose input column no earlier step gives is one clear error, raised by run_pipeline
before any step runs."""
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.app import run_pipeline
from pipeline.config import settings_from_dict
from pipeline.errors import UserError


def test_missing_declared_input_is_one_clear_error(tmp_path):
    pq.write_table(pa.table({"url": ["http://a.example/x.jpg"], "text": ["a red circle"]}),
                   tmp_path / "in.parquet")
    settings = settings_from_dict({"input": {"path": [str(tmp_path / "in.parquet")]}, "processes": 1,
                                   "shard": {}}, "c.yaml")
    with pytest.raises(UserError, match=r"^shard: the rows have no 'jpg' column \(add a download "
                                        r"section before shard\)$"):
        run_pipeline(settings, tmp_path / "run", log=lambda *_: None)


def test_without_embeddings_one_clear_error(tmp_path):
    pq.write_table(pa.table({"url": ["http://a.example/x.jpg"], "text": ["a red circle"]}),
                   tmp_path / "in.parquet")
    settings = settings_from_dict({"input": {"path": [str(tmp_path / "in.parquet")]}, "processes": 1,
                                   "semantic_dedup": {}}, "c.yaml")
    with pytest.raises(UserError, match=r"^semantic_dedup: the rows have no 'image_embedding' column "
                                        r"\(add a clip_score section before semantic_dedup\)$"):
        run_pipeline(settings, tmp_path / "run", log=lambda *_: None)
