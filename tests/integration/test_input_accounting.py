"""Every input file is accounted for in summary.json; one that yields nothing is a warning on
the console and in the report, and an error with `input.strict`."""
import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from pipeline.app import run_pipeline
from pipeline.config import settings_from_dict
from tests.unit.test_archive import http_response, response, warc_record, write_archive


def inputs(folder):
    """A parquet list of 40 pairs, an archive with one page of pairs, and an archive whose
    only page is an image (it yields nothing)."""
    folder.mkdir()
    pq.write_table(pa.table({"url": [f"http://a.org/{i}.jpg" for i in range(40)],
                             "text": [f"a photo number {i}" for i in range(40)]}), folder / "list.parquet")
    page = b'<html><body><img src="/cat.jpg" alt="a cat on a mat"><img src="/dog.jpg" alt="a dog"></body></html>'
    write_archive(folder / "pages.warc.gz", [response("http://site.org/", http_response(page), 1)])
    write_archive(folder / "nothing.warc.gz",
                  [warc_record("warcinfo", "", "application/warc-fields", b"software: test\r\n", 1),
                   response("http://site.org/x.png", http_response(b"\x89PNG....", "image/png"), 2)])
    return folder


def config(folder, output, **input_options) -> dict:
    return {"input": {"path": [str(folder)], **input_options}, "output": str(output), "processes": 1,
            "dedup": {}}


def test_each_input_file_is_counted_and_an_empty_one_warns(tmp_path):
    folder = inputs(tmp_path / "in")
    lines = []
    summary = run_pipeline(settings_from_dict(config(folder, tmp_path / "run"), "t.yaml"),
                           str(tmp_path / "run"), log=lines.append)
    sources = {s["path"].rsplit("/", 1)[1]: s for s in summary["sources"]}
    assert sorted(sources) == ["list.parquet", "nothing.warc.gz", "pages.warc.gz"]
    assert sources["list.parquet"]["rows"] == 40 and sources["list.parquet"]["format"] == "parquet"
    assert sources["pages.warc.gz"]["rows"] == 2 and sources["pages.warc.gz"]["format"] == "warc"
    assert sources["nothing.warc.gz"]["rows"] == 0
    assert sources["pages.warc.gz"]["html_pages"] == 1 and sources["pages.warc.gz"]["pairs"] == 2
    assert sources["nothing.warc.gz"]["records"] == 2 and sources["nothing.warc.gz"]["skipped_not_html"] == 1
    assert sum(s["rows"] for s in summary["sources"]) == summary["input_rows"] == 42
    warned = [line for line in lines if line.startswith("warning:")]
    assert len(warned) == 1 and "nothing.warc.gz: yielded no rows" in warned[0]
    assert "skipped not html 1" in warned[0], "the warning says what the file held"
    assert len(summary["warnings"]) == 1 and "nothing.warc.gz" in summary["warnings"][0]
    report = (tmp_path / "run" / "report.html").read_text()
    assert 'id="warnings"' in report and "nothing.warc.gz: yielded no rows" in report
    assert 'id="sources"' in report and "list.parquet" in report
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk["sources"] == summary["sources"]


def test_strict_input_makes_an_empty_file_an_error(tmp_path):
    folder = inputs(tmp_path / "in")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config(folder, tmp_path / "run", strict=True)))
    result = subprocess.run([sys.executable, "-m", "pipeline", "run", str(tmp_path / "c.yaml")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("curate: error")]
    assert len(errors) == 1 and "nothing.warc.gz: yielded no rows" in errors[0], result.stderr[-2000:]
    assert "input.strict" in errors[0] and "Traceback" not in result.stderr
