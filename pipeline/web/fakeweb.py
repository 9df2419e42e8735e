"""FakeWeb: a real threaded HTTP server on loopback that serves images, pages and faults.

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
    /fault/endless/x.jpg         image/jpeg streaming ~2 MB/s forever (until a server-side cap)
    /fault/large/<n>/x.jpg       Content-Length n, then n bytes (capped)
    /fault/large-nolength/<n>/x.jpg   n bytes with no Content-Length
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
import hashlib
import io
import random
import struct
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

BOMB_SIDE = 30000
CHUNK = 16 * 1024


@functools.lru_cache(maxsize=256)
def make_image(name: str, fmt: str = "jpg", width: int = 64, height: int = 48, color: str = "") -> bytes:
    """A deterministic image: a colour from `name` (or `color` as rrggbb) plus a dark square."""
    from PIL import Image, ImageDraw

    rgb = bytes.fromhex(color) if color else hashlib.sha256(name.encode()).digest()[:3]
    image = Image.new("RGB", (width, height), tuple(rgb))
    ImageDraw.Draw(image).rectangle((width // 4, height // 4, width // 2, height // 2), fill=(20, 20, 20))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG" if fmt == "png" else "JPEG", quality=90)
    return buffer.getvalue()


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


@functools.lru_cache(maxsize=4)
def make_bomb(fmt: str = "png", side: int = BOMB_SIDE) -> bytes:
    """A tiny file whose header declares a side x side image (a decompression bomb)."""
    if fmt == "png":
        header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
        return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
                + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _png_chunk(b"IEND", b""))
    data = bytearray(make_image("bomb", "jpg", 16, 16))
    sof = data.index(b"\xff\xc0")  # baseline frame header: marker, length, precision, h, w
    data[sof + 5:sof + 9] = struct.pack(">HH", side, side)
    return bytes(data)


@dataclass
class Route:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


class FakeWeb:
    """Threaded HTTP server on `host` (any loopback address), port chosen by the OS."""

    def __init__(self, host: str = "127.0.0.1", stream_cap_s: float = 30.0, stream_cap_bytes: int = 1 << 30):
        self.host = host
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
        self._server = _Server((self.host, 0), _Handler)
        self._server.web = self
        self._thread = threading.Thread(target=self._server.serve_forever, name="fakeweb", daemon=True)
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
        return f"http://{host or self.host}:{self.port}{path}"

    def add_file(self, path: str, body: bytes | str, headers: dict[str, str] | None = None, status: int = 200):
        body = body.encode() if isinstance(body, str) else body
        self.routes[path] = Route(status, dict(headers or {}), body)

    def add_image(self, path: str, data: bytes, content_type: str | None = None):
        kind = content_type or ("image/png" if data.startswith(b"\x89PNG") else "image/jpeg")
        self.add_file(path, data, {"Content-Type": kind})

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
    web: FakeWeb

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
                return self.send(route.status, route.headers, route.body)
            if path.startswith("/img/"):
                return self.send_image(path)
            if path.startswith("/fault/"):
                return serve_fault(self, path.split("/")[2:], nth)
            self.send(404, {"Content-Type": "text/plain"}, b"not found")
        except (BrokenPipeError, ConnectionResetError):
            pass

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


def _redirect(handler: _Handler, location: str):
    handler.send(302, {"Location": location, "Content-Type": "text/plain"}, b"moved")


def _status(handler: _Handler, code: int):
    headers = {"Content-Type": "text/plain"}
    if code in (429, 503):
        headers["Retry-After"] = handler.params.get("retry_after", "1")
    handler.send(code, headers, f"status {code}".encode())


def _fault_redirect(h: _Handler, args: list[str], nth: int):
    hops, rest = int(args[0]), "/".join(args[1:])
    if hops <= 0:
        return h.send_image(rest)
    _redirect(h, f"/fault/redirect/{hops - 1}/{rest}")


def _fault_loop(h: _Handler, args: list[str], nth: int):
    side = "b" if args[0] == "a" else "a"
    rest = "/".join(args[1:]) if args[0] in ("a", "b") else "/".join(args)
    _redirect(h, f"/fault/loop/{side}/{rest}")


def _fault_flaky(h: _Handler, args: list[str], nth: int):
    if nth < int(args[0]):
        return _status(h, int(h.params.get("code", 500)))
    h.send_image(args[-1])


def _fault_endless(h: _Handler, args: list[str], nth: int):
    h.send(200, {"Content-Type": "image/jpeg"}, make_image("endless")[:-2], length=None)
    h.stream(1 << 62, delay_s=0.002, chunk=b"\0" * 4096)  # ~2 MB/s: slow enough to hit deadlines


def _fault_drip(h: _Handler, args: list[str], nth: int):
    data = make_image(args[-1])
    h.send(200, {"Content-Type": "image/jpeg"}, b"", length=len(data))
    for byte in data:
        if h.server.web.stopping.is_set():
            return
        h.wfile.write(bytes([byte]))
        h.wfile.flush()
        time.sleep(int(args[0]) / 1000)


def _fault_large(h: _Handler, args: list[str], nth: int, declare: bool = True):
    size = int(args[0])
    h.send(200, {"Content-Type": "image/jpeg"}, b"", length=size if declare else None)
    h.stream(size)


def _fault_truncated(h: _Handler, args: list[str], nth: int):
    data = make_image(args[-1])
    h.send(200, {"Content-Type": "image/jpeg"}, data, length=len(data) + 1000)


def _fault_corrupt(h: _Handler, args: list[str], nth: int):
    junk = random.Random(args[-1]).randbytes(2048)
    h.send(200, {"Content-Type": "image/jpeg"}, junk)


def _fault_bomb(h: _Handler, args: list[str], nth: int):
    fmt = "png" if args[-1].endswith(".png") else "jpg"
    h.send(200, {"Content-Type": f"image/{'png' if fmt == 'png' else 'jpeg'}"}, make_bomb(fmt))


FAULTS = {
    "slow": lambda h, a, n: (time.sleep(int(a[0]) / 1000), h.send_image(a[-1])),
    "drip": _fault_drip,
    "endless": _fault_endless,
    "large": _fault_large,
    "large-nolength": functools.partial(_fault_large, declare=False),
    "truncated": _fault_truncated,
    "corrupt": _fault_corrupt,
    "html": lambda h, a, n: h.send(200, {"Content-Type": "text/html"}, b"<html><body>no image</body></html>"),
    "bomb": _fault_bomb,
    "xrobots": lambda h, a, n: h.send_image(a[-1], {"X-Robots-Tag": unquote(a[0])}),
    "noai": lambda h, a, n: h.send_image(a[-1], {"X-Robots-Tag": "noai"}),
    "noimageai": lambda h, a, n: h.send_image(a[-1], {"X-Robots-Tag": "noimageai"}),
    "redirect": _fault_redirect,
    "loop": _fault_loop,
    "redirect-to": lambda h, a, n: _redirect(h, h.params["to"]),
    "flaky": _fault_flaky,
}


def serve_fault(handler: _Handler, parts: list[str], nth: int):
    """Dispatch `/fault/<kind>/<args...>/<name>`; `nth` is this path's request count."""
    kind, args = parts[0], parts[1:]
    if kind.isdigit():
        return _status(handler, int(kind))
    if kind not in FAULTS:
        return handler.send(404, {"Content-Type": "text/plain"}, f"unknown fault {kind}".encode())
    FAULTS[kind](handler, args, nth)
