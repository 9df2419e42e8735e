"""Image-text pairs from Common Crawl (and other) web archives, as pyarrow RecordBatches.

- `iter_warc_pairs(path)`: WARC `response` records holding 2xx HTML, parsed with the same
  extraction as live pages (`html_extract.extract_page`: `<base href>`, meta robots,
  X-Robots-Tag); `page_url` is the record's WARC-Target-URI.
- `iter_wat_pairs(path)`: WAT metadata records (JSON): the
  `Envelope.Payload-Metadata.HTTP-Response-Metadata.HTML-Metadata.Links` entries with
  `path == "IMG@/src"`, resolved against `Head.Base` and the target URI; meta robots in
  `Head.Metas` honoured. WAT has no figcaption, so that column is null.

Both read plain or gzip-per-record files (.warc / .warc.gz / .wat / .wat.gz) of WARC 0.18,
1.0 and 1.1, and survive what real archives carry:

- fastwarc reads the WARC records in quirks mode (LF-only WARC headers, wrong
  Content-Lengths, garbage between records); the HTTP header block of a response is parsed
  here, tolerantly: CRLF or bare LF line endings, folded lines, lines without a colon, header
  blocks of up to 1 MiB, a `Transfer-Encoding: chunked` body that was stored chunked.
  (fastwarc's own HTTP parsing reads an LF-only header block as no headers and no body
  unless in quirks mode, stops the whole file at a header block over 32 KiB in any mode, and
  keeps the quotes of `charset="..."`.)
- The media type is the last valid Content-Type. A missing or invalid one, and
  `unknown/unknown`, `application/unknown`, `*/*` and `application/octet-stream`, are sniffed
  as browsers sniff HTML (WHATWG MIME Sniffing: whitespace, then `<!DOCTYPE HTML`, `<HTML`,
  `<HEAD`, ... followed by a space or `>`), unless `X-Content-Type-Options: nosniff`; any
  other type (`text/plain` included, as browsers do) is taken as given.
- A body labelled gzip/deflate that the archiver already decoded is read as it is.
- A file cut short: the records before the cut are read, the cut record as far as it goes
  (or skipped when its headers are cut); damaged compressed data stops the file there, with
  what was read before kept. Nothing of that raises.
- ARC files (the format before WARC) cannot be read by fastwarc: a `UserError`.

Counts: pass `counts={}` and, once the batches are consumed, it holds what the file held
(flat integers, added to what the dict already has, so one dict may sum several files):
`records` (WARC records of any type), `responses` (WARC response / WAT metadata records),
`html_pages` (2xx HTML pages parsed), `pairs` (pairs emitted); when they occur,
`robots_excluded` (pages whose robots directives forbid pairs, within html_pages),
`truncated` (records the end of the file cut short, whether or not still read),
`read_errors` (the file was damaged or not a WARC file: reading stopped there), and
`skipped_<reason>` for responses that gave no page: `no_uri`, `not_http` (no status line or
no end of the HTTP headers), `http_status` (not 2xx), `not_html`, `undecodable` (a
Content-Encoding that cannot be undone), `truncated` (cut before its body); for WAT
`not_json`, `not_response` (request / metadata envelopes), `http_status`, `not_html`, `no_uri`
and `truncated`.
"""
from __future__ import annotations

import gzip
import json
import logging
import re
import zlib
from typing import Callable, Iterable, Iterator
from urllib.parse import urljoin

import pyarrow as pa
from fastwarc.warc import ArchiveIterator, WarcRecordType

from pipeline.crawl.html_extract import (
    NO_PAIRS_DIRECTIVES,
    PAIR_FIELDS,
    extract_page,
    parse_directives,
    resolve_http_url,
    x_robots_tag_directives,
)
from pipeline.errors import UserError

log = logging.getLogger(__name__)

ARCHIVE_SCHEMA = pa.schema([(name, pa.string()) for name in PAIR_FIELDS])
HTML_TYPES = ("text/html", "application/xhtml+xml")
# Supplied types browsers treat as unknown (WHATWG MIME Sniffing 7.1), plus octet-stream,
# which misconfigured servers send for HTML pages.
SNIFFED_TYPES = frozenset({"unknown/unknown", "application/unknown", "*/*",
                           "application/octet-stream"})
MAX_HTML_BYTES = 20_000_000
HEAD_CHUNK = 64 << 10
MAX_HTTP_HEADER = 1 << 20
SNIFF_BYTES = 1445          # the WHATWG "resource header" length
BASE_COUNTS = ("records", "responses", "html_pages", "pairs")

