"""Common Crawl extraction from small WARC / WAT files written here, byte by byte."""
import gzip
import json

import pyarrow as pa

from pipeline.crawl.archive import (ARCHIVE_SCHEMA, iter_archive_pairs, iter_warc_pairs,
                                    iter_wat_pairs)


def warc_record(warc_type: str, uri: str, content_type: str, block: bytes, n: int = 1) -> bytes:
    header = (f"WARC/1.0\r\nWARC-Type: {warc_type}\r\nWARC-Target-URI: {uri}\r\n"
              f"WARC-Date: 2024-05-18T01:58:10Z\r\n"
              f"WARC-Record-ID: <urn:uuid:00000000-0000-0000-0000-{n:012d}>\r\n"
              f"Content-Type: {content_type}\r\nContent-Length: {len(block)}\r\n\r\n")
    return header.encode() + block + b"\r\n\r\n"


def http_response(body: bytes, content_type="text/html; charset=utf-8", status="200 OK",
                  extra: str = "") -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n{extra}" \
           f"Content-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def write_archive(path, records: list[bytes], compress: bool = True):
    with open(path, "wb") as out:
        for record in records:
            out.write(gzip.compress(record) if compress else record)
    return path


def response(uri: str, payload: bytes, n: int) -> bytes:
    return warc_record("response", uri, "application/http; msgtype=response", payload, n)


PAGE = (b'<html><head><base href="/media/"></head><body>'
        b'<figure><img src="cat.jpg" alt=" a cat " title="Cat"><figcaption>My cat</figcaption>'
        b'</figure><img src="/logo.png"><img src="data:image/png;base64,AA" alt="x"></body></html>')


def warc_records() -> list[bytes]:
    noindex = b'<meta name="robots" content="noindex"><img src="a.jpg" alt="hidden">'
    return [
        warc_record("warcinfo", "", "application/warc-fields", b"software: test\r\n", 1),
        warc_record("request", "http://site.org/a/page.html", "application/http; msgtype=request",
                    b"GET /a/page.html HTTP/1.1\r\nHost: site.org\r\n\r\n", 2),
        response("http://site.org/a/page.html", http_response(PAGE), 3),
        response("http://site.org/404.html", http_response(b'<img src="x.jpg" alt="x">',
                                                           status="404 Not Found"), 4),
        response("http://site.org/img.jpg", http_response(b"\xff\xd8", "image/jpeg"), 5),
        response("http://site.org/noindex.html", http_response(noindex), 6),
        response("http://site.org/noai.html", http_response(b'<img src="b.jpg" alt="b">',
                                                            extra="X-Robots-Tag: noai\r\n"), 7),
        response("<http://site.org/gz.html>", http_response(
            gzip.compress(b'<img src="gz.jpg" alt="zipped">'),
            extra="Content-Encoding: gzip\r\n"), 8),
    ]


EXPECTED_WARC = [
    {"url": "http://site.org/media/cat.jpg", "text": "a cat", "title": "Cat",
     "figcaption": "My cat", "page_url": "http://site.org/a/page.html"},
    {"url": "http://site.org/logo.png", "text": None, "title": None, "figcaption": None,
     "page_url": "http://site.org/a/page.html"},
    {"url": "http://site.org/gz.jpg", "text": "zipped", "title": None, "figcaption": None,
     "page_url": "http://site.org/gz.html"},
]


def rows(batches) -> list[dict]:
    batches = list(batches)
    assert all(batch.schema == ARCHIVE_SCHEMA for batch in batches)
    return pa.Table.from_batches(batches, schema=ARCHIVE_SCHEMA).to_pylist()


def test_warc_gz_pairs(tmp_path):
    path = write_archive(tmp_path / "x.warc.gz", warc_records())
    assert rows(iter_warc_pairs(path)) == EXPECTED_WARC
    assert rows(iter_archive_pairs(str(path))) == EXPECTED_WARC


def test_uncompressed_warc_and_batch_size(tmp_path):
    path = write_archive(tmp_path / "x.warc", warc_records(), compress=False)
    batches = list(iter_warc_pairs(path, batch_size=2))
    assert [batch.num_rows for batch in batches] == [2, 1]
    assert rows(batches) == EXPECTED_WARC


def wat_envelope(uri: str, links: list, head: dict | None = None, status="200") -> dict:
    return {"Envelope": {
        "WARC-Header-Metadata": {"WARC-Type": "response", "WARC-Target-URI": uri},
        "Payload-Metadata": {"HTTP-Response-Metadata": {
            "Response-Message": {"Status": status, "Version": "HTTP/1.1"},
            "Headers": {"Content-Type": "text/html"},
            "HTML-Metadata": {"Head": head or {"Title": "t"}, "Links": links}}}}}


def wat_record(envelope: dict, n: int) -> bytes:
    return warc_record("metadata", envelope["Envelope"]["WARC-Header-Metadata"]["WARC-Target-URI"],
                       "application/json", json.dumps(envelope).encode(), n)


def test_wat_gz_pairs(tmp_path):
    links = [{"path": "A@/href", "url": "/other.html", "text": "x"},
             {"path": "IMG@/src", "url": "dog.jpg", "alt": " a dog ", "title": "Dog"},
             {"path": "IMG@/src", "url": "//cdn.org/x.png"},
             {"path": "IMG@/src", "url": "data:image/png;base64,AA", "alt": "inline"}]
    records = [
        warc_record("warcinfo", "", "application/warc-fields", b"software: test\r\n", 1),
        wat_record(wat_envelope("http://site.org/a/p.html", links), 2),
        wat_record(wat_envelope("http://site.org/b/q.html",
                                [{"path": "IMG@/src", "url": "cat.jpg", "alt": "cat"}],
                                head={"Base": "https://img.site.org/c/"}), 3),
        wat_record(wat_envelope("http://site.org/noai.html",
                                [{"path": "IMG@/src", "url": "n.jpg", "alt": "n"}],
                                head={"Metas": [{"name": "robots", "content": "noai"}]}), 4),
        wat_record(wat_envelope("http://site.org/gone.html",
                                [{"path": "IMG@/src", "url": "g.jpg", "alt": "g"}],
                                status="404"), 5),
        warc_record("metadata", "http://site.org/bad", "application/json", b"{not json", 6),
    ]
    path = write_archive(tmp_path / "x.wat.gz", records)
    expected = [
        {"url": "http://site.org/a/dog.jpg", "text": "a dog", "title": "Dog", "figcaption": None,
         "page_url": "http://site.org/a/p.html"},
        {"url": "http://cdn.org/x.png", "text": None, "title": None, "figcaption": None,
         "page_url": "http://site.org/a/p.html"},
        {"url": "https://img.site.org/c/cat.jpg", "text": "cat", "title": None,
         "figcaption": None, "page_url": "http://site.org/b/q.html"},
    ]
    assert rows(iter_wat_pairs(path)) == expected
    assert rows(iter_archive_pairs(path, batch_size=1)) == expected


def test_archive_without_pairs_yields_no_batches(tmp_path):
    path = write_archive(tmp_path / "empty.warc.gz",
                         [warc_record("warcinfo", "", "application/warc-fields", b"a: b\r\n", 1)])
    assert list(iter_warc_pairs(path)) == []


def test_archives_as_pipeline_input_one_task_each(tmp_path):
    """A folder of .warc.gz files is an input like any other: one archive per task, and the
    pairs go through the stages with their page_url/title/figcaption columns."""
    import pyarrow.dataset as ds

    from pipeline.config import settings_from_dict
    from pipeline.app import run_pipeline
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
