"""The crawler against a generated site on a real loopback HTTP server (see pipeline/testing/testsite.py)."""
import itertools
import json
import socketserver
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipeline.crawl import crawler
from pipeline.crawl.crawler import CRAWL_SCHEMA, STATS_METADATA_KEY, crawl, guarded_fetch, parse_networks
from pipeline.download import safe_fetch
from pipeline.download.addresses import address_allowed
from pipeline.download.reasons import FetchTimeout, classify_error
from pipeline.errors import UserError
from pipeline.testing.fakeweb import FakeWeb
from pipeline.testing.testsite import Response, serve_generated_site

LOOPBACK = ["127.0.0.0/8", "::1/128"]
SPECIAL_PAIR_PAGES = ("noindex", "noimageindex", "noai", "xrobots", "secret", "hidden")


def run(server, **options):
    options = {"allow_networks": LOOPBACK, "max_depth": 3, **options}
    return crawl([server.origin + "/"], **options)


def stats(table) -> dict:
    return json.loads(table.schema.metadata[STATS_METADATA_KEY])


def page_requests(server, host="127.0.0.1") -> list[str]:
    return [p for p in server.requested_paths(host) if p != "/robots.txt"]


def test_crawl_finds_pairs_breadth_first_and_honours_meta_robots():
    with serve_generated_site(15) as server:
        table = run(server)
    assert table.schema.remove_metadata() == CRAWL_SCHEMA
    rows = table.to_pylist()
    depths = [row["depth"] for row in rows]
    assert depths == sorted(depths) and set(depths) == {0, 1, 2, 3}
    home = server.origin + "/"
    assert rows[:2] == [
        {"url": f"{server.origin}/img/0/a.jpg", "text": "A photo of item 0", "title": None,
         "figcaption": None, "page_url": home, "depth": 0},
        {"url": f"{server.origin}/img/0/b.png", "text": None, "title": "Title 0",
         "figcaption": "Caption of item 0", "page_url": home, "depth": 0}]
    by_url = {row["url"]: row for row in rows}
    assert by_url[f"{server.origin}/img/7/b.png"]["page_url"] == f"{server.origin}/p/7.html"
    assert by_url[f"{server.origin}/assets/pic.jpg"]["text"] == "based"  # <base href>
    assert f"{server.origin}/img/nofollow.jpg" in by_url  # nofollow keeps pairs...
    assert "/special/hidden.html" not in server.requested_paths()  # ...but drops links
    assert f"{server.origin}/img/from-noindex.jpg" in by_url  # noindex still follows links
    for name in SPECIAL_PAIR_PAGES:
        assert f"{server.origin}/img/{name}.jpg" not in by_url
    assert not any("inline" == row["text"] or "text.jpg" in row["url"] for row in rows)
    assert len(by_url) == len(rows)  # /redirect/1 -> /p/1.html is not counted twice
    assert stats(table)["pages_duplicate"] == 1 and stats(table)["pages_not_html"] == 1
    assert {ua.split("/")[0] for ua in server.user_agents} == {"CurateBot"}


def test_robots_disallowed_paths_are_never_requested():
    with serve_generated_site(7) as server:
        table = run(server)
        assert not [p for p in server.requested_paths() if p.startswith("/private/")]
        assert stats(table)["robots_disallowed"] == 1
        server.requests.clear()
        table = run(server, respect_robots=False)
        assert "/private/secret.html" in server.requested_paths()
        assert "/robots.txt" not in server.requested_paths()
        assert f"{server.origin}/img/secret.jpg" in table.column("url").to_pylist()


@pytest.mark.parametrize("status,crawled", [(503, False), (500, False), (404, True)])
def test_robots_txt_errors(status, crawled):
    overrides = {"/robots.txt": Response(status=status, content_type="text/plain")}
    with serve_generated_site(7, overrides) as server:
        table = run(server)
    assert (table.num_rows > 0) is crawled
    assert ("/private/secret.html" in server.requested_paths()) is crawled
    if not crawled:
        assert server.requested_paths() == ["/robots.txt"]


def test_crawl_delay_from_robots_txt_spaces_requests():
    robots = Response(body=b"User-agent: *\nCrawl-delay: 0.1\n", content_type="text/plain")
    with serve_generated_site(7, {"/robots.txt": robots}) as server:
        start = time.monotonic()
        run(server, max_pages=4, per_host_limit=4)
        assert time.monotonic() - start >= 0.3  # 4 page starts, 0.1 s apart (across BFS levels too)


