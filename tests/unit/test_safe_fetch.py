"""The guarded opener against a real loopback server (pipeline.download.safe_fetch)."""
import socket
import time
import urllib.error
import urllib.request

import pytest

from pipeline.download import reasons
from pipeline.download.reasons import classify_error, classify_message, is_transient
from pipeline.download.addresses import address_allowed, check_peer
from pipeline.download.safe_fetch import FetchPolicy, fetch, install_guarded_opener
from pipeline.testing.fakeweb import FakeWeb

LOCAL = ("127.0.0.1/32",)


def policy(**kwargs) -> FetchPolicy:
    options = {"allow_networks": LOCAL, "max_bytes": 1_000_000, "deadline_s": 1.0, "max_redirects": 5}
    return FetchPolicy(**{**options, **kwargs})


def reason_of(url: str, fetch_policy: FetchPolicy) -> str:
    with pytest.raises(Exception) as info:
        fetch(url, fetch_policy, timeout=30)  # a per-read timeout far above the deadline
    reason = classify_error(info.value)
    assert classify_message(str(info.value)) == reason, "the message alone must classify the same"
    return reason


@pytest.mark.parametrize("address, networks, allowed", [
    ("93.184.216.34", (), True),
    ("2606:4700::1111", (), True),
    ("127.0.0.1", (), False),
    ("10.1.2.3", (), False),
    ("192.168.0.1", (), False),
    ("172.16.0.1", (), False),
    ("100.64.0.1", (), False),          # carrier-grade NAT
    ("169.254.169.254", (), False),     # link-local: cloud metadata
    ("224.0.0.1", (), False),
    ("240.0.0.1", (), False),
    ("0.0.0.0", (), False),
    ("::1", (), False),
    ("fe80::1%eth0", (), False),
    ("::ffff:127.0.0.1", (), False),
    ("127.0.0.1", LOCAL, True),
    ("127.0.0.2", LOCAL, False),
    ("::ffff:127.0.0.1", LOCAL, True),
    ("::ffff:8.8.8.8", (), True),
    ("::ffff:192.0.0.9", (), False),
    ("::127.0.0.1", (), False),         # IPv4-compatible (deprecated): refused whatever it embeds
    ("::8.8.8.8", (), False),
    ("2002:7f00:1::1", (), False),      # 6to4 of 127.0.0.1
    ("2002:a9fe:a9fe::1", (), False),   # 6to4 of 169.254.169.254
    ("2002:0a00:0001::1", (), False),   # 6to4 of 10.0.0.1
    ("2002:0808:0808::1", (), True),    # 6to4 of 8.8.8.8
    ("2002:7f00:1::1", LOCAL, True),    # judged as its IPv4 address, allow_networks included
    ("64:ff9b::7f00:1", (), False),     # NAT64 of 127.0.0.1
    ("64:ff9b::a9fe:a9fe", (), False),  # NAT64 of 169.254.169.254
    ("64:ff9b::808:808", (), True),     # NAT64 of 8.8.8.8
    ("64:ff9b::7f00:1", LOCAL, True),
    ("fec0::1", (), False),             # site-local (deprecated)
    ("fec0::1", ("fec0::/10",), True),
    ("192.0.0.1", (), False),           # IETF protocol assignments
    ("192.0.0.9", (), False),
    ("192.0.0.9", ("192.0.0.0/24",), True),
    ("2001::1", (), False),             # Teredo: refused outright
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", (), False),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", ("2001::/32",), True),
])
def test_address_allowed(address, networks, allowed):
    nets = FetchPolicy(allow_networks=networks).networks
    assert address_allowed(address, nets) is allowed


@pytest.mark.parametrize("message, reason", [
    ("HTTP Error 404: Not Found", "http_404"),
    ("HTTP Error 503: Service Unavailable", "http_503"),
    ("curate:too_large: body exceeds max_bytes 10", "too_large"),
    ("<urlopen error curate:blocked_address: 10.0.0.1>", "blocked_address"),
    ("Use of image disallowed by X-Robots-Tag directive", "opt_out"),
    ("<urlopen error timed out>", "timeout"),
    ("<urlopen error [Errno 111] Connection refused>", "connection_error"),
    ("unknown url type: 'foo'", "blocked_scheme"),
    ("Image decoding error", "decode_error"),
    ("HTTP Error 302: The HTTP server returned a redirect error that would lead to an infinite loop.",
     "too_many_redirects"),
])
def test_classify_message(message, reason):
    assert classify_message(message) == reason


