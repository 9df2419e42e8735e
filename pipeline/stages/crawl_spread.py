"""The crawl spread over workers: hosts in buckets, one BFS level at a time.

A host's site (the host without "www.") hashes to one of `buckets`, and one task at a time
crawls a bucket's pages of one level, so politeness per host (requests in flight,
Crawl-delay, robots.txt) holds as in the one-process crawler. Each level runs two phases:

  select/b  the links found at the level before that point into bucket b (the seeds, at
            level 0), less the URLs the bucket queued earlier, in scope; sorted. Writes them,
            their count, and the bucket's queued set.
  (driver)  the page budget left is shared among the buckets in proportion to their counts
            (largest remainders, ties to the lower bucket): the driver holds counts only.
  fetch/b   fetches the first k_b candidates that robots.txt allows, writes their pairs, the
            links they hold (one row group per target bucket), the final URLs (after
            redirects: a page reached twice is counted once), and the bucket's robots.txt
            answers, which its next fetch task reuses.

Every task writes a done marker last, so a killed crawl resumes at the first unfinished task,
and the pairs are the same on every engine and for any scheduling. (A redirect to another
site's page is only known as a duplicate inside its bucket; the dedup step removes any pair
that repeats.)
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable, Optional

import pyarrow as pa
import pyarrow.compute as pc

from pipeline import blocklist
from pipeline.blocklist import BlocklistSettings
from pipeline.core import parts, storage
from pipeline.core.parts import PartRef
from pipeline.crawl.crawler import CRAWL_SCHEMA, Crawler, guarded_fetch, site_key
from pipeline.crawl.politeness import host_of

URLS = pa.schema([("url", pa.string())])
LINKS = pa.schema([("url", pa.string()), ("bucket", pa.int32()), ("final", pa.bool_())])


def bucket_of(url: str, buckets: int) -> int:
    """The bucket of a URL's site (stable across processes and machines)."""
    digest = hashlib.blake2b(site_key(host_of(url)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % buckets


@dataclass(frozen=True)
class CrawlOptions:
    """What a crawl task needs of the settings."""
    seeds: tuple                  # every seed (the scope: their sites)
    buckets: int
    same_domain: bool = True
    respect_robots: bool = True
    user_agent: str = ""
    allow_networks: tuple = ()
    timeout: float = 10.0
    concurrency: int = 16
    per_host_limit: int = 2
    max_redirects: int = 5
    max_bytes: int = 5_000_000
    blocklist: Optional[BlocklistSettings] = None   # blocked image URLs and domains: never written

    def crawler(self, fetch=None) -> Crawler:
        fetch = fetch or guarded_fetch(self.allow_networks, self.timeout, self.max_bytes, self.user_agent)
        return Crawler(list(self.seeds), max_pages=0, max_depth=0, same_domain=self.same_domain,
                       respect_robots=self.respect_robots, user_agent=self.user_agent, fetch=fetch,
                       concurrency=self.concurrency, per_host_limit=self.per_host_limit,
                       per_host_delay=0.0, max_redirects=self.max_redirects)


def without_blocked(rows: dict, links, blocked) -> tuple[dict, list, int]:
    """The pairs whose image URL (or its domain) and the links whose URL is not on a
    blocklist: a blocked URL is never written to the run folder, nor a blocked site crawled."""
    if blocked is None:
        return rows, links, 0
    drop = blocked.urls_blocked(rows["url"])
    rows = {name: [v for v, gone in zip(values, drop) if not gone] for name, values in rows.items()}
    links = sorted(links)
    kept_links = [u for u, gone in zip(links, blocked.urls_blocked(links)) if not gone]
    return rows, kept_links, int(drop.sum())


def _urls(table: pa.Table) -> pa.Table:
    return pa.table({"url": table["url"]}, schema=URLS)


def _read_urls(path: Optional[str]) -> set:
    return set(parts.read_ref(path, ["url"])["url"].to_pylist()) if path else set()


@dataclass
class Select:
    """Phase 1 of a level for one bucket: its candidates (see the module docstring)."""
    folder: str                    # the level's folder
    bucket: int
    options: CrawlOptions
    seeds: tuple = ()              # level 0
    links: list = field(default_factory=list)   # PartRefs of fetch outputs, level > 0
    queued: Optional[str] = None   # the bucket's queued set after its last select

    def path(self, name: str, suffix: str = ".parquet") -> str:
        return storage.join(self.folder, "select", f"{name}-{self.bucket:05d}{suffix}")

    def __call__(self) -> dict:
        done = self.path("done", ".json")
        finished = storage.read_marker(done)
        if finished is not None:
            return finished
        queued = _read_urls(self.queued)
        found = parts.concat([parts.read_ref(ref) for ref in self.links]) if self.links else LINKS.empty_table()
        queued.update(pc.filter(found["url"], found["final"]).to_pylist())
        if self.seeds:
            candidates = sorted(set(self.seeds) - queued)
        else:
            links = set(pc.filter(found["url"], pc.invert(found["final"])).to_pylist())
            candidates = self.options.crawler(fetch=_no_fetch).next_frontier(links, queued)
        queued.update(candidates)
        parts.write_parquet(pa.table({"url": candidates}, schema=URLS), self.path("candidates"))
        parts.write_parquet(pa.table({"url": sorted(queued)}, schema=URLS), self.path("queued"))
        stats = {"bucket": self.bucket, "candidates": len(candidates)}
        storage.write_json(stats, done)
        return stats


def _no_fetch(url):   # select only filters URLs; it never fetches
    raise RuntimeError(f"select fetched {url}")


@dataclass
class Fetch:
    """Phase 2 of a level for one bucket: fetch up to `budget` allowed candidates."""
    folder: str
    bucket: int
    depth: int
    budget: int
    options: CrawlOptions
    finals: Optional[str] = None   # the bucket's final URLs after its last fetch
    robots: Optional[str] = None   # the bucket's robots.txt answers after its last fetch

    def path(self, name: str, suffix: str = ".parquet") -> str:
        return storage.join(self.folder, "fetch", f"{name}-{self.bucket:05d}{suffix}")

    def __call__(self) -> dict:
        done = self.path("done", ".json")
        finished = storage.read_marker(done)
        if finished is not None:
            return finished
        crawler = self.options.crawler()
        if crawler.robots is not None and self.robots:
            crawler.robots.preload(storage.read_json(self.robots))
        finals = _read_urls(self.finals)
        candidates = parts.read_ref(storage.join(self.folder, "select", f"candidates-{self.bucket:05d}.parquet"))
        rows: dict[str, list] = {name: [] for name in CRAWL_SCHEMA.names}
        try:
            links, new_finals = crawler.fetch_level(candidates["url"].to_pylist(), self.budget,
                                                    self.depth, finals, rows)
        finally:
            crawler.runner.close()
        rows, links, blocked = without_blocked(rows, links, blocklist.matcher(self.options.blocklist))
        link_groups = self._write(rows, links, new_finals, finals, crawler)
        stats = {**crawler.stats, "bucket": self.bucket, "pairs": len(rows["url"]),
                 "link_groups": link_groups, "blocklisted": blocked}
        storage.write_json(stats, done)
        return stats

    def _write(self, rows, links, new_finals, finals, crawler) -> dict:
        """Pairs, links (row groups by target bucket: returned), finals and robots answers."""
        parts.write_parquet(pa.table(rows, schema=CRAWL_SCHEMA), self.path("pairs"))
        found = sorted(links) + sorted(new_finals)
        table = pa.table({"url": found,
                          "bucket": [bucket_of(u, self.options.buckets) for u in found],
                          "final": [False] * len(links) + [True] * len(new_finals)}, schema=LINKS)
        groups = parts.write_parquet(table, self.path("links"), "bucket")
        parts.write_parquet(pa.table({"url": sorted(finals)}, schema=URLS), self.path("finals"))
        if crawler.robots is not None:
            storage.write_json(crawler.robots.answers(), self.path("robots", ".json"))
        return {str(k): v for k, v in groups.items()}


def share_budget(budget: int, counts: dict[int, int]) -> dict[int, int]:
    """`budget` pages among buckets in proportion to their candidates (largest remainders,
    ties to the lower bucket); every candidate when they fit."""
    total = sum(counts.values())
    if total <= budget:
        return dict(counts)
    shares = {b: budget * n / total for b, n in counts.items()}
    given = {b: int(share) for b, share in shares.items()}
    left = budget - sum(given.values())
    for b in sorted(counts, key=lambda b: (given[b] - shares[b], b))[:left]:
        given[b] += 1
    return given


def crawl_on(engine_map: Callable, folder: str, options: CrawlOptions, max_pages: int,
             max_depth: int, log=lambda *_: None) -> tuple[list[str], dict]:
    """Crawl level by level on an engine (`engine_map(fn, tasks)`); returns the pairs files
    (level by level, bucket by bucket) and the summed counters."""
    queued: dict[int, str] = {}        # bucket -> its queued set (latest select)
    last_fetch: dict[int, Fetch] = {}  # bucket -> its latest fetch task
    seeds_by_bucket: dict[int, list] = {}
    for seed in options.seeds:
        seeds_by_bucket.setdefault(bucket_of(seed, options.buckets), []).append(seed)
    totals: dict[str, int] = {"pages_fetched": 0, "robots_disallowed": 0, "pairs": 0}
    pairs_files: list[str] = []
    fetched: list[tuple[Fetch, dict]] = []
    for depth in range(max_depth + 1):
        level = storage.join(folder, f"level-{depth:02d}")
        if depth == 0:
            selects = [Select(level, b, options, seeds=tuple(s), queued=None)
                       for b, s in sorted(seeds_by_bucket.items())]
        else:
            incoming: dict[int, list] = {}
            for task, stats in fetched:
                for bucket, group in stats["link_groups"].items():
                    incoming.setdefault(int(bucket), []).append(PartRef(task.path("links"), (group,)))
            selects = [Select(level, b, options, links=refs, queued=queued.get(b))
                       for b, refs in sorted(incoming.items())]
        budget = max_pages - totals["pages_fetched"]
        if not selects or budget <= 0:
            break
        counts = {task.bucket: stats["candidates"] for task, stats in zip(selects, engine_map(run_task, selects))}
        for task in selects:
            queued[task.bucket] = task.path("queued")
        shares = share_budget(budget, counts)
        fetches = [Fetch(level, b, depth, k, options,
                         finals=last_fetch[b].path("finals") if b in last_fetch else None,
                         robots=last_fetch[b].path("robots", ".json")
                         if b in last_fetch and options.respect_robots else None)
                   for b, k in sorted(shares.items()) if k > 0]
        fetched = list(zip(fetches, engine_map(run_task, fetches)))
        for task, stats in fetched:
            last_fetch[task.bucket] = task
            for key, value in stats.items():
                if key.startswith("pages_") or key in ("robots_disallowed", "pairs", "blocklisted"):
                    totals[key] = totals.get(key, 0) + value
            if stats["pairs"]:
                pairs_files.append(task.path("pairs"))
        log(f"crawl level {depth}: {len(fetches)} task(s), {totals['pages_fetched']:,} pages so far")
        if depth == max_depth:
            break
    return pairs_files, totals


def run_task(task: Callable[[], dict]) -> dict:
    return task()
