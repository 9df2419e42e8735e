"""Breadth-first crawler that turns web pages into image-text pairs.

`crawl()` visits the seeds, then the pages they link to, level by level (BFS). Each level's
frontier is sorted and cut to the page budget before it is fetched, and results are used in
that sorted order, so two crawls of the same site give the same table whatever the thread
timing. Fetches run on a thread pool under a per-host politeness limit (at most
`per_host_limit` requests in flight per host, at least `per_host_delay` / robots.txt
`Crawl-delay` seconds between request starts to a host).

Network access goes through one seam: `fetch(url) -> (status, headers, body)`, one request,
no redirect following. The default (`guarded_fetch`) refuses loopback, private, link-local,
multicast and reserved addresses unless they are in `allow_networks`; it connects to the
address it checked (no DNS-rebinding window), caps the body, and ends each request (page or
robots.txt) by its `timeout`, however slowly the server sends (the download stage's sockets,
`pipeline.download.safe_fetch.open_deadline_socket`).
"""
from __future__ import annotations

import json
import logging
import time
import zlib
from dataclasses import dataclass, field
from http.client import HTTPConnection
from typing import Iterable, Mapping
from urllib.parse import urlsplit

import pyarrow as pa

from pipeline.crawl.html_extract import extract_page, normalize_http_url, resolve_http_url, x_robots_tag_directives
from pipeline.crawl.politeness import PoliteRunner, host_of
from pipeline.crawl.robots import Fetch, RobotsCache
from pipeline.download import addresses
from pipeline.download.reasons import FetchTimeout
from pipeline.download.safe_fetch import deadline_tls_context, open_deadline_socket
from pipeline.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_USER_AGENT = "CurateBot/0.1 (image-text dataset research crawler)"
CRAWL_SCHEMA = pa.schema([("url", pa.string()), ("text", pa.string()), ("title", pa.string()),
                          ("figcaption", pa.string()), ("page_url", pa.string()),
                          ("depth", pa.int32())])
STATS_METADATA_KEY = b"curate.crawl.stats"
MAX_CRAWL_DELAY = 30.0  # seconds; a larger robots.txt Crawl-delay is capped
HTML_TYPES = ("text/html", "application/xhtml+xml")
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
NOT_PAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".svg", ".ico", ".bmp", ".pdf",
                     ".zip", ".gz", ".tar", ".mp3", ".mp4", ".webm", ".avi", ".css", ".js")


class RedirectRefused(Exception):
    """A page redirected out of the crawl's scope or to a robots-disallowed URL."""


def parse_networks(allow_networks: Iterable[str]) -> tuple:
    try:
        return addresses.parse_networks(allow_networks)
    except ValueError as error:
        raise UserError(f"allow_networks: {error}") from None


