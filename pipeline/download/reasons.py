"""Stable drop reasons for fetched images, and the typed refusals that carry them.

img2dataset turns every fetch exception into a string (`error_message`), so each refusal's
message starts with a stable token, `curate:<reason>: ...`, and `classify_error` works on
exceptions and on those strings alike.
"""
from __future__ import annotations

import http.client
import re
import urllib.error

TIMEOUT = "timeout"
TOO_LARGE = "too_large"
OPT_OUT = "opt_out"
BLOCKED_ADDRESS = "blocked_address"
BLOCKED_SCHEME = "blocked_scheme"
TOO_MANY_REDIRECTS = "too_many_redirects"
CONNECTION_ERROR = "connection_error"
TRUNCATED_BODY = "truncated_body"      # the body ended before its Content-Length
DECODE_ERROR = "decode_error"
IMAGE_TOO_LARGE = "image_too_large"

TOKEN_PREFIX = "curate:"
_TOKEN = re.compile(r"curate:([a-z0-9_]+):")
_HTTP_STATUS = re.compile(r"HTTP Error (\d{3})")
# Checked in order, on the lower-cased message, after the curate token and HTTP status.
_MESSAGE_RULES: tuple[tuple[str, str], ...] = (
    ("x-robots-tag", OPT_OUT),
    ("infinite loop", TOO_MANY_REDIRECTS),
    ("unknown url type", BLOCKED_SCHEME),
    ("timed out", TIMEOUT),
    ("timeout", TIMEOUT),
    ("image area too large", IMAGE_TOO_LARGE),
    ("decompression bomb", IMAGE_TOO_LARGE),
    ("decod", DECODE_ERROR),
    ("cannot identify image", DECODE_ERROR),
    ("incompleteread", TRUNCATED_BODY),
    ("urlopen error", CONNECTION_ERROR),
    ("connection", CONNECTION_ERROR),
    ("remote end closed", CONNECTION_ERROR),
)
_TRANSIENT = frozenset({TIMEOUT, CONNECTION_ERROR, TRUNCATED_BODY, "http_408", "http_425", "http_429"})


class FetchRefused(Exception):
    """A fetch refused or aborted by the guard; `reason` is the stable drop reason."""

    reason = CONNECTION_ERROR

    def __init__(self, detail: str = ""):
        super().__init__(f"{TOKEN_PREFIX}{self.reason}: {detail}")
        self.detail = detail


class FetchTimeout(FetchRefused):
    reason = TIMEOUT


class TooLarge(FetchRefused):
    reason = TOO_LARGE


class BlockedAddress(FetchRefused):
    reason = BLOCKED_ADDRESS


class BlockedScheme(FetchRefused):
    reason = BLOCKED_SCHEME


class TooManyRedirects(FetchRefused):
    reason = TOO_MANY_REDIRECTS


class BrokenBody(FetchRefused):
    """The body ended before its declared Content-Length."""

    reason = TRUNCATED_BODY


def http_reason(code: int) -> str:
    return f"http_{int(code)}"


def classify_error(error: BaseException | str, default: str = CONNECTION_ERROR) -> str:
    """Map an exception (or img2dataset's `str(exception)`) to a stable reason."""
    if isinstance(error, str):
        return classify_message(error, default)
    if isinstance(error, FetchRefused):
        return error.reason
    if isinstance(error, urllib.error.HTTPError):
        return classify_message(str(error), http_reason(error.code))
    if isinstance(error, urllib.error.URLError) and isinstance(error.reason, BaseException):
        return classify_error(error.reason, default)
    if isinstance(error, TimeoutError):
        return TIMEOUT
    if isinstance(error, http.client.IncompleteRead):
        return TRUNCATED_BODY
    if isinstance(error, (OSError, http.client.HTTPException)):
        return CONNECTION_ERROR
    return classify_message(str(error), default)


def classify_message(message: str, default: str = CONNECTION_ERROR) -> str:
    """Map an error message to a stable reason; `default` when nothing matches."""
    token = _TOKEN.search(message)
    if token:
        return token.group(1)
    lowered = message.lower()
    if "infinite loop" in lowered:  # urllib's own redirect-loop HTTPError (code 30x)
        return TOO_MANY_REDIRECTS
    status = _HTTP_STATUS.search(message)
    if status:
        return http_reason(int(status.group(1)))
    for needle, reason in _MESSAGE_RULES:
        if needle in lowered:
            return reason
    return default


def is_transient(reason: str | None) -> bool:
    """Whether a later attempt may succeed: timeouts, resets, 429 and 5xx; never 4xx/opt-out/blocked."""
    if not reason:
        return False
    if reason in _TRANSIENT:
        return True
    return reason.startswith("http_5")
