"""The `openai` captioner: an OpenAI-compatible chat-completions endpoint with image input (how
vLLM, SGLang, TGI and most model servers are run on a cluster).

Each caption is one `POST <url>/chat/completions` whose user message holds the prompt and the
image as a base64 data URL; requests run `concurrency` at a time. A request has a deadline
(`timeout` seconds for connecting, sending and reading the whole answer, however slowly it
trickles). Transient failures (timeouts, connection errors, 408/425/429/5xx) are retried up to
`retries` times with exponential backoff (`backoff` x 2^attempt, or the server's Retry-After,
at most MAX_WAIT); anything else (another 4xx, an answer that is not chat-completions JSON, an
empty caption) is not retried. A row whose captions all failed gets an `error` line and keeps
its alt-text: captioning never drops a row. Stdlib only (`http.client`).
"""
from __future__ import annotations

import base64
import http.client
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional
from urllib.parse import urlsplit

from pipeline.captioners import Captioned, prompt_for

RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
MAX_WAIT = 30.0        # seconds: the longest backoff (or Retry-After) honoured between attempts
CHUNK = 65536


class Transient(Exception):
    """A failure worth another attempt (timeout, connection error, 429/5xx)."""

    def __init__(self, message: str, retry_after: Optional[float] = None):
        super().__init__(message)
        self.retry_after = retry_after


class Failed(Exception):
    """A failure another attempt would repeat (4xx, a malformed answer)."""


@dataclass
class OpenAIChatCaptioner:
    url: str                    # base URL, e.g. http://captioner:8000/v1 (or the full .../chat/completions)
    model: str                  # the model name the server serves
    prompt: str
    captions: int = 1
    max_tokens: int = 48
    temperature: float = 0.0
    concurrency: int = 16
    retries: int = 3
    timeout: float = 60.0
    backoff: float = 0.5
    api_key: Optional[str] = None
    seed: int = 0

    @classmethod
    def from_settings(cls, s, prompt: str, seed: int = 0) -> "OpenAIChatCaptioner":
        return cls(s.url, s.model, prompt, s.captions, s.max_new_tokens, s.temperature, s.concurrency,
                   s.retries, s.timeout, s.backoff, os.environ.get(s.api_key_env) or None, seed)

    @property
    def endpoint(self) -> str:
        base = self.url.rstrip("/")
        return base if base.endswith("/chat/completions") else base + "/chat/completions"

    def caption(self, images: list, texts: list) -> list[Captioned]:
        """Captions of every row (`captions` each), requests `concurrency` at a time."""
        jobs = [(row, i) for row in range(len(images)) for i in range(self.captions) if images[row]]
        with ThreadPoolExecutor(max(1, min(self.concurrency, len(jobs) or 1))) as pool:
            answers = list(pool.map(lambda job: self.caption_one(images[job[0]], texts[job[0]], job[1]), jobs))
        results = [Captioned(error=None if image else "no_image") for image in images]
        for (row, _), (text, seconds, error) in zip(jobs, answers):
            if text is not None:
                results[row].texts.append(text)
                results[row].seconds.append(seconds)
            elif results[row].error is None:
                results[row].error = error
        return results

    def caption_one(self, image: bytes, text: Optional[str], index: int) -> tuple:
        """(caption, seconds, None) or (None, seconds, error) for one request, retried."""
        started = time.perf_counter()
        body = json.dumps(self.request_body(image, text, index)).encode()
        attempts = self.retries + 1
        for attempt in range(attempts):
            try:
                return parse_caption(self.post(body)), time.perf_counter() - started, None
            except Failed as exc:
                return None, time.perf_counter() - started, str(exc)
            except Transient as exc:
                if attempt == attempts - 1:
                    return None, time.perf_counter() - started, f"{exc} (after {attempts} attempts)"
                wait = exc.retry_after if exc.retry_after is not None else self.backoff * 2 ** attempt
                time.sleep(min(max(wait, 0.0), MAX_WAIT))
        raise AssertionError("unreachable")

    def request_body(self, image: bytes, text: Optional[str], index: int) -> dict:
        content = [{"type": "text", "text": prompt_for(self.prompt, text)},
                   {"type": "image_url", "image_url": {"url": data_url(image)}}]
        body = {"model": self.model, "messages": [{"role": "user", "content": content}],
                "max_tokens": self.max_tokens, "temperature": self.temperature}
        if self.temperature > 0:
            body["seed"] = self.seed * 1000 + index   # several captions of a row differ, reproducibly
        return body

    def post(self, body: bytes) -> bytes:
        """The answer's body; `Transient` or `Failed` otherwise. The whole request has
        `timeout` seconds (the socket's timeout is the time left, at every read)."""
        deadline = time.monotonic() + self.timeout
        parts = urlsplit(self.endpoint)
        connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        connection = connection_class(parts.hostname, parts.port, timeout=self.timeout)
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        try:
            connection.request("POST", path, body, headers)
            _time_left(connection, deadline)
            response = connection.getresponse()
            data = b""
            while True:
                _time_left(connection, deadline)
                chunk = response.read1(CHUNK) if hasattr(response, "read1") else response.read(CHUNK)
                if not chunk:
                    break
                data += chunk
        except (TimeoutError, OSError, http.client.HTTPException) as exc:
            if isinstance(exc, TimeoutError) or "timed out" in str(exc):
                raise Transient(f"timeout: no whole answer within {self.timeout:g} s") from None
            raise Transient(f"connection error: {type(exc).__name__}: {exc}"[:200]) from None
        finally:
            connection.close()
        if response.status in RETRYABLE_STATUS:
            raise Transient(f"http {response.status}", _retry_after(response.getheader("Retry-After")))
        if response.status != 200:
            raise Failed(f"http {response.status}: {data[:120].decode('utf-8', 'replace')}")
        return data


def _time_left(connection, deadline: float) -> None:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("deadline")
    if connection.sock is not None:
        connection.sock.settimeout(left)


def _retry_after(value: Optional[str]) -> Optional[float]:
    try:
        return float(value) if value is not None else None
    except ValueError:   # an HTTP date: use our own backoff
        return None


def parse_caption(data: bytes) -> str:
    """The caption in a chat-completions answer; `Failed` for anything malformed."""
    try:
        answer = json.loads(data)
        content = answer["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise Failed(f"malformed answer: {data[:80].decode('utf-8', 'replace')!r}") from None
    if isinstance(content, list):   # content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if not isinstance(content, str) or not content.strip():
        raise Failed("malformed answer: empty caption")
    return " ".join(content.split())


def data_url(image: bytes) -> str:
    """The image as a base64 data URL, its media type from its first bytes."""
    return f"data:{media_type(image)};base64,{base64.b64encode(image).decode('ascii')}"


def media_type(image: bytes) -> str:
    if image[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if image[:4] == b"RIFF" and image[8:12] == b"WEBP":
        return "image/webp"
    if image[:4] in (b"GIF8",):
        return "image/gif"
    return "image/jpeg"
