"""robots.txt (RFC 9309): a small parser and a thread-safe per-origin cache.

Matching follows RFC 9309 / Google rather than `urllib.robotparser`: the group for our
product token (else `*`) applies, `*` and `$` work in paths, the longest matching rule wins
and Allow wins a tie. Fetch outcomes: 2xx -> parse; 4xx (404, 403, ...) -> allow all;
429, 5xx or a network error -> disallow all (the conservative reading Google uses).
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from typing import Callable, Mapping
from urllib.parse import urlsplit

from pipeline.crawl.html_extract import agent_token

# fetch(url) -> (status, headers, body); redirects already followed; raises OSError on failure
Fetch = Callable[[str], tuple[int, Mapping[str, str], bytes]]
MAX_ROBOTS_BYTES = 500 * 1024


@dataclass(frozen=True)
class Rule:
    allow: bool
    pattern: str
    regex: re.Pattern


@dataclass
class RobotsRules:
    rules: list[Rule] = field(default_factory=list)
    crawl_delay: float | None = None
    disallow_all: bool = False

    def allowed(self, path: str) -> bool:
        """Is this path (with its query) allowed? '/robots.txt' always is."""
        if path == "/robots.txt":
            return True
        if self.disallow_all:
            return False
        best: Rule | None = None
        for rule in self.rules:
            if rule.regex.match(path) and (
                    best is None or len(rule.pattern) > len(best.pattern)
                    or (len(rule.pattern) == len(best.pattern) and rule.allow)):
                best = rule
        return best is None or best.allow


ALLOW_ALL = RobotsRules()
DISALLOW_ALL = RobotsRules(disallow_all=True)


def pattern_regex(pattern: str) -> re.Pattern:
    """'/a*b$' -> regex matching paths starting with /a, anything, b, at the very end."""
    anchored = pattern.endswith("$")
    body = pattern[:-1] if anchored else pattern
    regex = ".*".join(re.escape(piece) for piece in body.split("*"))
    return re.compile(regex + (r"\Z" if anchored else ""), re.DOTALL)


def parse_lines(text: str) -> list[tuple[str, str]]:
    """(key, value) pairs of a robots.txt, comments and malformed lines dropped."""
    pairs = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        key, colon, value = line.partition(":")
        if colon:
            pairs.append((key.strip().lower().replace("_", "-"), value.strip()))
    return pairs


def group_lines(pairs: list[tuple[str, str]]) -> list[tuple[set[str], list[tuple[str, str]]]]:
    """Groups: consecutive user-agent lines, then the lines that apply to them."""
    groups: list[tuple[set[str], list[tuple[str, str]]]] = []
    in_agents = False
    for key, value in pairs:
        if key == "user-agent":
            if not in_agents:
                groups.append((set(), []))
                in_agents = True
            groups[-1][0].add((agent_token(value) or "").lower())
        elif groups and key in ("allow", "disallow", "crawl-delay"):
            groups[-1][1].append((key, value))
            in_agents = False
    return groups


def parse_robots(text: str, user_agent: str) -> RobotsRules:
    """The rules that apply to `user_agent`: its own groups merged, else the `*` groups."""
    groups = group_lines(parse_lines(text))
    token = agent_token(user_agent) or "*"
    chosen = [lines for agents, lines in groups if token in agents]
    if not chosen:
        chosen = [lines for agents, lines in groups if "*" in agents]
    rules, crawl_delay = [], None
    for lines in chosen:
        for key, value in lines:
            if key == "crawl-delay":
                try:
                    crawl_delay = float(value)
                except ValueError:
                    pass
            elif value:  # an empty Disallow means "nothing disallowed"
                path = value if value.startswith(("/", "*")) else "/" + value
                rules.append(Rule(key == "allow", path, pattern_regex(path)))
    return RobotsRules(rules=rules, crawl_delay=crawl_delay)


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
