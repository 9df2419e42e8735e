"""Common Crawl extraction from small WARC / WAT files written here, byte by byte."""
import gzip
import json
import zlib

import pyarrow as pa
import pytest

from pipeline.crawl.archive import (
    ARCHIVE_SCHEMA,
    dechunked,
    decoded_payload,
    iter_archive_pairs,
    iter_warc_pairs,
    iter_wat_pairs,
    sniffs_as_html,
)
from pipeline.errors import UserError


def warc_record(warc_type: str, uri: str, content_type: str, block: bytes, n: int = 1,
                version: str = "WARC/1.0", eol: str = "\r\n") -> bytes:
    header = (f"{version}\r\nWARC-Type: {warc_type}\r\nWARC-Target-URI: {uri}\r\n"
              f"WARC-Date: 2024-05-18T01:58:10Z\r\n"
              f"WARC-Record-ID: <urn:uuid:00000000-0000-0000-0000-{n:012d}>\r\n"
              f"Content-Type: {content_type}\r\nContent-Length: {len(block)}\r\n\r\n")
    return header.replace("\r\n", eol).encode() + block + b"\r\n\r\n"


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


# --- real archives' quirks, and what each file held (counts) ---------------------------------


def img_page(name: str, alt: str) -> bytes:
    return f'<html><body><p>x</p><img src="{name}.jpg" alt="{alt}"></body></html>'.encode()


def pair(page: str, name: str, alt: str) -> tuple[str, str, str]:
    return f"http://site.org/{name}.jpg", alt, f"http://site.org/{page}"


def found(batches) -> list[tuple]:
    return [(r["url"], r["text"], r["page_url"]) for r in rows(batches)]


def raw_http(head: str, body: bytes) -> bytes:
    return head.encode("latin-1") + body


def test_counts_of_a_well_formed_warc(tmp_path):
    counts = {}
    path = write_archive(tmp_path / "x.warc.gz", warc_records())
    assert rows(iter_warc_pairs(path, counts=counts)) == EXPECTED_WARC
    assert counts == {"records": 8, "responses": 6, "html_pages": 4, "pairs": 3,
                      "robots_excluded": 2, "skipped_http_status": 1, "skipped_not_html": 1}
    again = {}
    assert rows(iter_archive_pairs(path, 2, again)) == EXPECTED_WARC
    assert again == counts


@pytest.mark.parametrize("compress", [True, False])
def test_lf_only_http_headers(tmp_path, compress):
    """ClueWeb09-era records: the HTTP header block ends its lines with a bare LF (fastwarc
    reads such a block as empty headers and an empty body); a quoted charset."""
    lf = raw_http("HTTP/1.0 200 OK\nContent-Type: text/html; charset=\"ISO-8859-1\"\n"
                  "Server: Apache\n folded continuation\nX-Robots-Tag: noarchive\n\n",
                  '<img src="/caf.jpg" alt="caf\xe9">'.encode("latin-1"))
    mixed = raw_http("HTTP/1.1 200 OK\r\nContent-Type: text/html\nNoColonLine\n\r\n",
                     img_page("m", "mixed"))
    path = write_archive(tmp_path / ("x.warc.gz" if compress else "x.warc"),
                         [response("http://site.org/lf.html", lf, 1),
                          response("http://site.org/mixed.html", mixed, 2)], compress)
    counts = {}
    assert found(iter_warc_pairs(path, counts=counts)) == [
        ("http://site.org/caf.jpg", "café", "http://site.org/lf.html"),
        pair("mixed.html", "m", "mixed")]
    assert counts["html_pages"] == 2 and counts["pairs"] == 2


@pytest.mark.parametrize("version,eol", [("WARC/0.18", "\r\n"), ("WARC/0.18", "\n"),
                                         ("WARC/1.0", "\n"), ("WARC/1.1", "\r\n")])
def test_warc_versions(tmp_path, version, eol):
    records = [warc_record("warcinfo", "", "application/warc-fields", b"a: b\r\n", 1, version, eol),
               warc_record("response", "http://site.org/v.html",
                           "application/http; msgtype=response",
                           http_response(img_page("v", "versioned")), 2, version, eol)]
    for compress in (True, False):
        path = write_archive(tmp_path / f"v{compress}.warc.gz", records, compress)
        assert found(iter_warc_pairs(path)) == [pair("v.html", "v", "versioned")]


