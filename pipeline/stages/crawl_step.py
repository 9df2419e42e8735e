"""crawl: a source step. Its pairs (url, text = alt, title, figcaption, page_url, depth) join
the input at ingest and then go through every stage like ingested rows.

The crawl runs on the engine's workers, level by level, hosts spread over `tasks` buckets
(see `pipeline.stages.crawl_spread`, on the `pipeline.crawl` library); a rerun resumes at the
first unfinished task and reuses a finished crawl."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Optional

import pyarrow as pa

from pipeline import blocklist
from pipeline.blocklist import BlocklistSettings
from pipeline.core import storage
from pipeline.core.constraints import Above, AtLeast, NonEmpty
from pipeline.crawl.crawler import normalize_http_url
from pipeline.errors import UserError
from pipeline.stages.crawl_spread import CrawlOptions, crawl_on

SECTION = "crawl"


@dataclass
class CrawlSettings:
    seeds: Annotated[list[str], NonEmpty()] = field(default_factory=list)
    max_pages: Annotated[int, AtLeast(0)] = 100_000
    max_depth: Annotated[int, AtLeast(0)] = 3
    same_domain: bool = True
    respect_robots: bool = True
    user_agent: str = "curate-bot/0.1 (+https://github.com/curate)"
    timeout: Annotated[float, Above(0)] = 10.0
    concurrency: Annotated[int, AtLeast(1)] = 16
    per_host_limit: Annotated[int, AtLeast(1)] = 2
    tasks: Annotated[int, AtLeast(1)] = 16   # host buckets: at most this many crawl tasks per level
    enabled: bool = True


SETTINGS = CrawlSettings


def run_crawl(settings, allow_networks: list[str], run_dir: str, engine, log=print,
              blocked: Optional[BlocklistSettings] = None) -> list[str]:
    """Crawl once on the engine (a rerun reuses the finished crawl); returns the pairs files."""
    step_dir = storage.join(run_dir, "steps", "crawl")
    stats_path = storage.join(step_dir, "stats.json")
    if storage.marker_exists(storage.join(step_dir, storage.SUCCESS)):
        return storage.read_json(stats_path)["files"]
    if settings.max_pages < 0 or settings.max_depth < 0 or settings.concurrency < 1 \
            or settings.per_host_limit < 1 or settings.tasks < 1:
        raise UserError("crawl: max_pages and max_depth must be >= 0, concurrency, "
                        "per_host_limit and tasks >= 1")
    seeds = []
    for seed in settings.seeds:
        url = normalize_http_url(str(seed))
        if url is None:
            raise UserError(f"crawl.seeds: {seed!r} is not an http(s) URL")
        seeds.append(url)
    lists = blocked if blocked is not None and blocked.any("urls", "domains") else None
    matcher = blocklist.matcher(lists)
    if matcher is not None and matcher.urls_blocked(seeds).any():
        raise UserError("crawl.seeds: a seed is on the blocklist (its URL or domain)")
    options = CrawlOptions(seeds=tuple(seeds), buckets=settings.tasks,
                           same_domain=settings.same_domain, respect_robots=settings.respect_robots,
                           user_agent=settings.user_agent, allow_networks=tuple(allow_networks),
                           timeout=settings.timeout, concurrency=settings.concurrency,
                           per_host_limit=settings.per_host_limit, blocklist=lists)
    files, stats = crawl_on(engine.map, step_dir, options, settings.max_pages, settings.max_depth)
    storage.write_json({**stats, "files": files}, stats_path)
    storage.write_text(storage.join(step_dir, storage.SUCCESS), "")
    log(f"{'crawl':>15}: {stats['pairs']:,} pairs from {stats['pages_fetched']:,} pages")
    return files


def run_source(settings, run, run_dir: str, engine, log=print) -> list[str]:
    """The source hook: the crawl, with the run's `allow_networks` and blocklist."""
    return run_crawl(settings, run.allow_networks, run_dir, engine, log, run.blocklist)


OUTPUTS = (("title", pa.string()), ("figcaption", pa.string()), ("page_url", pa.string()))   # beside url, text