def test_max_pages_takes_the_first_pages_in_bfs_order():
    with serve_generated_site(15) as server:
        table = run(server, max_pages=5)
    paths = page_requests(server)
    assert len(paths) == 5
    assert sorted(paths) == ["/", "/missing.html", "/notes.txt", "/p/1.html", "/p/2.html"]
    assert stats(table)["pages_fetched"] == 5


@pytest.mark.parametrize("max_depth,expected_pages", [(0, 1), (1, 13), (2, 18)])
def test_max_depth(max_depth, expected_pages):
    with serve_generated_site(15) as server:
        table = run(server, max_depth=max_depth)
    assert len(page_requests(server)) == expected_pages
    assert max(table.column("depth").to_pylist()) == max_depth
    assert ("/p/3.html" in page_requests(server)) is (max_depth >= 2)


def test_same_domain_keeps_the_crawl_on_the_seed_host():
    with serve_generated_site(7) as server:
        table = run(server)
        assert server.requested_paths("localhost") == []
        assert not any("localhost" in url for url in table.column("page_url").to_pylist())
        server.requests.clear()
        table = run(server, same_domain=False)
        assert sorted(page_requests(server, "localhost")) == ["/other/0.html", "/other/1.html"]
    rows = {row["url"]: row for row in table.to_pylist()}
    other = rows[f"{server.other_origin}/img/other.jpg"]
    assert other["text"] == "other host picture" and other["depth"] == 1
    assert rows[f"{server.other_origin}/other/o1.jpg"]["depth"] == 2


def test_redirect_out_of_scope_is_not_followed():
    with serve_generated_site(3) as server:
        server.site["/redirect/1"] = Response(
            status=302, headers=(("Location", server.other_origin + "/other/0.html"),))
        table = run(server, max_depth=1)
    assert server.requested_paths("localhost") == []
    assert stats(table)["pages_redirect_refused"] == 1


def test_two_crawls_give_identical_tables():
    with serve_generated_site(63) as server:
        first = run(server, max_depth=10, concurrency=16, per_host_limit=8)
        second = run(server, max_depth=10, concurrency=3, per_host_limit=1)
    assert first.num_rows > 100
    assert first.equals(second)


def test_loopback_is_refused_unless_allowed():
    with serve_generated_site(3) as server:
        table = crawl([server.origin + "/"], respect_robots=False)
        assert table.num_rows == 0 and server.requests == []
        assert stats(table)["pages_failed"] == 1
    assert not address_allowed("10.1.2.3", ()) and not address_allowed("169.254.169.254", ())
    assert not address_allowed("::ffff:127.0.0.1", ()) and not address_allowed("224.0.0.1", ())
    assert not address_allowed("100.64.0.1", ()) and address_allowed("8.8.8.8", ())
    assert address_allowed("10.1.2.3", parse_networks(["10.0.0.0/8"]))
    for bad in ({"seeds": ["ftp://example.org/"]}, {"allow_networks": ["not-a-cidr"]},
                {"max_depth": -1}):
        with pytest.raises(UserError):
            crawl(**{"seeds": ["http://example.org/"], **bad})


class _EndlessHandler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        try:
            while True:
                self.wfile.write(b"<p>" + b"x" * 1000)
                self.wfile.flush()
                time.sleep(0.01)
        except OSError:
            pass

    def log_message(self, *args):
        pass


def test_endless_body_is_cut_by_total_timeout_and_byte_cap():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EndlessHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        start = time.monotonic()
        with pytest.raises(FetchTimeout):
            guarded_fetch(LOOPBACK, timeout=0.5)(url)
        assert time.monotonic() - start < 2
        status, _, body = guarded_fetch(LOOPBACK, timeout=5, max_bytes=5000)(url)
        assert status == 200 and len(body) == 5000
    finally:
        server.shutdown()
        server.server_close()