def test_content_type_missing_or_wrong_is_sniffed_as_browsers_do(tmp_path):
    """No Content-Type, application/octet-stream, unknown/unknown: sniffed (WHATWG HTML
    patterns); text/plain, image/*, or nosniff: taken as given."""
    def untyped(body: bytes, extra: str = "") -> bytes:
        return raw_http(f"HTTP/1.1 200 OK\r\n{extra}Content-Length: {len(body)}\r\n\r\n", body)
    jpeg = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00<html><img src='no.jpg' alt='no'>"
    records = [
        response("http://site.org/a.html", untyped(b" \r\n\t<!DOCTYPE html><title>t</title>"
                                                   + img_page("a", "untyped")), 1),
        response("http://site.org/b.html", untyped(jpeg), 2),
        response("http://site.org/c.html", http_response(b"<HTML>" + img_page("c", "octet"),
                                                         "application/octet-stream"), 3),
        response("http://site.org/d.html", http_response(b"<p>" + img_page("d", "unknown"),
                                                         "unknown/unknown"), 4),
        response("http://site.org/e.html", http_response(img_page("e", "plain"),
                                                         "text/plain; charset=utf-8"), 5),
        response("http://site.org/f.html", untyped(img_page("f", "nosniff"),
                                                   "X-Content-Type-Options: nosniff\r\n"), 6),
        response("http://site.org/g.html", untyped(b"Hello <img src='g.jpg' alt='text'>"), 7),
        response("http://site.org/h.html", http_response(
            gzip.compress(b"<!-- c -->" + img_page("h", "zipped untyped")), "",
            extra="Content-Encoding: gzip\r\n"), 8),
    ]
    counts = {}
    path = write_archive(tmp_path / "x.warc.gz", records)
    assert found(iter_warc_pairs(path, counts=counts)) == [
        pair("a.html", "a", "untyped"), pair("c.html", "c", "octet"),
        pair("d.html", "d", "unknown"), pair("h.html", "h", "zipped untyped")]
    assert counts["html_pages"] == 4 and counts["skipped_not_html"] == 4


@pytest.mark.parametrize("body,html", [
    (b"<html>", True), (b"\n\t <HtMl lang=en>", True), (b"<!doctype html>", True),
    (b"<!--x-->", False), (b"<!-- x -->", True), (b"<b>", True), (b"<br>", True),
    (b"<body>", True), (b"<bx>", False), (b"<a href=x>", True), (b"<h1>", True),
    (b"<h2>", False), (b"<?xml version='1.0'?><html>", False), (b"\xef\xbb\xbf<html>", False),
    (b"<html", False), (b"", False), (b"GIF89a<html>", False)])
def test_sniffs_as_html_follows_the_whatwg_patterns(body, html):
    assert sniffs_as_html(body) is html


def test_content_encoding_labels(tmp_path):
    """A gzip label on a body the archiver already decoded; real gzip, zlib and raw deflate;
    a cut gzip body read as far as it goes; an unreadable one skipped and counted."""
    page = img_page("z", "deflated")
    raw_deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    raw = raw_deflate.compress(page) + raw_deflate.flush()
    def encoded(body: bytes, coding: str) -> bytes:
        return http_response(body, extra=f"Content-Encoding: {coding}\r\n")
    records = [
        response("http://site.org/1.html", encoded(img_page("p", "plain"), "gzip"), 1),
        response("http://site.org/2.html", encoded(b"x-files " + img_page("x", "starts x"),
                                                   "gzip"), 2),
        response("http://site.org/3.html", encoded(zlib.compress(page), "deflate"), 3),
        response("http://site.org/4.html", encoded(raw, "deflate"), 4),
        response("http://site.org/5.html", encoded(gzip.compress(img_page("cut", "cut") + b"".join(
            b"<p>%d</p>" % i for i in range(3000)))[:2000], "gzip"), 5),
        response("http://site.org/6.html", encoded(b"\x1f\x8b\x08\x00garbage" * 4, "gzip"), 6),
    ]
    counts = {}
    path = write_archive(tmp_path / "x.warc.gz", records)
    assert found(iter_warc_pairs(path, counts=counts)) == [
        pair("1.html", "p", "plain"), pair("2.html", "x", "starts x"),
        pair("3.html", "z", "deflated"), pair("4.html", "z", "deflated"),
        pair("5.html", "cut", "cut")]
    assert counts["skipped_undecodable"] == 1 and counts["html_pages"] == 5
    assert decoded_payload(b"<p>", "br") == b"<p>"


