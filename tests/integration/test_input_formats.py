"""Inputs of every kind through a whole run (run_pipeline, local engine): Common Crawl
archives one task each, parquet files whose columns disagree on type."""
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipeline.app import run_pipeline
from pipeline.config import settings_from_dict
from tests.unit.test_archive import EXPECTED_WARC, warc_records, write_archive


def test_archives_as_pipeline_input_one_task_each(tmp_path):
    """A folder of .warc.gz files is an input like any other: one archive per task, and the
    pairs go through the stages with their page_url/title/figcaption columns."""
    folder = tmp_path / "crawl"
    folder.mkdir()
    for i in range(3):
        write_archive(folder / f"CC-{i}.warc.gz", warc_records())
    config = {"input": {"path": [str(folder)]}, "output": str(tmp_path / "run"), "processes": 2,
              "dedup": {}, "caption_filter": {"min_chars": 1, "min_words": 1}}
    summary = run_pipeline(settings_from_dict(config, "t.yaml"), config["output"], log=lambda *_: None)
    ingest = summary["stages"][0]
    assert ingest["rows_in"] == 3 * len(EXPECTED_WARC)
    assert len(list((tmp_path / "run" / "steps" / "00_ingest" / "map" / "done").glob("*.json"))) == 3
    assert summary["stages"][1]["dropped"] == {"duplicate": 2 * len(EXPECTED_WARC)}
    kept = ds.dataset(str(tmp_path / "run" / "kept")).to_table().sort_by("url")
    assert kept["url"].to_pylist() == ["http://site.org/gz.jpg", "http://site.org/media/cat.jpg"]
    assert kept["figcaption"].to_pylist() == [None, "My cat"]
    assert summary["stages"][2]["dropped"] == {"empty_text": 1}   # the logo without alt text


def test_files_whose_columns_disagree_on_type_still_run(tmp_path):
    """One parquet has `score` as integers, another as text: the run goes through and the
    column comes out as text."""
    pq.write_table(pa.table({"url": ["http://h/1.jpg", "http://h/2.jpg"], "text": ["a b", "c d"],
                             "score": [1, 2]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"url": ["http://h/3.jpg", "http://h/1.jpg"], "text": ["e f", "a b"],
                             "score": ["high", "low"]}), tmp_path / "b.parquet")
    config = {"input": {"path": [str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")]},
              "output": str(tmp_path / "run"), "processes": 1, "dedup": {}}
    summary = run_pipeline(settings_from_dict(config, "t.yaml"), config["output"], log=lambda *_: None)
    assert summary["kept_rows"] == 3
    kept = ds.dataset(str(tmp_path / "run" / "kept")).to_table()
    assert sorted(kept["score"].to_pylist()) == ["1", "2", "high"]
