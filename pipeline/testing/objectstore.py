"""A real S3-compatible object store on loopback, for tests and benchmarks.

`ObjectStore` starts `moto_server` (a real S3 API over HTTP) in a subprocess and, in a thread of
this process, a small stdlib HTTP proxy in front of it. Clients (s3fs, boto3, worker processes
given `store.env()`) talk to the proxy at `store.endpoint`; the proxy forwards every request to
moto unchanged and

* counts it as (method, bucket, key, query-op): `counts()`, `puts_per_key()`, `requests()`;
* can make the next N matching requests fail (`inject`): a 503 SlowDown, a 403 AccessDenied, or a
  connection reset with no response, so retry paths run against real clients.

The helper methods (`create_bucket`, `list_keys`, `get`) talk to moto directly, so they are never
counted and never hit injected faults. Product code never imports this module.

    with ObjectStore() as store:
        store.create_bucket("b")
        fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": store.endpoint}, key="testing",
                               secret="testing")
"""
from __future__ import annotations

import atexit
import http.client
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import NamedTuple
from urllib.parse import parse_qsl, unquote, urlsplit

_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te",
               "trailer", "upgrade", "expect", "content-length"}
_ERRORS = {
    "503": (503, "SlowDown", "Please reduce your request rate."),
    "403": (403, "AccessDenied", "Access Denied"),
    "502": (502, "BadGateway", "moto did not answer"),  # not injectable: moto itself failed
}


class Request(NamedTuple):
    method: str   # HTTP method
    bucket: str   # "" for ListBuckets
    key: str      # "" for bucket-level requests
    op: str       # sorted query parameter names joined by "&", e.g. "partNumber&uploadId"
    status: int   # response status; 0 when the connection was reset


def _kind(method: str, key: str) -> str:
    """The name a request is counted (and matched by `inject`) under: LIST is a GET with no key."""
    return "LIST" if method == "GET" and not key else method


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Proxy(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    store: ObjectStore  # set on the subclass made per ObjectStore
    _upstream: http.client.HTTPConnection | None = None

    def log_message(self, *args):
        pass

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _handle(self):
        url = urlsplit(self.path)
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0]
        path = unquote(url.path)
        if host.endswith(".localhost"):  # virtual-host style: bucket.localhost:port/key
            bucket, key = host[: -len(".localhost")], path.lstrip("/")
        else:
            bucket, _, key = path.lstrip("/").partition("/")
        op = "&".join(sorted({k for k, _ in parse_qsl(url.query, keep_blank_values=True)}))
        body = self._read_body()
        fault = self.store._take_fault(_kind(self.command, key), key)
        resp = None if fault else self._upstream_request(body)
        if fault:
            status = 0 if fault == "reset" else _ERRORS[fault][0]
        else:
            status = resp.status if resp else 502
        # Recorded before the client sees any answer, so a client that has its answer always
        # finds its request in requests()/counts().
        self.store._record(Request(self.command, bucket, key, op, status))
        if fault == "reset":
            linger0 = struct.pack("ii", 1, 0)
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger0)
            self.rfile.close()
            self.connection.close()  # RST: the client sees a reset and no response
            self.close_connection = True
        elif resp is None:
            status, code, message = _ERRORS[fault or "502"]
            xml = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                   f"<Message>{message}</Message></Error>").encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(xml)))
            self.end_headers()
            if self.command != "HEAD":   # a HEAD answer has headers only: a body would be read
                self.wfile.write(xml)    # as the next answer on a kept-alive connection
        else:
            self._relay(resp)

    def _upstream_request(self, body: bytes) -> http.client.HTTPResponse | None:
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        headers["Content-Length"] = str(len(body))
        for _ in (0, 1):  # retry once: moto may have closed the kept-alive connection
            if self._upstream is None:
                self._upstream = http.client.HTTPConnection("127.0.0.1", self.store._moto_port,
                                                            timeout=60)
            try:
                self._upstream.request(self.command, self.path, body=body, headers=headers)
                return self._upstream.getresponse()
            except (http.client.HTTPException, OSError):
                self._upstream.close()
                self._upstream = None
        return None

    def _relay(self, resp: http.client.HTTPResponse):
        length = resp.getheader("Content-Length")
        no_body = self.command == "HEAD" or resp.status in (204, 304)
        data = resp.read() if length is None and not no_body else None
        self.send_response(resp.status, resp.reason)
        for k, v in resp.getheaders():
            if k.lower() not in _HOP_BY_HOP and k.lower() not in ("date", "server"):
                self.send_header(k, v)
        if data is not None:
            length = str(len(data))
        if length is not None:
            self.send_header("Content-Length", length)
        self.end_headers()
        if data is not None:
            self.wfile.write(data)
        elif no_body:
            resp.read()
        else:  # stream a body of known length
            while chunk := resp.read(1 << 20):
                self.wfile.write(chunk)
        if resp.will_close:
            self._upstream.close()
            self._upstream = None

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = do_PATCH = do_OPTIONS = _handle

    def finish(self):
        if self._upstream is not None:
            self._upstream.close()
        try:
            super().finish()
        except (OSError, ValueError):
            pass


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        pass  # clients hanging up (a killed run, a reset) are part of the tests