def test_classify_exceptions():
    assert classify_error(reasons.TooLarge("x")) == "too_large"
    assert classify_error(urllib.error.URLError(TimeoutError("timed out"))) == "timeout"
    assert classify_error(ConnectionResetError()) == "connection_error"
    assert classify_error(urllib.error.HTTPError("u", 410, "Gone", {}, None)) == "http_410"


@pytest.mark.parametrize("reason, transient", [
    ("timeout", True), ("connection_error", True), ("http_429", True), ("http_500", True),
    ("http_503", True), ("http_404", False), ("http_403", False), ("http_410", False),
    ("opt_out", False), ("blocked_address", False), ("blocked_scheme", False),
    ("too_large", False), ("decode_error", False), (None, False),
])
def test_is_transient(reason, transient):
    assert is_transient(reason) is transient


@pytest.mark.parametrize("url", ["file:///etc/passwd", "data:image/png;base64,iVBORw0KGgo=", "ftp://example.org/x.jpg"])
def test_only_http_and_https(url, connect_log):
    assert reason_of(url, policy()) == "blocked_scheme"
    assert connect_log == []


def test_loopback_refused_unless_allowed(fakeweb, connect_log):
    url = fakeweb.url("/img/refused.jpg")
    before = fakeweb.connections
    assert reason_of(url, policy(allow_networks=())) == "blocked_address"
    assert connect_log == [] and fakeweb.connections == before
    body, headers = fetch(url, policy())
    assert headers["Content-Type"] == "image/jpeg" and body[:2] == b"\xff\xd8"
    assert connect_log == ["127.0.0.1"]


def test_address_outside_allow_networks_is_never_contacted(fakeweb_other, connect_log):
    # 127.0.0.2 serves for real: only the guard stands between the client and the server.
    assert reason_of(fakeweb_other.url("/img/other.jpg"), policy()) == "blocked_address"
    assert fakeweb_other.connections == 0 and connect_log == []


@pytest.mark.parametrize("target", ["http://127.0.0.2:{port}/img/x.jpg", "http://[::1]:{port}/img/x.jpg",
                                    "http://10.0.0.1/x.jpg", "http://169.254.169.254/latest/meta-data/"])
def test_redirect_to_disallowed_address_is_blocked(fakeweb, fakeweb_other, connect_log, target):
    to = target.format(port=fakeweb_other.port)
    url = fakeweb.url(f"/fault/redirect-to/blocked.jpg?to={to}")
    assert reason_of(url, policy()) == "blocked_address"
    assert set(connect_log) == {"127.0.0.1"}
    assert fakeweb_other.connections == 0


@pytest.mark.parametrize("to", ["file:///etc/passwd", "ftp://127.0.0.1/x.jpg", "data:text/plain,x"])
def test_redirect_to_other_scheme_is_blocked(fakeweb, to):
    assert reason_of(fakeweb.url(f"/fault/redirect-to/scheme.jpg?to={to}"), policy()) == "blocked_scheme"


def test_redirects_within_cap_then_refused(fakeweb):
    body, _ = fetch(fakeweb.url("/fault/redirect/5/ok.jpg"), policy())
    assert body[:2] == b"\xff\xd8"
    assert reason_of(fakeweb.url("/fault/redirect/6/over.jpg"), policy()) == "too_many_redirects"
    assert reason_of(fakeweb.url("/fault/loop/a/loop.jpg"), policy()) == "too_many_redirects"
    assert fakeweb.count("/fault/loop/a/loop.jpg") + fakeweb.count("/fault/loop/b/loop.jpg") == 6


def test_localhost_name_connects_only_to_vetted_ip(fakeweb, connect_log):
    body, _ = fetch(fakeweb.url("/img/named.jpg", host="localhost"), policy())
    assert body[:2] == b"\xff\xd8"
    assert connect_log == ["127.0.0.1"]  # never ::1, which localhost may also resolve to


@pytest.mark.parametrize("path", ["/fault/large/5000000/declared.jpg", "/fault/large-nolength/5000000/chunked.jpg",
                                  "/fault/endless/capped.jpg"])
