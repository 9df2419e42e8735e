"""Image-text pairs from Common Crawl archives (fastwarc), as pyarrow RecordBatches.

- `iter_warc_pairs(path)`: WARC `response` records holding 2xx HTML, parsed with the same
  extraction as live pages (`html_extract.extract_page`: `<base href>`, meta robots,
  X-Robots-Tag); `page_url` is the record's WARC-Target-URI.
- `iter_wat_pairs(path)`: WAT metadata records (JSON): the
  `Envelope.Payload-Metadata.HTTP-Response-Metadata.HTML-Metadata.Links` entries with
  `path == "IMG@/src"`, resolved against `Head.Base` and the target URI; meta robots in
  `Head.Metas` honoured. WAT has no figcaption, so that column is null.

Both read plain or gzip-per-record files (.warc / .warc.gz / .wat / .wat.gz).
"""
from __future__ import annotations

import json
import logging
import zlib
from typing import Iterable, Iterator
from urllib.parse import urljoin

import pyarrow as pa
from fastwarc.warc import ArchiveIterator, WarcRecordType

from pipeline.crawl.html_extract import (NO_PAIRS_DIRECTIVES, PAIR_FIELDS, extract_page,
                                         parse_directives, resolve_http_url,
                                         x_robots_tag_directives)

log = logging.getLogger(__name__)

ARCHIVE_SCHEMA = pa.schema([(name, pa.string()) for name in PAIR_FIELDS])
HTML_TYPES = ("text/html", "application/xhtml+xml")
MAX_HTML_BYTES = 20_000_000


def batches_of(pairs: Iterable[dict], batch_size: int) -> Iterator[pa.RecordBatch]:
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    rows: list[dict] = []
    for pair in pairs:
        rows.append(pair)
        if len(rows) >= batch_size:
            yield pa.RecordBatch.from_pylist(rows, schema=ARCHIVE_SCHEMA)
            rows = []
    if rows:
        yield pa.RecordBatch.from_pylist(rows, schema=ARCHIVE_SCHEMA)


def target_uri(record) -> str | None:
    """WARC-Target-URI, without the <...> some WARC 1.0 writers put around it."""
    uri = (record.headers.get("WARC-Target-URI") or "").strip().strip("<>")
    return uri or None


def decoded_payload(body: bytes, content_encoding: str | None) -> bytes | None:
    """The payload with a gzip/deflate Content-Encoding undone (None when it cannot be)."""
    if (content_encoding or "").strip().lower() not in ("gzip", "x-gzip", "deflate"):
        return body
    if not body.startswith(b"\x1f\x8b") and not body[:1] == b"\x78":
        return body  # labelled compressed, already decoded by the archiver (Common Crawl does)
    try:
        return zlib.decompressobj(zlib.MAX_WBITS | 32).decompress(body, MAX_HTML_BYTES)
    except zlib.error:
        return None


def html_response_pairs(record) -> list[dict]:
    """Pairs of one WARC response record; [] unless it is a 2xx HTML page."""
    page_url = target_uri(record)
    http = record.http_headers
    if page_url is None or http is None or not 200 <= (http.status_code or 0) < 300:
        return []
    if (record.http_content_type or "").lower() not in HTML_TYPES:
        return []
    body = decoded_payload(record.reader.read(), http.get("Content-Encoding"))
    if body is None:
        return []
    directives = x_robots_tag_directives(list(http.get_multiple("X-Robots-Tag")))
    return extract_page(body, page_url, record.http_charset, directives).pairs


def iter_warc_pairs(path, batch_size: int = 10_000) -> Iterator[pa.RecordBatch]:
    """RecordBatches (ARCHIVE_SCHEMA) of the image-text pairs of a WARC file's HTML pages."""
    records = ArchiveIterator(str(path), record_types=WarcRecordType.response, parse_http=True)
    return batches_of((pair for record in records for pair in html_response_pairs(record)),
                      batch_size)


def stripped_or_none(value) -> str | None:
    return value.strip() if isinstance(value, str) else None


def wat_meta_directives(head: dict) -> set[str]:
    directives: set[str] = set()
    for meta in head.get("Metas") or []:
        if isinstance(meta, dict) and (meta.get("name") or "").strip().lower() == "robots":
            directives |= parse_directives(meta.get("content"))
    return directives


def wat_header_directives(response: dict) -> set[str]:
    headers = response.get("Headers") or {}
    values = [v for key, v in headers.items() if key.lower() == "x-robots-tag"]
    flat = [item for v in values for item in (v if isinstance(v, list) else [v])]
    return x_robots_tag_directives([str(v) for v in flat])


def wat_base_url(head: dict, page_url: str) -> str:
    base = head.get("Base")
    if isinstance(base, dict):
        base = base.get("href")
    return urljoin(page_url, base.strip()) if isinstance(base, str) and base.strip() else page_url


def wat_envelope_pairs(envelope: dict, page_url: str | None) -> Iterator[dict]:
    """Image pairs of one WAT envelope (a page's metadata); nothing for non-2xx pages."""
    header = envelope.get("WARC-Header-Metadata") or {}
    page_url = (header.get("WARC-Target-URI") or page_url or "").strip().strip("<>")
    response = (envelope.get("Payload-Metadata") or {}).get("HTTP-Response-Metadata") or {}
    status = str((response.get("Response-Message") or {}).get("Status") or "200")
    html_meta = response.get("HTML-Metadata") or {}
    if not page_url or not status.startswith("2") or not html_meta:
        return
    head = html_meta.get("Head") or {}
    if (wat_meta_directives(head) | wat_header_directives(response)) & NO_PAIRS_DIRECTIVES:
        return
    base_url = wat_base_url(head, page_url)
    for link in html_meta.get("Links") or []:
        if not isinstance(link, dict) or link.get("path") != "IMG@/src":
            continue
        url = resolve_http_url(link.get("url"), base_url)
        if url is not None:
            yield {"url": url, "text": stripped_or_none(link.get("alt")),
                   "title": stripped_or_none(link.get("title")), "figcaption": None,
                   "page_url": page_url}


def wat_pairs(path) -> Iterator[dict]:
    for record in ArchiveIterator(str(path), record_types=WarcRecordType.metadata,
                                  parse_http=False):
        try:
            envelope = json.loads(record.reader.read())["Envelope"]
        except (ValueError, KeyError, TypeError):
            log.debug("skipping a WAT record that is not a JSON envelope in %s", path)
            continue
        if isinstance(envelope, dict):
            yield from wat_envelope_pairs(envelope, target_uri(record))


def iter_wat_pairs(path, batch_size: int = 10_000) -> Iterator[pa.RecordBatch]:
    """RecordBatches (ARCHIVE_SCHEMA) of the IMG@/src links of a WAT file."""
    return batches_of(wat_pairs(path), batch_size)


def iter_archive_pairs(path, batch_size: int = 10_000) -> Iterator[pa.RecordBatch]:
    """WAT or WARC by file name (`.wat`, `.wat.gz` -> WAT; anything else -> WARC)."""
    name = str(path).lower()
    is_wat = name.endswith((".wat", ".wat.gz"))
    return (iter_wat_pairs if is_wat else iter_warc_pairs)(path, batch_size)
