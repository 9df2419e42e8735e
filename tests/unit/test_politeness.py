import threading
import time
from collections import Counter

from pipeline.crawl.politeness import PoliteRunner


def test_results_keep_input_order_and_per_host_limit_holds():
    lock = threading.Lock()
    in_flight, peak = Counter(), Counter()

    def work(url):
        host = url.split("/")[2]
        with lock:
            in_flight[host] += 1
            peak[host] = max(peak[host], in_flight[host])
        time.sleep(0.01)
        with lock:
            in_flight[host] -= 1
        return url.upper()

    urls = [f"http://h{i % 3}.org/{i}" for i in range(30)]
    runner = PoliteRunner(concurrency=8, per_host_limit=2)
    try:
        assert runner.map(urls, work) == [u.upper() for u in urls]
    finally:
        runner.close()
    assert set(peak.values()) == {2}


def test_delay_spaces_request_starts_per_host():
    starts = []
    runner = PoliteRunner(concurrency=4, per_host_limit=4, delay_for=lambda url: 0.05)
    try:
        urls = [f"http://a.org/{i}" for i in range(4)]
        runner.map(urls, lambda url: starts.append(time.monotonic()))
    finally:
        runner.close()
    starts.sort()
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert min(gaps) >= 0.04