def test_chunked_body_stored_chunked(tmp_path):
    page = img_page("k", "chunked")
    chunked = b"10\r\n" + page[:16] + b"\r\n" + f"{len(page) - 16:x};ext=1".encode() + b"\r\n" \
        + page[16:] + b"\r\n0\r\n\r\n"
    assert dechunked(chunked) == page and dechunked(page) == page
    records = [response("http://site.org/k.html",
                        http_response(chunked, extra="Transfer-Encoding: chunked\r\n"), 1),
               response("http://site.org/u.html",   # label kept, body stored de-chunked
                        http_response(img_page("u", "unchunked"),
                                      extra="Transfer-Encoding: chunked\r\n"), 2)]
    path = write_archive(tmp_path / "x.warc.gz", records)
    assert found(iter_warc_pairs(path)) == [pair("k.html", "k", "chunked"),
                                            pair("u.html", "u", "unchunked")]


def test_http_header_block_over_32_kib(tmp_path):
    """fastwarc's own HTTP parsing stops the whole file at a header over 32 KiB."""
    big = raw_http("HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nSet-Cookie: "
                   + "a" * 100_000 + "\r\n\r\n", img_page("big", "big"))
    path = write_archive(tmp_path / "x.warc.gz",
                         [response("http://site.org/big.html", big, 1),
                          response("http://site.org/n.html", http_response(img_page("n", "n")), 2)])
    assert found(iter_warc_pairs(path)) == [pair("big.html", "big", "big"),
                                            pair("n.html", "n", "n")]


def cut_records() -> tuple[list[bytes], list[tuple]]:
    last = img_page("last", "first of the cut page") + b"<p>" + b"filler " * 2000 \
        + img_page("lost", "lost")
    records = [warc_record("warcinfo", "", "application/warc-fields", b"a: b\r\n", 1),
               response("http://site.org/1.html", http_response(img_page("one", "one")), 2),
               response("http://site.org/2.html", http_response(img_page("two", "two")), 3),
               response("http://site.org/3.html", http_response(last), 4)]
    return records, [pair("1.html", "one", "one"), pair("2.html", "two", "two")]


def test_gz_file_cut_in_its_last_record(tmp_path):
    records, before = cut_records()
    members = [gzip.compress(record) for record in records]
    whole = b"".join(members)
    cut_in_body = tmp_path / "body.warc.gz"
    cut_in_body.write_bytes(whole[:len(whole) - 40])
    counts = {}
    assert found(iter_warc_pairs(cut_in_body, counts=counts)) == before + [
        pair("3.html", "last", "first of the cut page")]
    assert counts == {"records": 4, "responses": 3, "html_pages": 3, "pairs": 3, "truncated": 1}
    cut_in_header = tmp_path / "head.warc.gz"
    record = gzip.compress(records[3][:records[3].index(b"HTTP/1.1") + 30])
    cut_in_header.write_bytes(b"".join(members[:3]) + record[:len(record) - 6])
    counts = {}
    assert found(iter_warc_pairs(cut_in_header, counts=counts)) == before
    assert counts["truncated"] == 1 and counts["skipped_truncated"] == 1


@pytest.mark.parametrize("keep", [-400, 10, 60, 200])
def test_plain_warc_cut_mid_record(tmp_path, keep):
    """Cut in the body (read as far as it goes), in the WARC header before WARC-Type (not
    known to be a response), after it, in the HTTP header (skipped as truncated)."""
    records, before = cut_records()
    start = sum(len(record) for record in records[:3])
    path = tmp_path / "x.warc"
    path.write_bytes(b"".join(records)[:start + keep] if keep > 0 else b"".join(records)[:keep])
    counts = {}
    pairs = found(iter_warc_pairs(path, counts=counts))
    assert pairs[:2] == before and counts["truncated"] == 1 and counts["records"] == 4
    if keep < 0:
        assert pairs[2:] == [pair("3.html", "last", "first of the cut page")]
        assert counts["html_pages"] == 3
    else:
        assert pairs[2:] == [] and counts["html_pages"] == 2
        assert counts.get("skipped_truncated", 0) == (keep > 10)
        assert counts["responses"] == 2 + (keep > 10)


