"""robots.txt (RFC 9309): protego's parser behind a thread-safe per-origin cache.

protego follows RFC 9309 / Google rather than `urllib.robotparser`: the group for our product
token (else `*`) applies, `*` and `$` work in paths, the longest matching rule wins and Allow
wins a tie. Fetch outcomes (ours): 2xx -> parse; 4xx (404, 403, ...) -> allow all; 429, 5xx
or a network error -> disallow all (the conservative reading Google uses).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

from protego import Protego

from pipeline.crawl.html_extract import agent_token

# fetch(url) -> (status, headers, body); redirects already followed; raises OSError on failure
Fetch = Callable[[str], tuple[int, Mapping[str, str], bytes]]
MAX_ROBOTS_BYTES = 500 * 1024


@dataclass
class RobotsRules:
    parser: Any = None             # a parsed robots.txt (protego), None: no rules
    token: str = "*"               # our product token, the group that applies to us
    crawl_delay: float | None = None
    disallow_all: bool = False

    def allowed(self, path: str) -> bool:
        """Is this path (with its query) allowed? '/robots.txt' always is."""
        if path == "/robots.txt":
            return True
        if self.disallow_all:
            return False
        return self.parser is None or self.parser.can_fetch(path, self.token)


ALLOW_ALL = RobotsRules()
DISALLOW_ALL = RobotsRules(disallow_all=True)


def parse_robots(text: str, user_agent: str) -> RobotsRules:
    """The rules that apply to `user_agent`: its own groups, else the `*` groups."""
    parser = Protego.parse(text)
    token = (agent_token(user_agent) or "*").lower()
    delay = parser.crawl_delay(token)
    return RobotsRules(parser, token, float(delay) if delay is not None else None)


def rules_for_response(status: int, body: bytes, user_agent: str) -> RobotsRules:
    if 200 <= status < 300:
        text = body[:MAX_ROBOTS_BYTES].decode("utf-8", errors="replace")
        return parse_robots(text.lstrip("\ufeff"), user_agent)
    if 400 <= status < 500 and status != 429:
        return ALLOW_ALL
    return DISALLOW_ALL


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def path_of(url: str) -> str:
    parts = urlsplit(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


class RobotsCache:
    """robots.txt rules per origin, fetched once (concurrent callers wait for the first)."""

    def __init__(self, fetch: Fetch, user_agent: str):
        self.fetch = fetch
        self.user_agent = user_agent
        self._rules: dict[str, RobotsRules] = {}
        self._answers: dict[str, list | None] = {}   # origin -> [status, body] (None: unreachable)
        self._origin_locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def rules(self, url: str) -> RobotsRules:
        origin = origin_of(url)
        cached = self._rules.get(origin)
        if cached is not None:
            return cached
        with self._lock:
            origin_lock = self._origin_locks.setdefault(origin, threading.Lock())
        with origin_lock:
            if origin not in self._rules:
                self._rules[origin] = self._fetch_rules(origin)
        return self._rules[origin]

    def _fetch_rules(self, origin: str) -> RobotsRules:
        try:
            status, _headers, body = self.fetch(origin + "/robots.txt")
        except Exception:  # noqa: BLE001 - unreachable robots.txt: crawl nothing there
            self._answers[origin] = None
            return DISALLOW_ALL
        self._answers[origin] = [status, body.decode("latin-1")]
        return rules_for_response(status, body, self.user_agent)

    def answers(self) -> dict:
        """The robots.txt answers fetched so far (JSON), for `preload` in a later task."""
        return dict(self._answers)

    def preload(self, answers: dict) -> None:
        """Rules from earlier answers (`answers()`), so robots.txt is fetched once per crawl."""
        for origin, answer in answers.items():
            self._answers[origin] = answer
            self._rules[origin] = DISALLOW_ALL if answer is None else \
                rules_for_response(answer[0], answer[1].encode("latin-1"), self.user_agent)

    def cached_rules(self, url: str) -> RobotsRules | None:
        """The rules if this origin's robots.txt was already fetched; never fetches."""
        return self._rules.get(origin_of(url))

    def allowed(self, url: str) -> bool:
        return self.rules(url).allowed(path_of(url))

    def crawl_delay(self, url: str) -> float | None:
        return self.rules(url).crawl_delay
