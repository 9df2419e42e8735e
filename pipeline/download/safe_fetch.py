"""A guarded urllib opener: the safe way for img2dataset (and any fetching stage) to fetch.

img2dataset fetches with `urllib.request.urlopen`, which goes through the process-wide opener,
so `install_guarded_opener(policy)` in each worker puts every fetch behind these guards:

- schemes: only http and https (urllib would also open file:, data:, ftp:);
- addresses: the host is resolved once, loopback/private/link-local/multicast/reserved/
  unspecified addresses (an IPv6 one that embeds IPv4 judged by that IPv4 address; see
  `addresses.address_allowed`) are refused unless inside `allow_networks`, and the socket connects to
  the vetted IP itself (no second lookup, so no DNS-rebinding window); the connected peer is
  checked again; every redirect hop goes through the same connection class;
- redirects: at most `max_redirects` hops, never to another scheme;
- size: a declared Content-Length above `max_bytes` is refused before the body, and the body
  read stops at `max_bytes`;
- time: one wall-clock deadline per image covers connect, TLS handshake, request, status line,
  headers, redirects and body; every socket receive (and send) recomputes the time left and
  waits at most until the deadline, so a server dripping its headers or body cannot hang a
  fetch. The crawler's fetch uses the same sockets (`open_deadline_socket`).

No proxy handler is installed: an environment proxy would bypass the address checks.
Limitation: the DNS lookup itself (getaddrinfo) is not bounded by the deadline.
"""
from __future__ import annotations

import functools
import http.client
import math
import socket
import ssl
import time
import urllib.request
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

from .addresses import IPNetwork, check_peer, parse_networks, resolve_allowed
from .reasons import BlockedScheme, BrokenBody, FetchTimeout, TooLarge, TooManyRedirects

ALLOWED_SCHEMES = ("http", "https")
READ_CHUNK = 64 * 1024


@dataclass(frozen=True)
class FetchPolicy:
    """What one fetch may do. `deadline_s` is the total wall-clock budget per image."""

    allow_networks: tuple[str, ...] = ()
    max_bytes: int = 20_000_000
    deadline_s: float = 10.0
    max_redirects: int = 10
    cafile: str | None = None  # CA bundle for https instead of the system's (tests, private CAs)
    networks: tuple[IPNetwork, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "allow_networks", tuple(str(cidr) for cidr in self.allow_networks))
        object.__setattr__(self, "networks", parse_networks(self.allow_networks))

    def guard_for(self, request: urllib.request.Request) -> "_Guard":
        """The guard of one request; redirect hops inherit the first hop's deadline."""
        deadline = getattr(request, "curate_deadline", None)
        if deadline is None:
            deadline = time.monotonic() + self.deadline_s
            request.curate_deadline = deadline
        return _Guard(self.networks, self.max_bytes, deadline)


@dataclass(frozen=True)
class _Guard:
    networks: tuple[IPNetwork, ...]
    max_bytes: int
    deadline: float


def _remaining(deadline: float, op_timeout: float | None) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise FetchTimeout("deadline passed")
    return left if op_timeout is None else min(left, op_timeout)


class _DeadlineMixin:
    """Every receive and send waits at most until the fetch's deadline (and `op_timeout`):
    a wait cut short raises TimeoutError, a call after the deadline FetchTimeout. The time
    left is recomputed per call, so a peer sending one byte at a time cannot extend it."""

    deadline: float = math.inf
    op_timeout: float | None = None

    def _arm(self) -> None:
        self.settimeout(_remaining(self.deadline, self.op_timeout))

    def recv_into(self, *args, **kwargs):
        self._arm()
        return super().recv_into(*args, **kwargs)

    def recv(self, *args, **kwargs):
        self._arm()
        return super().recv(*args, **kwargs)

    def sendall(self, *args, **kwargs):
        self._arm()
        return super().sendall(*args, **kwargs)


class DeadlineSocket(_DeadlineMixin, socket.socket):
    pass