def test_damaged_gzip_member_keeps_what_came_before(tmp_path):
    records, before = cut_records()
    members = [gzip.compress(record) for record in records]
    damaged = members[3][:30] + bytes(b ^ 0x55 for b in members[3][30:])
    path = tmp_path / "x.warc.gz"
    path.write_bytes(b"".join(members[:3]) + damaged + gzip.compress(records[1]))
    counts = {}
    assert found(iter_warc_pairs(path, counts=counts)) == before
    assert counts["read_errors"] == 1


def test_wat_counts_and_cut_wat(tmp_path):
    links = [{"path": "IMG@/src", "url": "w.jpg", "alt": "w"}]
    records = [warc_record("warcinfo", "", "application/warc-fields", b"a: b\r\n", 1),
               wat_record(wat_envelope("http://site.org/a.html", links), 2),
               wat_record(wat_envelope("http://site.org/n.html", links,
                                       head={"Metas": [{"name": "robots", "content": "noai"}]}), 3),
               wat_record(wat_envelope("http://site.org/x.html", links, status="301"), 4),
               warc_record("metadata", "http://site.org/r", "application/json",
                           json.dumps({"Envelope": {"Payload-Metadata": {
                               "HTTP-Request-Metadata": {}}}}).encode(), 5),
               warc_record("metadata", "http://site.org/bad", "application/json", b"{no", 6),
               wat_record(wat_envelope("http://site.org/c.html", links), 7)]
    data = b"".join(gzip.compress(record) for record in records)
    path = tmp_path / "x.wat.gz"
    path.write_bytes(data[:-30])
    counts = {}
    assert found(iter_wat_pairs(path, counts=counts)) == [
        ("http://site.org/w.jpg", "w", "http://site.org/a.html")]
    assert counts == {"records": 7, "responses": 6, "html_pages": 2, "pairs": 1,
                      "robots_excluded": 1, "skipped_http_status": 1, "skipped_not_response": 1,
                      "skipped_not_json": 1, "truncated": 1, "skipped_truncated": 1}


def arc_file() -> bytes:
    info = b"1 0 Alexa Internet\nURL IP-address Archive-date Content-type Archive-length\n"
    head = b"filedesc://x.arc 0.0.0.0 20080101000000 text/plain %d\n" % len(info) + info + b"\n"
    http = b"HTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\n" + img_page("arc", "arc")
    record = b"http://site.org/arc.html 1.2.3.4 20080101000000 text/html %d\n" % len(http)
    return gzip.compress(head) + gzip.compress(record + http + b"\n")


def test_arc_files_are_a_clear_user_error(tmp_path):
    """fastwarc reads no ARC (strict: 'Invalid WARC header'; quirks mode: no records)."""
    from pipeline.stages.sources import detect_format, find_files
    arc = tmp_path / "crawl" / "IA-001.arc.gz"
    arc.parent.mkdir()
    arc.write_bytes(arc_file())
    for call in (lambda: detect_format(str(arc), None),
                 lambda: find_files([str(arc.parent)]),
                 lambda: iter_archive_pairs(arc)):
        with pytest.raises(UserError, match=r"IA-001\.arc\.gz: an ARC file") as error:
            call()
        assert "\n" not in str(error.value)
    renamed = tmp_path / "IA-001.warc.gz"   # an ARC under a WARC name: found out by its content
    renamed.write_bytes(arc_file())
    with pytest.raises(UserError, match="an ARC file"):
        list(iter_warc_pairs(renamed))


def test_a_file_that_is_not_a_warc_is_a_read_error(tmp_path):
    path = tmp_path / "x.warc.gz"
    path.write_bytes(gzip.compress(b"<html>an error page saved under a WARC name</html>"))
    counts = {}
    assert list(iter_warc_pairs(path, counts=counts)) == []
    assert counts == {"records": 0, "responses": 0, "html_pages": 0, "pairs": 0, "read_errors": 1}
