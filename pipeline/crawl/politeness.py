"""Run URL tasks on a thread pool, politely: a per-host cap on requests in flight and a
minimum delay between request starts to one host.

The main thread hands a task to the pool only when its host has room, so a busy host never
ties up worker threads that another host could use (no head-of-line blocking). Results come
back in the order of the input, whatever order the tasks finish in.
"""
from __future__ import annotations

import time
from collections import Counter, deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Callable, TypeVar
from urllib.parse import urlsplit

R = TypeVar("R")


def host_of(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


class PoliteRunner:
    def __init__(self, concurrency: int = 16, per_host_limit: int = 2,
                 delay_for: Callable[[str], float] = lambda url: 0.0):
        if concurrency < 1 or per_host_limit < 1:
            raise ValueError("concurrency and per_host_limit must be >= 1")
        self.concurrency = concurrency
        self.per_host_limit = per_host_limit
        self.delay_for = delay_for
        self.pool = ThreadPoolExecutor(concurrency, thread_name_prefix="crawl")
        self.next_start: dict[str, float] = {}  # host -> earliest next request start

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def map(self, urls: list[str], work: Callable[[str], R]) -> list[R]:
        """`[work(url) for url in urls]`, run concurrently under the politeness limits."""
        queues: dict[str, deque[int]] = {}
        for index, url in enumerate(urls):
            queues.setdefault(host_of(url), deque()).append(index)
        results: list = [None] * len(urls)
        running: dict[Future, tuple[int, str]] = {}
        in_flight: Counter = Counter()
        while queues or running:
            wake_at = self._launch_ready(urls, work, queues, running, in_flight)
            timeout = None if wake_at is None else max(0.0, wake_at - time.monotonic())
            if not running:
                time.sleep(timeout or 0.0)
                continue
            done, _ = wait(running, timeout=timeout, return_when=FIRST_COMPLETED)
            for future in done:
                index, host = running.pop(future)
                in_flight[host] -= 1
                results[index] = future.result()
        return results

    def _launch_ready(self, urls, work, queues, running, in_flight) -> float | None:
        """Submit every task whose host has room; return when the next delayed one is due."""
        now = time.monotonic()
        wake_at = None
        for host in list(queues):
            if len(running) >= self.concurrency:
                break
            queue = queues[host]
            while queue and in_flight[host] < self.per_host_limit \
                    and len(running) < self.concurrency:
                due = self.next_start.get(host, 0.0)
                if due > now:
                    wake_at = due if wake_at is None else min(wake_at, due)
                    break
                index = queue.popleft()
                running[self.pool.submit(work, urls[index])] = (index, host)
                in_flight[host] += 1
                delay = self.delay_for(urls[index])
                if delay > 0:
                    self.next_start[host] = now + delay
            if not queue:
                del queues[host]
        return wake_at
