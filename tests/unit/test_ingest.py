import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core.config import InputSettings
from pipeline.core.hashing import uid_of
from pipeline.core.tasks import split_by_reason
from pipeline.errors import UserError
from pipeline.stages.ingest import IngestStage, ReadSource, plan_input, valid_url
from pipeline.stages.sources import SourceSlice

GOOD = ["http://example.com/a.jpg", "https://x.org", "HTTPS://Host.example:8080/p?q=1#f",
        "http://[2001:db8::1]/x.png", "https://bücher.de/bild.jpg", " https://a.b/c.jpg "]
BAD = [None, "", "   ", "UNLIKELY", "ftp://h/a.jpg", "file:///etc/passwd", "data:image/png;base64,AA",
       "javascript:alert(1)", "mailto:a@b.c", "//cdn.example.com/x.jpg", "http://", "http:///x.jpg",
       "https://a b.com/x.jpg", "http://:80/x", "http://./x"]


def ingest(table):
    return IngestStage(None).process(table)


def test_url_validation():
    import pyarrow.compute as pc
    urls = pa.chunked_array([pa.array(GOOD + BAD, pa.string())])
    ok = valid_url(pc.utf8_trim_whitespace(urls)).to_pylist()
    assert ok == [True] * len(GOOD) + [False] * len(BAD)


def test_invalid_urls_are_dropped_with_reason_and_null_text_is_fine():
    table = pa.table({"url": GOOD + BAD, "text": ["a caption"] * (len(GOOD) + len(BAD) - 1) + [None]})
    out = ingest(table)
    kept, dropped = split_by_reason(out, "ingest")
    assert kept.num_rows == len(GOOD)
    assert dropped["reason"].to_pylist() == ["invalid_url"] * len(BAD)
    assert kept["uid"].to_pylist()[0] == uid_of("http://example.com/a.jpg", "a caption")
    assert kept["url"].to_pylist()[-1] == "https://a.b/c.jpg"  # whitespace trimmed


def test_uid_is_stable_and_distinguishes_url_and_text():
    # pinned: 128-bit BLAKE2b of "url\x00text"; a change here changes every released uid
    assert uid_of("http://a/x", "t") == "472d88645e24933483ed98e35c60d71a"
    assert uid_of("http://a/x", None) == "19052c98c3f977a3b9935996f6946c48" == uid_of("http://a/x", "")
    assert uid_of("http://a/x", "t") != uid_of("http://a/x", "u")
    assert uid_of("http://a/x", "t") != uid_of("http://a/xt", None), "the url/text boundary counts"
    assert uid_of("http://a/x", "t") != uid_of("t", "http://a/x")


def test_reads_every_format_and_carries_other_columns(tmp_path):
    rows = [{"URL": f"http://h/{i}.jpg", "TEXT": f"caption {i}", "score": str(i)} for i in range(5)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    (tmp_path / "b.csv").write_text("URL,TEXT,score\n"
                                    + "".join(f"{r['URL']},{r['TEXT']},{r['score']}\n" for r in rows))
    (tmp_path / "c.tsv").write_text("URL\tTEXT\tscore\n"
                                    + "".join(f"{r['URL']}\t{r['TEXT']}\t{r['score']}\n" for r in rows))
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = InputSettings(path=[str(tmp_path)], url_col="URL", text_col="TEXT")
    slices = plan_input(settings)
    assert [s.format for s in slices] == ["parquet", "csv", "tsv", "jsonl"]
    for i, piece in enumerate(slices):
        table = ReadSource(piece, "URL", "TEXT", i)()
        assert table.column_names[:3] == ["url", "text", "score"]
        assert table["text"].to_pylist() == [r["TEXT"] for r in rows]
        assert table["_pos"].to_pylist()[1] == (i << 32) + 1


def test_malformed_rows_are_dropped_not_lost(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"url": "http://h/1.jpg", "text": "ok caption"}\n{oops\n[1,2]\n')
    (tmp_path / "bad.csv").write_text('url,text\nhttp://h/1.jpg,fine caption\nonly-one-field\n')
    for name in ("bad.jsonl", "bad.csv"):
        fmt = name.split(".")[1]
        table = ingest(ReadSource(SourceSlice(str(tmp_path / name), fmt), "url", "text", 0)())
        kept, dropped = split_by_reason(table, "ingest")
        assert kept.num_rows == 1
        assert set(dropped["reason"].to_pylist()) == {"malformed_row"}
        assert len(set(table["uid"].to_pylist())) == table.num_rows


@pytest.mark.parametrize("setup, message", [
    (lambda p: None, r"missing\.parquet: no such file or folder"),
    (lambda p: (p / "missing.parquet").write_bytes(b"not parquet at all"),
     r"missing\.parquet: not a readable parquet file"),
    (lambda p: pq.write_table(pa.table({"link": ["x"], "text": ["y"]}), p / "missing.parquet"),
     r"missing\.parquet: missing column 'url' \(columns: link, text\)"),
])
def test_bad_input_files_give_one_clear_error(tmp_path, setup, message):
    setup(tmp_path)
    with pytest.raises(UserError, match=message):
        plan_input(InputSettings(path=[str(tmp_path / "missing.parquet")]))


def test_parquet_is_cut_into_parts_by_row_groups(tmp_path):
    pq.write_table(pa.table({"url": ["http://h/x"] * 1000, "text": ["t"] * 1000}), tmp_path / "a.parquet",
                   row_group_size=100)
    slices = plan_input(InputSettings(path=[str(tmp_path / "a.parquet")], part_rows=250))
    assert [len(s.row_groups) for s in slices] == [3, 3, 3, 1]
