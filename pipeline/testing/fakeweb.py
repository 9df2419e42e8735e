"""FakeWeb: a real threaded HTTP(S) server on loopback that serves images, pages and faults.

    with FakeWeb() as web:
        web.add_page("/index.html", "<img src='/img/cat.jpg' alt='a cat'>")
        urls = [web.url("/img/cat.jpg?w=64&h=48"), web.url("/fault/404/x.jpg")]
        ...
        assert web.count("/fault/404/x.jpg") == 1

Generated images: `/img/<name>.<jpg|png>?w=..&h=..&color=rrggbb` (deterministic from the
name). Registered bodies: `add_image`, `add_page`, `add_file`, `add_robots`. Faults, by path
(the last segment is any file name, so each test can use a fresh path):

    /fault/<code>/x.jpg          that status (429 and 503 carry Retry-After)
    /fault/slow/<ms>/x.jpg       sleeps before the status line, then an image
    /fault/drip/<ms>/x.jpg       an image, one byte every <ms>
    /fault/drip-headers/<ms>/x.jpg    the status line and headers one byte every <ms>
    /fault/endless/x.jpg         image/jpeg streaming ~2 MB/s forever (until a server-side cap)
    /fault/large/<n>/x.jpg       Content-Length n, then n bytes (capped)
    /fault/large-nolength/<n>/x.jpg   n bytes with no Content-Length
    /fault/chunked/x.jpg         an image in chunked transfer encoding
    /fault/truncated/x.jpg       Content-Length above what is sent, then close
    /fault/corrupt/x.jpg         random bytes as image/jpeg
    /fault/html/x.jpg            an HTML page instead of an image
    /fault/bomb/x.png|x.jpg      a tiny file whose header declares 30000x30000
    /fault/xrobots/<value>/x.jpg an image with X-Robots-Tag: <value> (url-quoted);
    /fault/noai/x.jpg, /fault/noimageai/x.jpg shortcuts
    /fault/redirect/<k>/x.jpg    a chain of k redirects ending in an image
    /fault/loop/x.jpg            redirects back and forth forever
    /fault/redirect-to/x.jpg?to=URL   one redirect to URL (any host, port or scheme)
    /fault/flaky/<n>/x.jpg?code=500   fails with `code` until the n-th request, then an image
"""
from __future__ import annotations

import functools
import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from .content import make_image
from .faults import serve_fault

CHUNK = 16 * 1024


@dataclass
class Route:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    delay_s: float = 0.0   # before the status line


