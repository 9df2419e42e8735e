"""ChatServer: a real threaded HTTP server on loopback that speaks OpenAI's chat-completions
protocol with image input (what vLLM serves), with faults injected per image.

    with ChatServer() as server:
        server.fail(jpg_bytes, ["503", "hang"])    # the image's first two requests fail
        ... OpenAIChatCaptioner(server.url, "m", "describe") ...
        assert server.attempts(jpg_bytes) == 3

The caption of an image is `caption_of(image)` (`a picture <first 8 hex of its sha256>`), plus
` | <the prompt>` with `echo_prompt`. An image's n-th request does its n-th planned action, then
`ok`:

    ok          200 with a chat completion
    503, 429, 500, 400, ...   that status (429 and 503 with Retry-After: 0)
    hang        no answer until the server stops (the client's deadline must end it)
    malformed   200 with a body that is not JSON
    no_choices  200 with JSON without `choices`
    empty       200 with an empty caption
    close       the connection closed without a status line
    gate        waits until `gate_parties` requests are inside at once (proves concurrency), then ok
"""
from __future__ import annotations

import base64
import hashlib
import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional


def digest_of(image: bytes) -> str:
    return hashlib.sha256(image).hexdigest()


def caption_of(image: bytes) -> str:
    return f"a picture {digest_of(image)[:8]}"


class ChatServer:
    def __init__(self, host: str = "127.0.0.1", echo_prompt: bool = False, gate_parties: int = 0):
        self.host, self.echo_prompt = host, echo_prompt
        self.plans: dict[str, list[str]] = {}
        self.counts: Counter = Counter()
        self.requests: list[dict] = []          # every request's JSON body
        self.authorizations: list = []          # every request's Authorization header (None: none)
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.gate = threading.Barrier(gate_parties) if gate_parties else None
        self.in_flight = self.max_in_flight = 0
        self.server: Optional[ThreadingHTTPServer] = None

    def __enter__(self) -> "ChatServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "ChatServer":
        handler = type("Handler", (_Handler,), {"chat": self})
        self.server = ThreadingHTTPServer((self.host, 0), handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        if self.gate is not None:
            self.gate.abort()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.server.server_address[1]}/v1"

    def fail(self, image_or_prompt: bytes | str, actions: list[str]) -> None:
        """The first requests with this image (or exactly this prompt: a rewrite prompt names
        the row's alt-text) do `actions`, one each; the rest answer."""
        self.plans[_key(image_or_prompt)] = list(actions)

    def attempts(self, image_or_prompt: bytes | str) -> int:
        return self.counts[_key(image_or_prompt)]

    def next_action(self, prompt: str, image: bytes) -> str:
        with self.lock:
            key = _key(prompt) if _key(prompt) in self.plans else _key(image)
            attempt = self.counts[key]
            self.counts[key] += 1
            plan = self.plans.get(key, [])
            return plan[attempt] if attempt < len(plan) else "ok"


def _key(image_or_prompt: bytes | str) -> str:
    if isinstance(image_or_prompt, str):
        return "prompt:" + image_or_prompt
    return digest_of(image_or_prompt)


class _Handler(BaseHTTPRequestHandler):
    chat: ChatServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass

    def do_POST(self):
        chat = self.chat
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        with chat.lock:
            chat.requests.append(body)
            chat.authorizations.append(self.headers.get("Authorization"))
            chat.in_flight += 1
            chat.max_in_flight = max(chat.max_in_flight, chat.in_flight)
        try:
            self.answer(body)
        finally:
            with chat.lock:
                chat.in_flight -= 1

    def answer(self, body: dict) -> None:
        chat = self.chat
        if not self.path.endswith("/chat/completions"):
            return self.send(404, b'{"error": "not found"}')
        prompt, image = request_parts(body)
        action = chat.next_action(prompt, image)
        if action == "hang":
            chat.stopping.wait()
            return self.close_connection_now()
        if action == "close":
            return self.close_connection_now()
        if action == "gate":
            try:
                chat.gate.wait(timeout=60)
            except threading.BrokenBarrierError:
                return self.send(500, b'{"error": "gate broken"}')
            action = "ok"
        if action.isdigit():
            retry = {"Retry-After": "0"} if action in ("429", "503") else {}
            return self.send(int(action), json.dumps({"error": {"message": f"injected {action}"}}).encode(), retry)
        if action == "malformed":
            return self.send(200, b"<html>upstream error</html>")
        if action == "no_choices":
            return self.send(200, b'{"id": "x", "object": "chat.completion"}')
        text = "" if action == "empty" else caption_of(image) + (f" | {prompt}" if chat.echo_prompt else "")
        answer = {"id": "chatcmpl-1", "object": "chat.completion", "model": body.get("model"),
                  "choices": [{"index": 0, "finish_reason": "stop",
                               "message": {"role": "assistant", "content": text}}]}
        self.send(200, json.dumps(answer).encode())

    def send(self, status: int, data: bytes, headers: Optional[dict] = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def close_connection_now(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(2)
        except OSError:
            pass


def request_parts(body: dict) -> tuple[str, bytes]:
    """(the prompt, the image bytes) of a chat-completions request with one image."""
    prompt, image = "", b""
    for message in body.get("messages", []):
        content = message.get("content")
        for part in content if isinstance(content, list) else [{"type": "text", "text": content}]:
            if part.get("type") == "text":
                prompt += part.get("text") or ""
            elif part.get("type") == "image_url":
                url = part["image_url"]["url"]
                image = base64.b64decode(url.split(",", 1)[1])
    return prompt, image
