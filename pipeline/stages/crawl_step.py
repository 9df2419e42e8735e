"""crawl: a source step. Its pairs (url, text = alt, title, figcaption, page_url, depth) join
the input at ingest and then go through every stage like ingested rows."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from pipeline.core import parts, storage
from pipeline.crawl.crawler import crawl


SECTION = "crawl"


@dataclass
class CrawlSettings:
    seeds: list[str] = field(default_factory=list)
    max_pages: int = 100_000
    max_depth: int = 3
    same_domain: bool = True
    respect_robots: bool = True
    user_agent: str = "curate-bot/0.1 (+https://github.com/curate)"
    timeout: float = 10.0
    concurrency: int = 16
    per_host_limit: int = 2
    enabled: bool = True


SETTINGS = CrawlSettings


def run_crawl(settings, allow_networks: list[str], run_dir: str, log=print) -> str:
    """Crawl once (a rerun reuses the finished crawl); returns the pairs file."""
    step_dir = storage.join(run_dir, "steps", "crawl")
    pairs_path = storage.join(step_dir, "pairs.parquet")
    if storage.marker_exists(storage.join(step_dir, storage.SUCCESS)):
        return pairs_path
    table = crawl(settings.seeds, max_pages=settings.max_pages, max_depth=settings.max_depth,
                  same_domain=settings.same_domain, respect_robots=settings.respect_robots,
                  user_agent=settings.user_agent, allow_networks=allow_networks,
                  timeout=settings.timeout, concurrency=settings.concurrency,
                  per_host_limit=settings.per_host_limit)
    stats = json.loads((table.schema.metadata or {}).get(b"curate.crawl.stats", b"{}"))
    parts.write_parquet(table.replace_schema_metadata(None), pairs_path)
    storage.write_json({"pairs": table.num_rows, **stats}, storage.join(step_dir, "stats.json"))
    storage.write_text(storage.join(step_dir, storage.SUCCESS), "")
    log(f"{'crawl':>15}: {table.num_rows:,} pairs from {stats.get('pages_fetched', '?')} pages")
    return pairs_path
