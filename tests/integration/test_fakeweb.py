"""FakeWeb itself, read with a plain http.client (no guards), so its faults are what they claim."""
import http.client
import io
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image

from pipeline.testing.fakeweb import FakeWeb, make_image


def get(web: FakeWeb, path: str, host: str = "127.0.0.1", timeout: float = 5.0):
    """(status, headers, body) of one GET; a body cut short comes back as what arrived."""
    connection = http.client.HTTPConnection(host, web.port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        try:
            body = response.read()
        except http.client.IncompleteRead as err:
            body = err.partial
        return response.status, response.headers, body
    finally:
        connection.close()


def test_generated_images_are_deterministic(fakeweb):
    status, headers, body = get(fakeweb, "/img/cat.jpg?w=120&h=80")
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    assert Image.open(io.BytesIO(body)).size == (120, 80)
    assert get(fakeweb, "/img/cat.jpg?w=120&h=80")[2] == body == make_image("cat.jpg", "jpg", 120, 80)
    png = get(fakeweb, "/img/dog.png?color=ff0000")[2]
    assert Image.open(io.BytesIO(png)).format == "PNG"
    assert Image.open(io.BytesIO(png)).convert("RGB").getpixel((0, 0)) == (255, 0, 0)


def test_registered_routes_and_second_hostname(fakeweb):
    fakeweb.add_page("/page.html", "<img src='/img/a.jpg' alt='an apple'>")
    fakeweb.add_robots("User-agent: *\nDisallow: /private/\n")
    fakeweb.add_file("/gone.jpg", b"", status=410)
    fakeweb.add_image("/custom.png", make_image("custom", "png"))
    assert get(fakeweb, "/page.html", host="localhost")[2].startswith(b"<img")
    assert b"Disallow: /private/" in get(fakeweb, "/robots.txt")[2]
    assert get(fakeweb, "/gone.jpg")[0] == 410
    assert get(fakeweb, "/custom.png")[1]["Content-Type"] == "image/png"
    assert get(fakeweb, "/nothing-here")[0] == 404
    assert get(fakeweb, "/fault/redirect/not-a-number/x.jpg")[0] == 400
    assert fakeweb.url("/x", host="localhost").startswith("http://localhost:")


def test_counts_are_per_path_and_thread_safe(fakeweb):
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: get(fakeweb, "/img/counted.jpg?w=8&h=8"), range(40)))
    assert fakeweb.count("/img/counted.jpg") == 40
    assert fakeweb.count(fakeweb.url("/img/counted.jpg?w=1")) == 40


def test_status_faults(fakeweb):
    assert get(fakeweb, "/fault/404/a.jpg")[0] == 404
    status, headers, _ = get(fakeweb, "/fault/429/a.jpg?retry_after=7")
    assert status == 429 and headers["Retry-After"] == "7"


def test_flaky_succeeds_on_the_nth_request(fakeweb):
    statuses = [get(fakeweb, "/fault/flaky/3/f.jpg?code=429")[0] for _ in range(4)]
    assert statuses == [429, 429, 200, 200]


def test_redirect_chain_and_targets(fakeweb):
    status, headers, _ = get(fakeweb, "/fault/redirect/2/r.jpg")
    assert status == 302 and headers["Location"] == "/fault/redirect/1/r.jpg"
    assert get(fakeweb, "/fault/redirect/0/r.jpg")[0] == 200
    assert get(fakeweb, "/fault/loop/a/l.jpg")[1]["Location"] == "/fault/loop/b/l.jpg"
    assert get(fakeweb, "/fault/redirect-to/t.jpg?to=http://10.0.0.1/x")[1]["Location"] == "http://10.0.0.1/x"


def test_body_faults(fakeweb, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # let PIL report the bomb's declared size
    status, headers, body = get(fakeweb, "/fault/truncated/t.jpg")
    assert int(headers["Content-Length"]) == len(body) + 1000
    assert Image.open(io.BytesIO(get(fakeweb, "/fault/bomb/b.png")[2])).size == (30000, 30000)
    assert Image.open(io.BytesIO(get(fakeweb, "/fault/bomb/b.jpg")[2])).size == (30000, 30000)
    corrupt = get(fakeweb, "/fault/corrupt/c.jpg")
    assert corrupt[1]["Content-Type"] == "image/jpeg" and len(corrupt[2]) == 2048
    assert get(fakeweb, "/fault/html/h.jpg")[1]["Content-Type"] == "text/html"
    assert get(fakeweb, "/fault/xrobots/img2dataset%3A%20noai/x.jpg")[1]["X-Robots-Tag"] == "img2dataset: noai"
    assert get(fakeweb, "/fault/noimageai/x.jpg")[1]["X-Robots-Tag"] == "noimageai"
    headers, body = get(fakeweb, "/fault/large/300000/l.jpg")[1:]
    assert headers["Content-Length"] == "300000" and len(body) == 300000
    headers, body = get(fakeweb, "/fault/large-nolength/300000/l.jpg")[1:]
    assert "Content-Length" not in headers and len(body) == 300000


def test_slow_and_drip_really_are_slow(fakeweb):
    start = time.monotonic()
    assert get(fakeweb, "/fault/slow/300/s.jpg")[0] == 200
    assert time.monotonic() - start >= 0.3
    connection = http.client.HTTPConnection("127.0.0.1", fakeweb.port, timeout=5)
    connection.request("GET", "/fault/drip/100/d.jpg")
    response = connection.getresponse()
    start = time.monotonic()
    assert len(response.read(3)) == 3 and time.monotonic() - start >= 0.15
    connection.close()
    start = time.monotonic()
    assert get(fakeweb, "/fault/drip-headers/5/dh.jpg")[0] == 200
    assert time.monotonic() - start >= 0.3


def test_endless_body_stops_at_the_server_cap():
    with FakeWeb(stream_cap_s=0.5) as web:
        start = time.monotonic()
        status, headers, body = get(web, "/fault/endless/e.jpg")
        assert status == 200 and "Content-Length" not in headers and len(body) > 10_000
        assert time.monotonic() - start < 3.0


@pytest.mark.parametrize("host", ["127.0.0.2"])
def test_serves_on_other_loopback_addresses(host):
    with FakeWeb(host) as web:
        assert web.url("/a").startswith(f"http://{host}:")
        assert get(web, "/img/a.jpg", host=host)[0] == 200
        assert web.connections == 1


def test_serves_https(tmp_path):
    pytest.importorskip("cryptography")
    import ssl

    from pipeline.testing.content import make_self_signed_cert

    cert, key = make_self_signed_cert(str(tmp_path))
    with FakeWeb(tls=(cert, key)) as web:
        assert web.url("/a").startswith("https://127.0.0.1:")
        connection = http.client.HTTPSConnection("127.0.0.1", web.port, timeout=5,
                                                 context=ssl.create_default_context(cafile=cert))
        connection.request("GET", "/img/tls.jpg")
        assert connection.getresponse().read()[:2] == b"\xff\xd8"
        connection.close()