_HTTP_STATUS = re.compile(rb"[ \t\r\n]*HTTP/\d+(?:\.\d+)?[ \t]+(\d{3})(?![0-9])", re.I)
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_TOKEN = r"[!#$%&'*+.^_`|~0-9a-z-]+"
_MIME_ESSENCE = re.compile(rf"{_TOKEN}/{_TOKEN}")
_CHARSET = re.compile(r";\s*charset\s*=\s*(\"[^\"]*\"|[^;\s]*)", re.I)
_HEX = re.compile(rb"[0-9a-fA-F]+")
_HTML_SNIFF = re.compile(
    rb"[\t\n\x0c\r ]*(?:<!DOCTYPE HTML|<HTML|<HEAD|<SCRIPT|<IFRAME|<H1|<DIV|<FONT|<TABLE|<A"
    rb"|<STYLE|<TITLE|<B|<BODY|<BR|<P|<!--)[ >]", re.I)


def arc_unsupported(path) -> UserError:
    return UserError(f"{path}: an ARC file (the web archive format before WARC), which cannot "
                     f"be read: convert it to WARC first (e.g. `warc convert arc`)")


def is_arc_name(path) -> bool:
    return str(path).lower().endswith((".arc", ".arc.gz"))


def add(counts: dict, key: str, n: int = 1) -> None:
    counts[key] = counts.get(key, 0) + n


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


# ----------------------------------------------------------------------------- reading records

def file_head(path, size: int = 64) -> bytes:
    """The first bytes of a file, gunzipped when it is gzip ("" when unreadable)."""
    try:
        with open(path, "rb") as raw:
            magic = raw.read(2)
            raw.seek(0)
            if magic == b"\x1f\x8b":
                with gzip.GzipFile(fileobj=raw) as unzipped:
                    return unzipped.read(size)
            return raw.read(size)
    except (OSError, EOFError, zlib.error):
        return b""


def archive_records(path, counts: dict, handle: Callable[[object, dict], list[dict]],
                    wanted: WarcRecordType) -> Iterator[dict]:
    """`handle(record, counts)`'s pairs for each `wanted` record of a WARC-format file. A
    damaged file stops at the damage (the pairs before it kept, counted as a read error)."""
    records = iter(ArchiveIterator(str(path), parse_http=False, quirks_mode=True))
    seen = 0
    while True:
        try:
            record = next(records)
            seen += 1
            add(counts, "records")
            if record.record_type == wanted:
                pairs = handle(record, counts)
            else:
                pairs = []
                if BlockReader(record).cut_short():
                    add(counts, "truncated")
        except StopIteration:
            break
        except OSError as exc:   # fastwarc: damaged compressed data, unreadable records
            add(counts, "read_errors")
            log.warning("%s: stopped reading after %d records: %s", path, seen, exc)
            break
        add(counts, "pairs", len(pairs))
        yield from pairs
    if seen == 0:
        head = file_head(path).lstrip()
        if head.startswith(b"filedesc://"):
            raise arc_unsupported(path)
        if head and not head.startswith(b"WARC/"):
            add(counts, "read_errors")
            log.warning("%s: not a WARC file (it starts with %r)", path, head[:16])


class BlockReader:
    """Reads a record's block, keeping count of its bytes to tell a record cut short."""

    def __init__(self, record):
        self.record = record
        self.done = 0

    def read(self, size: int) -> bytes:
        parts = []
        while size > 0:
            chunk = self.record.reader.read(size)
            if not chunk:
                break
            parts.append(chunk)
            size -= len(chunk)
        data = b"".join(parts)
        self.done += len(data)
        return data

    def cut_short(self) -> bool:
        """Skip the rest of the block; True when it ends before its Content-Length (or the
        WARC header itself was cut, so that it has none)."""
        self.done += self.record.reader.consume()
        declared = self.record.headers.get("Content-Length")
        return declared is None or self.done < self.record.content_length


# ------------------------------------------------------------------------------ HTTP responses

def split_http(data: bytes) -> tuple[int | None, list[tuple[str, str]], int | None]:
    """(status, headers as (lowercase name, value), offset of the body) of an HTTP response
    block: status None without a status line, offset None when the headers do not end
    within `data`. Tolerant: CRLF or LF line ends, folded lines, lines without a colon."""
    status = _HTTP_STATUS.match(data)
    if status is None:
        return None, [], None
    end = _HEADER_END.search(data, status.end())
    if end is None:
        return int(status.group(1)), [], None
    headers: list[tuple[str, str]] = []
    for line in data[status.end():end.start()].split(b"\n")[1:]:
        line = line.rstrip(b"\r")
        if line[:1] in (b" ", b"\t") and headers:
            name, value = headers[-1]
            headers[-1] = (name, f"{value} {line.strip().decode('latin-1')}")
            continue
        name, colon, value = line.partition(b":")
        if colon and name.strip():
            headers.append((name.strip().decode("latin-1").lower(),
                            value.strip().decode("latin-1")))
    return int(status.group(1)), headers, end.end()


