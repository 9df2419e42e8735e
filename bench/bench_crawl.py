"""Crawl throughput: `pipeline.crawl.crawl` over a generated loopback site (>= 1,000 pages).

The site (`pipeline.testing.testsite.make_site`, a binary tree of pages with images, robots.txt
and special pages) is served from a separate process, so the server does not take the GIL
from the crawler. Reported: pages/s with the crawler's default politeness (2 connections per
host: the whole site is one host) and with 16 per host. Target: >= 200 pages/s. Beside it,
the crawl step as a run does it (`pipeline.stages.crawl_spread`: level by level on the local engine's
workers, frontier checkpointed in a run folder) on the same site: `spread_ratio` is its
pages/s over the one-process crawler's.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import parse_args, report  # noqa: E402

LOOPBACK = ["127.0.0.1/32"]


def serve(pages: int, port_pipe, stop) -> None:
    from pipeline.testing.testsite import serve_generated_site

    with serve_generated_site(pages) as server:
        port_pipe.send(server.origin)
        stop.wait()


def crawl_rate(origin: str, pages: int, per_host_limit: int) -> dict:
    from pipeline.crawl import crawl
    from pipeline.crawl.crawler import STATS_METADATA_KEY

    start = time.perf_counter()
    table = crawl([origin + "/"], max_pages=pages + 50, max_depth=30, allow_networks=LOOPBACK,
                  concurrency=16, per_host_limit=per_host_limit)
    seconds = time.perf_counter() - start
    stats = json.loads(table.schema.metadata[STATS_METADATA_KEY])
    fetched = stats["pages_fetched"]
    return {"pages": fetched, "pairs": table.num_rows, "seconds": round(seconds, 3),
            "pages_per_s": round(fetched / seconds, 1)}


def spread_rate(origin: str, pages: int, folder: str) -> dict:
    from pipeline.engines.local import LocalEngine
    from pipeline.stages.crawl_spread import CrawlOptions, crawl_on

    options = CrawlOptions(seeds=(origin + "/",), buckets=16, allow_networks=tuple(LOOPBACK),
                           user_agent="CurateBot/0.1", concurrency=16, per_host_limit=2)
    with LocalEngine(2) as engine:
        engine.map(len, [[1], [2]])   # start the workers before the clock
        start = time.perf_counter()
        _, stats = crawl_on(engine.map, folder, options, pages + 50, 30)
        seconds = time.perf_counter() - start
    return {"pages": stats["pages_fetched"], "pairs": stats["pairs"], "seconds": round(seconds, 3),
            "pages_per_s": round(stats["pages_fetched"] / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pages", type=int, default=2000)
    args = parse_args(parser, smoke={"pages": 30})
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    stop = ctx.Event()
    server = ctx.Process(target=serve, args=(args.pages, send, stop), daemon=True)
    server.start()
    try:
        origin = receive.recv()
        polite = crawl_rate(origin, args.pages, 2)
        wide = crawl_rate(origin, args.pages, 16)
        with tempfile.TemporaryDirectory() as folder:
            spread = spread_rate(origin, args.pages, folder)
    finally:
        stop.set()
        server.join(timeout=10)
    results = {"site_pages": args.pages, **{f"per_host_2_{k}": v for k, v in polite.items()},
               **{f"per_host_16_{k}": v for k, v in wide.items()},
               **{f"spread_{k}": v for k, v in spread.items()},
               "spread_ratio": round(spread["pages_per_s"] / polite["pages_per_s"], 3),
               "pages_per_s": polite["pages_per_s"], "target_pages_per_s": 200,
               "ratio": round(polite["pages_per_s"] / 200, 3)}
    report("crawl", results)


if __name__ == "__main__":
    main()