def test_byte_cap(fakeweb, path):
    assert reason_of(fakeweb.url(path), policy(max_bytes=100_000)) == "too_large"


@pytest.mark.parametrize("path", ["/fault/slow/3000/headers.jpg", "/fault/drip-headers/40/drip-headers.jpg",
                                  "/fault/drip/40/drip.jpg", "/fault/endless/forever.jpg"])
def test_deadline_covers_headers_and_body(fakeweb, path):
    start = time.monotonic()
    assert reason_of(fakeweb.url(path), policy(max_bytes=10**10, deadline_s=0.8)) == "timeout"
    assert time.monotonic() - start < 2.0


def test_deadline_spans_redirect_hops(fakeweb):
    to = fakeweb.url("/fault/slow/2000/after-redirect.jpg")
    start = time.monotonic()
    assert reason_of(fakeweb.url(f"/fault/redirect-to/hop.jpg?to={to}"), policy(deadline_s=0.8)) == "timeout"
    assert time.monotonic() - start < 2.0


def test_chunked_body_is_read_and_capped(fakeweb):
    body, _ = fetch(fakeweb.url("/fault/chunked/chunked.jpg?w=300&h=300"), policy())
    assert body == fetch(fakeweb.url("/img/chunked.jpg?w=300&h=300"), policy())[0]
    assert reason_of(fakeweb.url("/fault/chunked/chunked.jpg?w=300&h=300"), policy(max_bytes=1000)) == "too_large"


def test_truncated_body_is_its_own_transient_reason(fakeweb):
    assert reason_of(fakeweb.url("/fault/truncated/t.jpg"), policy()) == "truncated_body"
    assert is_transient("truncated_body") and is_transient("connection_error")


def test_peer_check_refuses_an_unexpected_peer(fakeweb):
    with socket.create_connection(("127.0.0.1", fakeweb.port)) as sock:
        check_peer(sock, "127.0.0.1", FetchPolicy(allow_networks=LOCAL).networks)
        with pytest.raises(reasons.BlockedAddress):
            check_peer(sock, "127.0.0.3", FetchPolicy(allow_networks=("127.0.0.0/8",)).networks)
        with pytest.raises(reasons.BlockedAddress):
            check_peer(sock, "127.0.0.1", FetchPolicy().networks)


def test_installed_opener_guards_urlopen(fakeweb):
    install_guarded_opener(policy())
    try:
        with pytest.raises(reasons.BlockedScheme):
            urllib.request.urlopen("file:///etc/passwd", timeout=1)
        with urllib.request.urlopen(fakeweb.url("/img/installed.jpg"), timeout=1) as response:
            assert response.read()[:2] == b"\xff\xd8"
    finally:
        urllib.request.install_opener(None)


@pytest.fixture(scope="module")
def tls_web(tmp_path_factory):
    pytest.importorskip("cryptography")
    from pipeline.testing.content import make_self_signed_cert

    cert, key = make_self_signed_cert(str(tmp_path_factory.mktemp("tls")))
    with FakeWeb(tls=(cert, key)) as web:
        web.cafile = cert
        yield web


def test_https_verifies_certificates(tls_web):
    body, _ = fetch(tls_web.url("/img/secure.jpg"), policy(cafile=tls_web.cafile))
    assert body[:2] == b"\xff\xd8"
    assert reason_of(tls_web.url("/img/untrusted.jpg"), policy()) == "connection_error"


@pytest.mark.parametrize("path", ["/fault/slow/3000/tls-slow.jpg", "/fault/drip-headers/40/tls-headers.jpg",
                                  "/fault/drip/40/tls-drip.jpg"])
def test_https_deadline(tls_web, path):
    start = time.monotonic()
    assert reason_of(tls_web.url(path), policy(cafile=tls_web.cafile, deadline_s=0.8)) == "timeout"
    assert time.monotonic() - start < 2.0


def test_https_redirect_to_blocked_address(tls_web, connect_log):
    url = tls_web.url("/fault/redirect-to/tls.jpg?to=https://10.0.0.1/x.jpg")
    assert reason_of(url, policy(cafile=tls_web.cafile)) == "blocked_address"
    assert set(connect_log) == {"127.0.0.1"}
