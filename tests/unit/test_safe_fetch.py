"""The guarded opener's pieces without a server: address rules, reasons, schemes
(pipeline.download); against a real loopback server: tests/integration/test_safe_fetch.py."""
import urllib.error
import urllib.request

import pytest

from pipeline.download import reasons
from pipeline.download.addresses import address_allowed
from pipeline.download.reasons import classify_error, classify_message, is_transient
from pipeline.download.safe_fetch import FetchPolicy, fetch

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