class ObjectStore:
    """moto_server plus a counting, fault-injecting proxy; see the module docstring."""

    def __init__(self, region: str = "us-east-1"):
        self.region = region
        self._lock = threading.Lock()
        self._requests: list[Request] = []
        self._faults: list[list] = []  # [kind-or-ANY, remaining, fault, key_contains]
        self._moto: subprocess.Popen | None = None
        self._server: ThreadingHTTPServer | None = None
        self._moto_port = 0

    # --- lifecycle ------------------------------------------------------------------------
    def __enter__(self) -> ObjectStore:
        atexit.register(self.close)
        try:
            self._start_moto()
            handler = type("Handler", (_Proxy,), {"store": self})
            self._server = _QuietServer(("127.0.0.1", 0), handler)  # daemon threads
            threading.Thread(target=self._server.serve_forever, name="objectstore-proxy",
                             daemon=True).start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()

    def _start_moto(self, timeout: float = 30.0):
        self._moto_port = _free_port()
        self._log = tempfile.TemporaryFile()
        self._moto = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self._moto_port)],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._moto.poll() is not None:
                break
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self._moto_port, timeout=2)
                conn.request("GET", "/")
                conn.getresponse().read()
                conn.close()
                return
            except OSError:
                time.sleep(0.1)
        self._log.seek(0)
        tail = self._log.read().decode(errors="replace")[-2000:]
        raise RuntimeError(f"moto_server did not start on port {self._moto_port} within "
                           f"{timeout:.0f}s (exit code {self._moto.poll()}):\n{tail}")

    def close(self):
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._moto is not None:
            self._moto.terminate()
            try:
                self._moto.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._moto.kill()
                self._moto.wait()
            self._moto = None
            self._log.close()
        atexit.unregister(self.close)

    # --- what clients need ------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": self.region,
                "AWS_DEFAULT_REGION": self.region}

    # --- uncounted helpers (straight to moto) ---------------------------------------------
    def _client(self):
        import boto3
        return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{self._moto_port}",
                            aws_access_key_id="testing", aws_secret_access_key="testing",
                            region_name=self.region)

    def create_bucket(self, name: str):
        self._client().create_bucket(Bucket=name)

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self._client().get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                           Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def get(self, bucket: str, key: str) -> bytes:
        return self._client().get_object(Bucket=bucket, Key=key)["Body"].read()

    def put(self, bucket: str, key: str, data: bytes) -> str:
        """Upload straight to moto (not counted); returns the object's s3:// URL."""
        self._client().put_object(Bucket=bucket, Key=key, Body=data)
        return f"s3://{bucket}/{key}"

    # --- counting ----------------------------------------------------------------------------
    def _record(self, request: Request):
        with self._lock:
            self._requests.append(request)

    def requests(self) -> list[Request]:
        """Every request the proxy has seen since the last reset, in arrival order."""
        with self._lock:
            return list(self._requests)

    def counts(self) -> dict[str, int]:
        """Requests by kind: PUT (parts included), GET (objects), HEAD, LIST, DELETE, POST."""
        c = Counter(_kind(r.method, r.key) for r in self.requests())
        return {k: c[k] for k in ("PUT", "GET", "HEAD", "LIST", "DELETE", "POST")}

    def puts_per_key(self) -> Counter:
        """key -> successful writes of it: object PUTs (copies included; not parts, ?tagging, ?acl)
        and completed multipart uploads (`POST ?uploadId`). Failed/faulted attempts don't count."""
        writes = Counter()
        for r in self.requests():
            ops = set(r.op.split("&")) - {"", "x-id"}
            if r.key and 200 <= r.status < 300 and (
                    (r.method == "PUT" and not ops)
                    or (r.method == "POST" and ops == {"uploadId"})):
                writes[r.key] += 1
        return writes

    def reset_counts(self):
        with self._lock:
            self._requests.clear()

    # --- fault injection ---------------------------------------------------------------------
    def inject(self, method: str, count: int, kind: str, key_contains: str = ""):
        """Fail the next `count` requests of `method` ("PUT", "GET" (object), "LIST", "HEAD",
        "POST", "DELETE" or "ANY") whose key contains `key_contains`, with `kind`: "503"
        (SlowDown), "403" (AccessDenied) or "reset" (connection closed, no response)."""
        if kind not in ("503", "403", "reset"):
            raise ValueError(f"unknown fault kind {kind!r}")
        with self._lock:
            self._faults.append([method.upper(), count, kind, key_contains])

    def clear_faults(self):
        with self._lock:
            self._faults.clear()

    def faults_left(self) -> int:
        with self._lock:
            return sum(f[1] for f in self._faults)

    def _take_fault(self, kind: str, key: str) -> str | None:
        with self._lock:
            for f in self._faults:
                if f[1] > 0 and f[0] in ("ANY", kind) and f[3] in key:
                    f[1] -= 1
                    return f[2]
        return None
