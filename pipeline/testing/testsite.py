"""A deterministic generated web site and a loopback server for crawler tests and benchmarks.

`make_site(n_pages, other_origin)` returns `{path: Response}`. Page i (page 0 is "/", page i
is "/p/{i}.html") links to its children 2i+1 and 2i+2 (one relative, one absolute-path
link), so page i sits at depth floor(log2(i + 1)). Every page has an img with alt text and
a `<figure>` img with only a title and a figcaption. The home page also links to the
special pages below (all at depth 1) and to a page on `other_origin` (same server, other
host name, for same_domain tests).

    /robots.txt                    disallows /private/ for every agent
    /private/secret.html           must never be requested when robots.txt is respected
    /special/noindex.html          meta robots noindex (its link is still followed)
    /special/noimageindex.html     meta robots noimageindex
    /special/noai.html             meta robots noai
    /special/xrobots.html          X-Robots-Tag: noindex header
    /special/nofollow.html         meta robots nofollow -> /special/hidden.html is never requested
    /special/base.html             <base href="/assets/">, relative img and link
    /redirect/1                    302 -> /p/1.html
    /notes.txt                     text/plain, not parsed
    /missing.html                  404
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/html; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


ROBOTS_TXT = "User-agent: *\nDisallow: /private/\n"
SPECIAL_PATHS = ("/private/secret.html", "/special/noindex.html", "/special/noimageindex.html",
                 "/special/noai.html", "/special/xrobots.html", "/special/nofollow.html",
                 "/special/base.html", "/redirect/1", "/notes.txt", "/missing.html")


def page_path(i: int) -> str:
    return "/" if i == 0 else f"/p/{i}.html"


def html(body: str, head: str = "") -> bytes:
    return f"<!doctype html><html><head>{head}</head><body>{body}</body></html>".encode()


def page_html(i: int, n_pages: int, extra_links: list[str]) -> bytes:
    children = [c for c in (2 * i + 1, 2 * i + 2) if c < n_pages]
    links = []
    for k, child in enumerate(children):
        href = f"/p/{child}.html" if k else (f"p/{child}.html" if i == 0 else f"{child}.html")
        links.append(f'<a href="{href}">child {child}</a>')
    links += [f'<a href="{href}">x</a>' for href in extra_links]
    links += ['<a href="/">home</a>', '<a href="#top">top</a>',
              '<a href="mailto:someone@example.org">mail</a>',
              '<a href="javascript:void(0)">js</a>']
    body = (f'<img src="/img/{i}/a.jpg" alt=" A photo of item {i} ">'
            f'<figure><img src="{"" if i == 0 else "../"}img/{i}/b.png" title="Title {i}">'
            f"<figcaption>Caption of <b>item {i}</b></figcaption></figure>"
            '<img src="data:image/png;base64,AAAA" alt="inline">' + "".join(links))
    return html(body, head=f"<title>Page {i}</title>")


def special_pages() -> dict[str, Response]:
    def meta(content: str) -> str:
        return f'<meta name="robots" content="{content}">'

    def img(name: str) -> str:
        return f'<img src="/img/{name}.jpg" alt="{name} picture">'

    return {
        "/private/secret.html": Response(body=html(img("secret"))),
        "/special/noindex.html": Response(body=html(
            img("noindex") + '<a href="/special/from-noindex.html">x</a>', meta("noindex"))),
        "/special/from-noindex.html": Response(body=html(img("from-noindex"))),
        "/special/noimageindex.html": Response(body=html(img("noimageindex"),
                                                         meta("noimageindex"))),
        "/special/noai.html": Response(body=html(img("noai"), meta("noai, noimageai"))),
        "/special/xrobots.html": Response(body=html(img("xrobots")),
                                          headers=(("X-Robots-Tag", "noindex"),)),
        "/special/nofollow.html": Response(body=html(
            img("nofollow") + '<a href="/special/hidden.html">x</a>', meta("NOFOLLOW"))),
        "/special/hidden.html": Response(body=html(img("hidden"))),
        "/special/base.html": Response(body=html(
            '<img src="pic.jpg" alt="based"><a href="../p/3.html">x</a>',
            '<base href="/assets/">')),
        "/redirect/1": Response(status=302, headers=(("Location", "/p/1.html"),)),
        "/notes.txt": Response(body=b"<img src='/img/text.jpg' alt='not html'>",
                               content_type="text/plain"),
        "/missing.html": Response(status=404, body=b"not found"),
    }


def make_site(n_pages: int = 15, other_origin: str | None = None) -> dict[str, Response]:
    """The generated site; `other_origin` (e.g. http://localhost:PORT) adds /other/ pages."""
    extra = list(SPECIAL_PATHS)
    site = {"/robots.txt": Response(body=ROBOTS_TXT.encode(), content_type="text/plain")}
    if other_origin:
        extra.append(f"{other_origin}/other/0.html")
        site["/other/0.html"] = Response(body=html(
            '<img src="/img/other.jpg" alt="other host picture"><a href="/other/1.html">x</a>'))
        site["/other/1.html"] = Response(body=html('<img src="o1.jpg" alt="other host 1">'))
    for i in range(n_pages):
        site[page_path(i)] = Response(body=page_html(i, n_pages, extra if i == 0 else []))
    site.update(special_pages())
    return site


class _Handler(BaseHTTPRequestHandler):
    server: "SiteServer"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = urlsplit(self.path).path
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0]
        self.server.record(host, path, self.headers.get("User-Agent") or "")
        response = self.server.site.get(path, Response(status=404, body=b"not found"))
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for name, value in response.headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(response.body)

    def log_message(self, format, *args) -> None:  # noqa: A002 - silence per-request logs
        pass


class SiteServer(ThreadingHTTPServer):
    """Serves `site` on 127.0.0.1 (random port) in a daemon thread; records every request."""

    daemon_threads = True
    request_queue_size = 256

    def __init__(self, site: dict[str, Response] | None = None):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.site = site or {}
        self.requests: list[tuple[str, str]] = []  # (host name, path)
        self.user_agents: set[str] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self.serve_forever, args=(0.02,), daemon=True)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    @property
    def other_origin(self) -> str:
        return f"http://localhost:{self.server_address[1]}"

    def record(self, host: str, path: str, user_agent: str) -> None:
        with self._lock:
            self.requests.append((host, path))
            self.user_agents.add(user_agent)

    def requested_paths(self, host: str | None = None) -> list[str]:
        with self._lock:
            return [path for h, path in self.requests if host is None or h == host]

    def __enter__(self) -> "SiteServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join()


def serve_generated_site(n_pages: int = 15,
                         overrides: dict[str, Response] | None = None) -> SiteServer:
    """A server (started on `with`) for `make_site(n_pages, other_origin)`, paths overridden."""
    server = SiteServer()
    server.site = make_site(n_pages, server.other_origin)
    server.site.update(overrides or {})
    return server
