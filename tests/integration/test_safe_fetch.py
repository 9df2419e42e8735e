"""The guarded opener against a real loopback server (pipeline.download.safe_fetch)."""
import socket
import time
import urllib.request

import pytest

from pipeline.download import reasons
from pipeline.download.addresses import check_peer
from pipeline.download.reasons import is_transient
from pipeline.download.safe_fetch import FetchPolicy, fetch, install_guarded_opener
from pipeline.testing.fakeweb import FakeWeb
from tests.unit.test_safe_fetch import LOCAL, policy, reason_of


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