def header_values(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [value for key, value in headers if key == name]


def content_type(headers: list[tuple[str, str]]) -> tuple[str | None, str | None]:
    """(essence, charset) of the last valid Content-Type; (None, None) without one."""
    for value in reversed(header_values(headers, "content-type")):
        essence = value.split(";", 1)[0].strip().lower()
        if _MIME_ESSENCE.fullmatch(essence):
            charset = _CHARSET.search(value)
            return essence, (charset.group(1).strip('"').strip() or None) if charset else None
    return None, None


def sniffs_as_html(body: bytes) -> bool:
    """WHATWG MIME Sniffing's HTML patterns (the only scriptable type that yields HTML)."""
    return _HTML_SNIFF.match(body[:SNIFF_BYTES]) is not None


def dechunked(body: bytes) -> bytes:
    """A `Transfer-Encoding: chunked` body decoded as far as it goes; as it is when it does
    not start like one (archivers that stored it decoded)."""
    parts, pos = [], 0
    while True:
        eol = body.find(b"\n", pos)
        size = body[pos:eol].split(b";", 1)[0].strip() if eol >= 0 else b""
        if not _HEX.fullmatch(size):
            return body if pos == 0 else b"".join(parts)
        size = int(size, 16)
        if size == 0:
            return b"".join(parts)
        parts.append(body[eol + 1:eol + 1 + size])
        pos = eol + 1 + size
        pos += 2 if body[pos:pos + 2] == b"\r\n" else 1 if body[pos:pos + 1] == b"\n" else 0


def decoded_payload(body: bytes, content_encoding: str | None) -> bytes | None:
    """The payload with a gzip/deflate Content-Encoding undone (as far as the data goes when
    it is cut); as it is when it is not compressed after all (archivers that stored it
    decoded, as Common Crawl does); None when compressed data cannot be read at all."""
    coding = (content_encoding or "").strip().lower()
    if coding not in ("gzip", "x-gzip", "deflate"):
        return body
    if body[:2] == b"\x1f\x8b":
        wbits = 16 + zlib.MAX_WBITS
    elif len(body) > 1 and body[0] & 0x0F == 8 and (body[0] << 8 | body[1]) % 31 == 0:
        wbits = zlib.MAX_WBITS                     # zlib-wrapped deflate
    elif coding == "deflate" and body.lstrip()[:1] != b"<":
        wbits = -zlib.MAX_WBITS                    # raw deflate, as some servers send it
    else:
        return body
    inflater, parts, room = zlib.decompressobj(wbits), [], MAX_HTML_BYTES
    try:
        for start in range(0, len(body), HEAD_CHUNK):
            part = inflater.decompress(body[start:start + HEAD_CHUNK], room)
            parts.append(part)
            room -= len(part)
            if room <= 0 or inflater.eof:
                break
    except zlib.error:
        if wbits < 0:
            return body                            # not raw deflate either: as it is
        if not any(parts):
            return None
    return b"".join(parts)


def response_page(record, block: BlockReader) -> tuple[str, bytes | None, str | None, list]:
    """(skip reason or "", body, charset, HTTP headers) of a WARC response record."""
    head = block.read(HEAD_CHUNK)
    status, headers, body_at = split_http(head)
    while status is not None and body_at is None and len(head) < MAX_HTTP_HEADER:
        more = block.read(HEAD_CHUNK)
        if not more:
            break
        head += more
        status, headers, body_at = split_http(head)
    if target_uri(record) is None:
        return "no_uri", None, None, headers
    if status is None or body_at is None:
        return "not_http", None, None, headers
    if not 200 <= status < 300:
        return "http_status", None, None, headers
    essence, charset = content_type(headers)
    nosniff = any(v.split(",", 1)[0].strip().lower() == "nosniff"
                  for v in header_values(headers, "x-content-type-options"))
    sniff = essence is None or essence in SNIFFED_TYPES
    if essence not in HTML_TYPES and not (sniff and not nosniff):
        return "not_html", None, None, headers
    body = head[body_at:] + block.read(MAX_HTML_BYTES - (len(head) - body_at))
    if any("chunked" in v.lower() for v in header_values(headers, "transfer-encoding")):
        body = dechunked(body)
    encodings = header_values(headers, "content-encoding")
    body = decoded_payload(body, encodings[-1] if encodings else None)
    if body is None:
        return "undecodable", None, None, headers
    if essence not in HTML_TYPES and not sniffs_as_html(body):
        return "not_html", None, None, headers
    return "", body, charset, headers


def warc_response_pairs(record, counts: dict) -> list[dict]:
    """Pairs of one WARC response record; [] unless it is a 2xx HTML page (the reason
    counted)."""
    add(counts, "responses")
    block = BlockReader(record)
    reason, body, charset, headers = response_page(record, block)
    if block.cut_short():
        add(counts, "truncated")
        if reason in ("no_uri", "not_http"):
            reason = "truncated"
    if reason:
        add(counts, f"skipped_{reason}")
        return []
    add(counts, "html_pages")
    directives = x_robots_tag_directives(header_values(headers, "x-robots-tag"))
    try:
        page = extract_page(body, target_uri(record), charset, directives)
    except Exception as error:  # noqa: BLE001 - one unparsable page never loses the file
        log.warning("%s: page not parsed (%s)", target_uri(record), error)
        add(counts, "skipped_unparsable")
        return []
    if page.directives & NO_PAIRS_DIRECTIVES:
        add(counts, "robots_excluded")
    return page.pairs


def start_counts(counts: dict | None) -> dict:
    counts = {} if counts is None else counts
    for key in BASE_COUNTS:
        counts.setdefault(key, 0)
    return counts


def iter_warc_pairs(path, batch_size: int = 10_000,
                    counts: dict | None = None) -> Iterator[pa.RecordBatch]:
    """RecordBatches (ARCHIVE_SCHEMA) of the image-text pairs of a WARC file's HTML pages;
    `counts` (see the module doc) is filled in as the batches are consumed."""
    counts = start_counts(counts)
    return batches_of(archive_records(path, counts, warc_response_pairs,
                                      WarcRecordType.response), batch_size)


# ------------------------------------------------------------------------------------------ WAT

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


def wat_envelope_pairs(envelope: dict, page_url: str | None,
                       counts: dict | None = None) -> list[dict]:
    """Image pairs of one WAT envelope (a page's metadata); nothing for non-2xx pages."""
    counts = {} if counts is None else counts
    header = envelope.get("WARC-Header-Metadata") or {}
    page_url = (header.get("WARC-Target-URI") or page_url or "").strip().strip("<>")
    response = (envelope.get("Payload-Metadata") or {}).get("HTTP-Response-Metadata")
    if not isinstance(response, dict):
        add(counts, "skipped_not_response")
        return []
    status = str((response.get("Response-Message") or {}).get("Status") or "200")
    html_meta = response.get("HTML-Metadata") or {}
    reason = ("no_uri" if not page_url else "http_status" if not status.startswith("2")
              else "not_html" if not html_meta else "")
    if reason:
        add(counts, f"skipped_{reason}")
        return []
    add(counts, "html_pages")
    head = html_meta.get("Head") or {}
    if (wat_meta_directives(head) | wat_header_directives(response)) & NO_PAIRS_DIRECTIVES:
        add(counts, "robots_excluded")
        return []
    base_url = wat_base_url(head, page_url)
    pairs = []
    for link in html_meta.get("Links") or []:
        if not isinstance(link, dict) or link.get("path") != "IMG@/src":
            continue
        url = resolve_http_url(link.get("url"), base_url)
        if url is not None:
            pairs.append({"url": url, "text": stripped_or_none(link.get("alt")),
                          "title": stripped_or_none(link.get("title")), "figcaption": None,
                          "page_url": page_url})
    return pairs


def wat_record_pairs(record, counts: dict) -> list[dict]:
    add(counts, "responses")
    block = BlockReader(record)
    data = block.read(record.content_length or MAX_HTML_BYTES)
    cut = block.cut_short()
    if cut:
        add(counts, "truncated")
    try:
        envelope = json.loads(data)["Envelope"]
    except (ValueError, KeyError, TypeError):
        envelope = None
    if not isinstance(envelope, dict):
        add(counts, "skipped_truncated" if cut else "skipped_not_json")
        log.debug("skipping a WAT record that is not a JSON envelope in %s", target_uri(record))
        return []
    return wat_envelope_pairs(envelope, target_uri(record), counts)


def iter_wat_pairs(path, batch_size: int = 10_000,
                   counts: dict | None = None) -> Iterator[pa.RecordBatch]:
    """RecordBatches (ARCHIVE_SCHEMA) of the IMG@/src links of a WAT file; `counts` (see
    the module doc) is filled in as the batches are consumed."""
    counts = start_counts(counts)
    return batches_of(archive_records(path, counts, wat_record_pairs, WarcRecordType.metadata),
                      batch_size)


def iter_archive_pairs(path, batch_size: int = 10_000,
                       counts: dict | None = None) -> Iterator[pa.RecordBatch]:
    """WAT or WARC by file name (`.wat`, `.wat.gz` -> WAT; `.arc`, `.arc.gz` -> a UserError;
    anything else -> WARC)."""
    if is_arc_name(path):
        raise arc_unsupported(path)
    name = str(path).lower()
    is_wat = name.endswith((".wat", ".wat.gz"))
    return (iter_wat_pairs if is_wat else iter_warc_pairs)(path, batch_size, counts)