def read_capped(response, max_bytes: int) -> bytes:
    """At most max_bytes of the body (then gunzipped/inflated, to at most max_bytes); the
    response's deadline socket ends the read when the request's time is up."""
    chunks, size = [], 0
    while size < max_bytes:
        chunk = response.read1(min(65536, max_bytes - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    body = b"".join(chunks)
    if (response.getheader("Content-Encoding") or "").lower() in ("gzip", "x-gzip", "deflate"):
        body = zlib.decompressobj(zlib.MAX_WBITS | 32).decompress(body, max_bytes)
    return body


def guarded_fetch(allow_networks: Iterable[str] = (), timeout: float = 10.0,
                  max_bytes: int = 5_000_000, user_agent: str = DEFAULT_USER_AGENT) -> Fetch:
    """One GET per call, redirects not followed. `timeout` bounds the whole request (connect,
    TLS handshake, status line, headers and body), not each socket read: past it the call
    raises FetchTimeout (reason `timeout`), even while the server still sends bytes."""
    networks = parse_networks(allow_networks)
    tls = deadline_tls_context()
    headers = {"User-Agent": user_agent, "Accept-Encoding": "gzip", "Connection": "close",
               "Accept": "text/html,application/xhtml+xml;q=0.9,*/*;q=0.5"}

    def get(url: str, deadline: float):
        parts = urlsplit(url)
        https = parts.scheme == "https"
        port = parts.port or (443 if https else 80)
        connection = HTTPConnection(parts.hostname, port)
        connection.sock = open_deadline_socket(parts.hostname, port, networks, deadline,
                                               tls if https else None)
        try:
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            connection.request("GET", target, headers=headers)
            response = connection.getresponse()
            return response.status, response.headers, read_capped(response, max_bytes)
        finally:
            connection.close()

    def fetch(url: str):
        try:
            return get(url, time.monotonic() + timeout)
        except TimeoutError as error:  # the deadline is the only socket timeout
            raise FetchTimeout(f"{url} not fetched within {timeout} s") from error

    return fetch


def header_values(headers: Mapping[str, str], name: str) -> list[str]:
    if hasattr(headers, "get_all"):
        return list(headers.get_all(name) or [])
    value = headers.get(name) or headers.get(name.lower())
    return [value] if value else []


def media_type(headers: Mapping[str, str]) -> tuple[str, str | None]:
    """('text/html', 'utf-8') from a Content-Type header."""
    values = header_values(headers, "Content-Type")
    pieces = [piece.strip() for piece in (values[0] if values else "").split(";")]
    charset = next((p.split("=", 1)[1].strip("\"' ") for p in pieces[1:]
                    if p.lower().startswith("charset=")), None)
    return pieces[0].lower(), charset or None


def site_key(host: str) -> str:
    return host[4:] if host.startswith("www.") else host


@dataclass
class PageResult:
    url: str
    final_url: str | None = None
    outcome: str = "ok"  # ok | failed | http_error | not_html | redirect_refused
    pairs: list[dict] = field(default_factory=list)
    links: list[str] = field(default_factory=list)


class Crawler:
    def __init__(self, seeds: list[str], *, max_pages: int, max_depth: int, same_domain: bool,
                 respect_robots: bool, user_agent: str, fetch: Fetch, concurrency: int,
                 per_host_limit: int, per_host_delay: float, max_redirects: int):
        self.seeds, self.max_pages, self.max_depth = seeds, max_pages, max_depth
        self.same_domain, self.user_agent, self.fetch = same_domain, user_agent, fetch
        self.max_redirects, self.per_host_delay = max_redirects, per_host_delay
        self.robots = RobotsCache(self._fetch_robots_txt, user_agent) if respect_robots else None
        self.sites = {site_key(host_of(seed)) for seed in seeds}
        self.runner = PoliteRunner(concurrency, per_host_limit, self._delay_for)
        self.stats: dict[str, int] = {"pages_fetched": 0, "robots_disallowed": 0}

    def _delay_for(self, url: str) -> float:
        """Seconds between request starts to the url's host (robots.txt Crawl-delay, capped)."""
        rules = self.robots.cached_rules(url) if self.robots else None
        robots_delay = rules.crawl_delay if rules is not None else None
        return max(self.per_host_delay, min(robots_delay or 0.0, MAX_CRAWL_DELAY))

    def in_scope(self, url: str) -> bool:
        if not self.same_domain:
            return True
        host = site_key(host_of(url))
        return any(host == site or host.endswith("." + site) for site in self.sites)

    def robots_allow(self, url: str) -> bool:
        return self.robots is None or self.robots.allowed(url)

    def _follow_redirects(self, url: str, check_targets: bool = True):
        """Fetch, following redirects; page redirects must stay in scope and robots-allowed."""
        for _ in range(self.max_redirects + 1):
            status, headers, body = self.fetch(url)
            location = header_values(headers, "Location")
            if status not in REDIRECT_STATUSES or not location:
                return url, status, headers, body
            target = resolve_http_url(location[0], url)
            if target is None or check_targets and not (
                    self.in_scope(target) and self.robots_allow(target)):
                raise RedirectRefused(f"redirect to {location[0]!r} is out of scope or disallowed")
            url = target
        raise OSError(f"more than {self.max_redirects} redirects")

    def _fetch_robots_txt(self, url: str):
        _, status, headers, body = self._follow_redirects(url, check_targets=False)
        return status, headers, body

    def fetch_page(self, url: str) -> PageResult:
        try:
            final_url, status, headers, body = self._follow_redirects(url)
        except RedirectRefused:
            return PageResult(url, outcome="redirect_refused")
        except Exception as error:  # noqa: BLE001 - a failed page never stops the crawl
            log.debug("crawl: %s failed: %r", url, error)
            return PageResult(url, outcome="failed")
        if not 200 <= status < 300:
            return PageResult(url, final_url, outcome="http_error")
        mime, charset = media_type(headers)
        if mime not in HTML_TYPES:
            return PageResult(url, final_url, outcome="not_html")
        header_directives = x_robots_tag_directives(header_values(headers, "X-Robots-Tag"),
                                                    self.user_agent)
        page = extract_page(body, final_url, charset, header_directives, self.user_agent)
        return PageResult(url, final_url, "ok", page.pairs, page.links)

    def next_frontier(self, links: set[str], seen: set[str]) -> list[str]:
        return sorted(url for url in links - seen if self.in_scope(url)
                      and not urlsplit(url).path.lower().endswith(NOT_PAGE_SUFFIXES))

    def first_allowed(self, frontier: list[str], budget: int) -> list[str]:
        """The first `budget` frontier URLs that robots.txt allows.

        robots.txt files are fetched in parallel (politely), chunk by chunk, only for the
        origins of URLs that may still make the cut.
        """
        if self.robots is None:
            return frontier[:budget]
        allowed: list[str] = []
        position = 0
        while len(allowed) < budget and position < len(frontier):
            chunk = frontier[position:position + budget - len(allowed)]
            position += len(chunk)
            origins = sorted({f"{urlsplit(u).scheme}://{urlsplit(u).netloc}/robots.txt"
                              for u in chunk})
            self.runner.map(origins, self.robots.rules)  # warm the cache
            passed = [url for url in chunk if self.robots.allowed(url)]
            self.stats["robots_disallowed"] += len(chunk) - len(passed)
            allowed += passed
        return allowed

    def run(self) -> pa.Table:
        rows: dict[str, list] = {name: [] for name in CRAWL_SCHEMA.names}
        frontier, seen, finals = sorted(set(self.seeds)), set(self.seeds), set()
        for depth in range(self.max_depth + 1):
            budget = self.max_pages - self.stats["pages_fetched"]
            if not frontier or budget <= 0:
                break
            links, reached = self.fetch_level(frontier, budget, depth, finals, rows)
            seen.update(reached)
            frontier = self.next_frontier(links, seen) if depth < self.max_depth else []
            seen.update(frontier)
        self.stats["pairs"] = len(rows["url"])
        table = pa.table(rows, schema=CRAWL_SCHEMA)
        return table.replace_schema_metadata({STATS_METADATA_KEY: json.dumps(self.stats)})

    def fetch_level(self, frontier: list[str], budget: int, depth: int, finals: set,
                    rows: dict[str, list]) -> tuple[set[str], list[str]]:
        """Fetch the first `budget` robots-allowed URLs of a BFS level and append their pairs
        to `rows` in frontier order; a page reached twice (two URLs redirecting to it) counts
        once against `finals`. Returns the links found and the level's new final URLs."""
        batch = self.first_allowed(frontier, budget)
        self.stats["pages_fetched"] += len(batch)
        links: set[str] = set()
        reached: list[str] = []
        for result in self.runner.map(batch, self.fetch_page):
            duplicate = result.final_url in finals
            self._count("duplicate" if duplicate else result.outcome)
            if result.final_url is None or duplicate:
                continue
            finals.add(result.final_url)
            reached.append(result.final_url)
            for pair in result.pairs:
                for name in CRAWL_SCHEMA.names:
                    rows[name].append(depth if name == "depth" else pair[name])
            links.update(result.links)
        return links, reached

    def _count(self, outcome: str) -> None:
        self.stats[f"pages_{outcome}"] = self.stats.get(f"pages_{outcome}", 0) + 1


def crawl(seeds: Iterable[str], max_pages: int = 100_000, max_depth: int = 3,
          same_domain: bool = True, respect_robots: bool = True,
          user_agent: str = DEFAULT_USER_AGENT, allow_networks: Iterable[str] = (),
          timeout: float = 10.0, concurrency: int = 16, per_host_limit: int = 2,
          per_host_delay: float = 0.0, max_redirects: int = 5, max_bytes: int = 5_000_000,
          fetch: Fetch | None = None) -> pa.Table:
    """Crawl from `seeds` (BFS) and return the image-text pairs found (CRAWL_SCHEMA).

    Crawl counters are in the schema metadata under STATS_METADATA_KEY (JSON).
    """
    if max_pages < 0 or max_depth < 0 or concurrency < 1 or per_host_limit < 1:
        raise UserError("crawl: max_pages and max_depth must be >= 0, "
                        "concurrency and per_host_limit >= 1")
    normalized = []
    for seed in seeds:
        url = normalize_http_url(str(seed))
        if url is None:
            raise UserError(f"crawl.seeds: {seed!r} is not an http(s) URL")
        normalized.append(url)
    if fetch is None:
        fetch = guarded_fetch(allow_networks, timeout, max_bytes, user_agent)
    crawler = Crawler(normalized, max_pages=max_pages, max_depth=max_depth,
                      same_domain=same_domain, respect_robots=respect_robots,
                      user_agent=user_agent, fetch=fetch, concurrency=concurrency,
                      per_host_limit=per_host_limit, per_host_delay=per_host_delay,
                      max_redirects=max_redirects)
    try:
        return crawler.run()
    finally:
        crawler.runner.close()
