"""Sources of image-text pairs from the web: a polite BFS crawler and Common Crawl archives.

A library: it knows nothing of parts, steps or engines (the crawl step that runs it on the
engine's workers is `pipeline.stages.crawl_step`, with `pipeline.stages.crawl_spread`).

- `crawl(seeds, ...)`: crawl live pages (robots.txt, meta robots, politeness) -> pyarrow.Table
- `extract_page(body, page_url)`: pairs and links of one HTML page
- `iter_warc_pairs(path)`, `iter_wat_pairs(path)`, `iter_archive_pairs(path)`: pairs from
  Common Crawl WARC / WAT files, as RecordBatches
"""
from pipeline.crawl.archive import ARCHIVE_SCHEMA, iter_archive_pairs, iter_warc_pairs, iter_wat_pairs
from pipeline.crawl.crawler import CRAWL_SCHEMA, DEFAULT_USER_AGENT, crawl, guarded_fetch
from pipeline.crawl.html_extract import PAIR_FIELDS, PageExtract, extract_page
from pipeline.crawl.robots import RobotsCache, parse_robots

__all__ = ["ARCHIVE_SCHEMA", "CRAWL_SCHEMA", "DEFAULT_USER_AGENT", "PAIR_FIELDS", "PageExtract",
           "RobotsCache", "crawl", "extract_page", "guarded_fetch", "iter_archive_pairs",
           "iter_warc_pairs", "iter_wat_pairs", "parse_robots"]