class FakeWeb:
    """Threaded HTTP server on `host` (any loopback address), port chosen by the OS."""

    def __init__(self, host: str = "127.0.0.1", stream_cap_s: float = 30.0, stream_cap_bytes: int = 1 << 30,
                 tls: tuple[str, str] | None = None):
        self.host = host
        self.tls = tls  # (certfile, keyfile): serve https, see content.make_self_signed_cert
        self.stream_cap_s = stream_cap_s
        self.stream_cap_bytes = stream_cap_bytes
        self.routes: dict[str, Route] = {}
        self.connections = 0
        self.stopping = threading.Event()
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "FakeWeb":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "FakeWeb":
        self.stopping.clear()
        self._server = _Server((self.host, 0), _Handler)
        self._server.web = self
        if self.tls:
            self._server.tls_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._server.tls_context.load_cert_chain(*self.tls)
        serve = functools.partial(self._server.serve_forever, poll_interval=0.05)
        self._thread = threading.Thread(target=serve, name=f"fakeweb-{self.host}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def url(self, path: str, host: str | None = None) -> str:
        """Absolute URL of `path`; `host="localhost"` gives the same server by another name."""
        return f"{'https' if self.tls else 'http'}://{host or self.host}:{self.port}{path}"

    def add_file(self, path: str, body: bytes | str, headers: dict[str, str] | None = None, status: int = 200,
                 delay_ms: int = 0):
        body = body.encode() if isinstance(body, str) else body
        self.routes[path] = Route(status, dict(headers or {}), body, delay_ms / 1000)

    def add_image(self, path: str, data: bytes, content_type: str | None = None, delay_ms: int = 0):
        kind = content_type or ("image/png" if data.startswith(b"\x89PNG") else "image/jpeg")
        self.add_file(path, data, {"Content-Type": kind}, delay_ms=delay_ms)

    def add_page(self, path: str, html: str):
        self.add_file(path, html, {"Content-Type": "text/html; charset=utf-8"})

    def add_robots(self, text: str):
        self.add_file("/robots.txt", text, {"Content-Type": "text/plain"})

    def count(self, path_or_url: str) -> int:
        """How many requests reached this path (query string ignored)."""
        with self._lock:
            return self._counts[urlsplit(path_or_url).path]

    @property
    def total_requests(self) -> int:
        with self._lock:
            return sum(self._counts.values())

    def record(self, path: str) -> int:
        with self._lock:
            self._counts[path] += 1
            return self._counts[path]

    def record_connection(self) -> None:
        with self._lock:
            self.connections += 1


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the default 5 drops SYNs under a 64-thread downloader
    web: FakeWeb
    tls_context: ssl.SSLContext | None = None

    def finish_request(self, request, client_address):
        if self.tls_context is None:
            return super().finish_request(request, client_address)
        with self.tls_context.wrap_socket(request, server_side=True) as tls_socket:  # handshake in this thread
            return super().finish_request(tls_socket, client_address)

    def verify_request(self, request, client_address) -> bool:
        self.web.record_connection()
        return True

    def handle_error(self, request, client_address) -> None:
        pass  # clients hanging up mid-body is the point of most faults


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # one request per connection; bodies may end by close
    server: _Server

    def log_message(self, format, *args):  # pylint: disable=redefined-builtin
        pass

    def do_GET(self):
        web = self.server.web
        path, _, query = self.path.partition("?")
        self.params = {k: v[-1] for k, v in parse_qs(query).items()}
        nth = web.record(path)
        try:
            if path in web.routes:
                route = web.routes[path]
                time.sleep(route.delay_s)
                return self.send(route.status, route.headers, route.body)
            if path.startswith("/img/"):
                return self.send_image(path)
            if path.startswith("/fault/"):
                return serve_fault(self, path.split("/")[2:], nth)
            self.send(404, {"Content-Type": "text/plain"}, b"not found")
        except (BrokenPipeError, ConnectionResetError):
            pass
        except (ValueError, IndexError, KeyError) as err:  # a malformed fault path
            self.send(400, {"Content-Type": "text/plain"}, f"bad request: {err!r}".encode())

    def send(self, status: int, headers: dict[str, str], body: bytes = b"", length: int | None = -1):
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        if length is not None:
            self.send_header("Content-Length", str(len(body) if length == -1 else length))
        self.end_headers()
        self.wfile.write(body)

    def image_bytes(self, path: str) -> bytes:
        name = path.rsplit("/", 1)[-1]
        fmt = "png" if name.endswith(".png") else "jpg"
        width, height = int(self.params.get("w", 64)), int(self.params.get("h", 48))
        return make_image(name, fmt, width, height, self.params.get("color", ""))

    def send_image(self, path: str, headers: dict[str, str] | None = None):
        data = self.image_bytes(path)
        kind = "image/png" if data.startswith(b"\x89PNG") else "image/jpeg"
        self.send(200, {"Content-Type": kind, **(headers or {})}, data)

    def stream(self, total: int, delay_s: float = 0.0, chunk: bytes = b"\0" * CHUNK):
        """Write `total` bytes (or until the server-side caps), `len(chunk)` at a time."""
        web, sent, start = self.server.web, 0, time.monotonic()
        while sent < min(total, web.stream_cap_bytes) and not web.stopping.is_set():
            if time.monotonic() - start > web.stream_cap_s:
                return
            piece = chunk[: min(total, web.stream_cap_bytes) - sent]
            self.wfile.write(piece)
            self.wfile.flush()
            sent += len(piece)
            time.sleep(delay_s)