class DeadlineSSLSocket(_DeadlineMixin, ssl.SSLSocket):
    pass


def open_vetted_socket(host: str, port: int, networks: tuple[IPNetwork, ...], deadline: float,
                       op_timeout: float | None = None) -> DeadlineSocket:
    """Connect to an allowed address of `host` before `deadline` (time.monotonic), check the
    peer actually connected, and return the socket armed for the time left."""
    last_error: OSError | None = None
    for family, sockaddr in resolve_allowed(host, port, networks):
        sock = DeadlineSocket(family, socket.SOCK_STREAM)
        sock.deadline, sock.op_timeout = deadline, op_timeout
        try:
            sock.settimeout(_remaining(deadline, op_timeout))
            sock.connect(sockaddr)
            check_peer(sock, sockaddr[0], networks)
            sock.settimeout(_remaining(deadline, op_timeout))  # a TLS handshake goes by this
            return sock
        except OSError as err:
            sock.close()
            last_error = err
        except BaseException:
            sock.close()
            raise
    if isinstance(last_error, TimeoutError) and time.monotonic() >= deadline:
        raise FetchTimeout(f"connecting to {host}:{port}") from last_error
    raise last_error


def deadline_tls_context(cafile: str | None = None) -> ssl.SSLContext:
    """A verifying client TLS context (HTTP/1.1) whose sockets are DeadlineSSLSockets."""
    context = ssl.create_default_context(cafile=cafile)
    context.set_alpn_protocols(["http/1.1"])
    context.sslsocket_class = DeadlineSSLSocket
    return context


def open_deadline_socket(host: str, port: int, networks: tuple[IPNetwork, ...], deadline: float,
                         tls: ssl.SSLContext | None = None) -> socket.socket:
    """A socket to an allowed address of `host` on which connect, TLS handshake (when `tls`,
    a `deadline_tls_context()`, is given) and every receive and send end by `deadline`
    (time.monotonic): FetchTimeout or TimeoutError once it has passed."""
    sock = open_vetted_socket(host, port, networks, deadline)
    if tls is None:
        return sock
    try:
        secure = tls.wrap_socket(sock, server_hostname=host)
    except BaseException:
        sock.close()
        raise
    secure.deadline = deadline
    return secure


def _op_timeout(timeout) -> float | None:
    return timeout if isinstance(timeout, (int, float)) else None


class GuardedResponse(http.client.HTTPResponse):
    """Refuses a Content-Length above the cap; `read()` stops at the byte cap and deadline."""

    def __init__(self, sock, *args, guard: _Guard, **kwargs):
        super().__init__(sock, *args, **kwargs)
        self._guard = guard
        self._body_bytes = 0
        self._declared: int | None = None

    def begin(self):
        try:
            super().begin()
        except TimeoutError as err:
            raise FetchTimeout("waiting for response headers") from err
        self._declared = self.length
        if self.length is not None and self.length > self._guard.max_bytes:
            self.close()
            raise TooLarge(f"Content-Length {self.length} > max_bytes {self._guard.max_bytes}")

    def read(self, amt=None):
        try:
            if amt is None:
                return self._read_all()
            return self._count(super().read(amt))
        except TimeoutError as err:
            self.close()
            raise FetchTimeout(f"body not complete after {self._body_bytes} bytes") from err

    def _read_all(self) -> bytes:
        chunks = []
        while True:
            if time.monotonic() >= self._guard.deadline:
                self.close()
                raise FetchTimeout(f"body not complete after {self._body_bytes} bytes")
            chunk = self.read1(READ_CHUNK)
            if not chunk:
                break
            chunks.append(self._count(chunk))
        if self._declared is not None and self._body_bytes < self._declared:
            raise BrokenBody(f"body ended at {self._body_bytes} of {self._declared} bytes")
        return b"".join(chunks)

    def _count(self, chunk: bytes) -> bytes:
        self._body_bytes += len(chunk)
        if self._body_bytes > self._guard.max_bytes:
            self.close()
            raise TooLarge(f"body exceeds max_bytes {self._guard.max_bytes}")
        return chunk


class GuardedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, host, *, guard: _Guard, **kwargs):
        super().__init__(host, **kwargs)
        self._guard = guard
        self._create_connection = self._connect_vetted
        self.response_class = functools.partial(GuardedResponse, guard=guard)

    def _connect_vetted(self, address, timeout=None, source_address=None):
        return open_vetted_socket(address[0], address[1], self._guard.networks, self._guard.deadline,
                                  _op_timeout(timeout))


class GuardedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host, *, guard: _Guard, **kwargs):
        super().__init__(host, **kwargs)
        self._guard = guard
        self._create_connection = self._connect_vetted
        self.response_class = functools.partial(GuardedResponse, guard=guard)

    _connect_vetted = GuardedHTTPConnection._connect_vetted

    def connect(self):
        super().connect()  # plain vetted socket, then TLS via the context's DeadlineSSLSocket
        self.sock.deadline, self.sock.op_timeout = self._guard.deadline, _op_timeout(self.timeout)


class SchemeGuard(urllib.request.BaseHandler):
    handler_order = 100  # before every opener

    def default_open(self, req):
        if req.type not in ALLOWED_SCHEMES:
            raise BlockedScheme(f"scheme {req.type!r} is not allowed")


class GuardedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, policy: FetchPolicy):
        super().__init__()
        self._policy = policy

    def http_open(self, req):
        return self.do_open(functools.partial(GuardedHTTPConnection, guard=self._policy.guard_for(req)), req)


class GuardedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, policy: FetchPolicy):
        super().__init__(context=deadline_tls_context(policy.cafile))
        self._policy = policy

    def https_open(self, req):
        connection = functools.partial(GuardedHTTPSConnection, guard=self._policy.guard_for(req))
        return self.do_open(connection, req, context=self._context)


class GuardedRedirectHandler(urllib.request.HTTPRedirectHandler):
    """Counts hops across the chain, refuses non-http(s) targets, passes the deadline on."""

    def __init__(self, max_redirects: int):
        self.max_hops = max_redirects
        self.max_redirections = self.max_repeats = max_redirects + 1  # our cap fires first

    def http_error_302(self, req, fp, code, msg, headers):
        location = headers.get("location") or headers.get("uri")
        if location:
            target = urljoin(req.full_url, location)
            if urlsplit(target).scheme.lower() not in ALLOWED_SCHEMES:
                raise BlockedScheme(f"redirect to {target!r}")
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        hops = getattr(req, "curate_hops", 0) + 1
        if hops > self.max_hops:
            raise TooManyRedirects(f"more than {self.max_hops} redirects (next: {newurl})")
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:
            new.curate_hops = hops
            new.curate_deadline = getattr(req, "curate_deadline", None)
        return new


def build_guarded_opener(policy: FetchPolicy) -> urllib.request.OpenerDirector:
    opener = urllib.request.OpenerDirector()
    for handler in (
        SchemeGuard(),
        GuardedHTTPHandler(policy),
        GuardedHTTPSHandler(policy),
        GuardedRedirectHandler(policy.max_redirects),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPErrorProcessor(),
    ):
        opener.add_handler(handler)
    return opener


def install_guarded_opener(policy: FetchPolicy) -> urllib.request.OpenerDirector:
    """Make `urllib.request.urlopen` (img2dataset's fetch) go through the guards, process-wide."""
    opener = build_guarded_opener(policy)
    urllib.request.install_opener(opener)
    return opener


def fetch(url: str, policy: FetchPolicy, timeout: float | None = None,
          headers: dict[str, str] | None = None) -> tuple[bytes, http.client.HTTPMessage]:
    """Fetch one URL through the guards (without touching the global opener)."""
    request = urllib.request.Request(url, headers=headers or {})
    opener = build_guarded_opener(policy)
    with opener.open(request, timeout=timeout if timeout is not None else policy.deadline_s) as response:
        return response.read(), response.headers