class DripServer(socketserver.ThreadingTCPServer):
    """A raw HTTP server on 127.0.0.1: to every request it sends `head` at once, then `drip`
    one byte per `interval` seconds, then drip's last byte again and again, until the client
    hangs up, the server stops, or `give_up_s` passes (so a regression fails, not hangs)."""

    daemon_threads = True

    def __init__(self, head: bytes, drip: bytes, interval: float = 0.2, give_up_s: float = 30.0):
        super().__init__(("127.0.0.1", 0), _DripHandler)  # listening now: connects queue
        self.head, self.drip, self.interval, self.give_up_s = head, drip, interval, give_up_s
        self.paths: list[str] = []
        self.dripped = 0
        self.stopping = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"

    def __enter__(self):
        threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        self.shutdown()
        self.server_close()


class _DripHandler(socketserver.BaseRequestHandler):
    def handle(self):
        server, sock = self.server, self.request
        sock.settimeout(10)
        request = b""
        while b"\r\n\r\n" not in request:
            data = sock.recv(4096)
            if not data:
                return
            request += data
        server.paths.append(request.split(b" ")[1].decode())
        give_up = time.monotonic() + server.give_up_s
        try:
            sock.sendall(server.head)
            for byte in itertools.chain(server.drip, itertools.repeat(server.drip[-1])):
                if server.stopping.wait(server.interval) or time.monotonic() > give_up:
                    return
                sock.sendall(bytes([byte]))
                server.dripped += 1
        except OSError:
            pass  # the client hung up


HEADER_DRIP = (b"", b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nX-Drip: a")
BODY_DRIP = (b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n", b"<p>x")


@pytest.mark.parametrize("head, drip", [HEADER_DRIP, BODY_DRIP], ids=["headers", "body"])
def test_timeout_bounds_a_response_dripped_byte_by_byte(head, drip):
    with DripServer(head, drip) as server:
        start = time.monotonic()
        with pytest.raises(FetchTimeout) as info:
            guarded_fetch(LOOPBACK, timeout=1)(server.url)
        seconds = time.monotonic() - start
    assert classify_error(info.value) == "timeout"
    assert 0.9 <= seconds < 1 + 5
    assert server.dripped >= 2  # each byte came well within a socket read's timeout


def test_crawl_ends_dripping_pages_and_robots_txt_by_the_timeout():
    with DripServer(*HEADER_DRIP) as server:
        start = time.monotonic()
        table = crawl([server.url], allow_networks=LOOPBACK, timeout=1, respect_robots=False)
        page_seconds = time.monotonic() - start
        assert server.paths == ["/"]
        start = time.monotonic()
        robots_table = crawl([server.url], allow_networks=LOOPBACK, timeout=1)
        robots_seconds = time.monotonic() - start
        assert server.paths == ["/", "/robots.txt"]
    assert table.num_rows == 0 and stats(table)["pages_failed"] == 1
    assert robots_table.num_rows == 0 and stats(robots_table)["robots_disallowed"] == 1
    assert stats(robots_table)["pages_fetched"] == 0
    assert page_seconds < 1 + 10 and robots_seconds < 1 + 10  # a first crawl also imports


def test_https_fetch_ends_by_the_timeout(tmp_path, monkeypatch):
    pytest.importorskip("cryptography")
    from pipeline.testing.content import make_self_signed_cert

    cert, key = make_self_signed_cert(str(tmp_path))
    monkeypatch.setattr(crawler, "deadline_tls_context", lambda: safe_fetch.deadline_tls_context(cert))
    with FakeWeb(tls=(cert, key)) as web:
        status, _, body = guarded_fetch(LOOPBACK, timeout=5)(web.url("/fault/html/page.html"))
        assert status == 200 and b"no image" in body
        start = time.monotonic()
        with pytest.raises(FetchTimeout):  # the status line and headers, one byte per 0.2 s
            guarded_fetch(LOOPBACK, timeout=1)(web.url("/fault/drip-headers/200/slow.jpg"))
        assert 0.9 <= time.monotonic() - start < 1 + 5


def test_throughput_on_loopback():
    with serve_generated_site(1000) as server:
        start = time.perf_counter()
        table = run(server, max_depth=20)
        seconds = time.perf_counter() - start
    pages = stats(table)["pages_fetched"]
    assert pages >= 1000
    print(f"\ncrawl throughput: {pages} pages in {seconds:.2f} s = {pages / seconds:.0f} pages/s "
          f"(loopback, server in-process, concurrency 16, per_host_limit 2)")
