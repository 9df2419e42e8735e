"""The fault routes of FakeWeb (`/fault/<kind>/<args...>/<name>`); see fakeweb.py for the list."""
from __future__ import annotations

import functools
import random
import time
from typing import TYPE_CHECKING
from urllib.parse import unquote

from .content import make_bomb, make_image

if TYPE_CHECKING:
    from .fakeweb import _Handler


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


def _drip(h: _Handler, payload: bytes, delay_ms: int):
    for byte in payload:
        if h.server.web.stopping.is_set():
            return
        h.wfile.write(bytes([byte]))
        h.wfile.flush()
        time.sleep(delay_ms / 1000)


def _fault_drip(h: _Handler, args: list[str], nth: int):
    data = make_image(args[-1])
    h.send(200, {"Content-Type": "image/jpeg"}, b"", length=len(data))
    _drip(h, data, int(args[0]))


def _fault_drip_headers(h: _Handler, args: list[str], nth: int):
    data = make_image(args[-1])
    head = f"HTTP/1.0 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: {len(data)}\r\n\r\n"
    _drip(h, head.encode(), int(args[0]))
    h.wfile.write(data)


def _fault_large(h: _Handler, args: list[str], nth: int, declare: bool = True):
    size = int(args[0])
    h.send(200, {"Content-Type": "image/jpeg"}, b"", length=size if declare else None)
    h.stream(size)


def _fault_chunked(h: _Handler, args: list[str], nth: int):
    data = h.image_bytes(args[-1])
    h.send(200, {"Content-Type": "image/jpeg", "Transfer-Encoding": "chunked"}, b"", length=None)
    for start in range(0, len(data), 256):
        piece = data[start:start + 256]
        h.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
    h.wfile.write(b"0\r\n\r\n")


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
    "drip-headers": _fault_drip_headers,
    "endless": _fault_endless,
    "large": _fault_large,
    "large-nolength": functools.partial(_fault_large, declare=False),
    "chunked": _fault_chunked,
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
