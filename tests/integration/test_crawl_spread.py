"""The crawl on the workers: hosts spread over tasks (one host in one task per level), the
frontier checkpointed level by level (a killed crawl resumes without fetching finished pages
again), and the same pairs as the one-process crawler and on every engine."""
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.crawl import crawl
from pipeline.crawl.politeness import host_of
from pipeline.stages.crawl_spread import bucket_of, share_budget
from pipeline.testing.fakeweb import FakeWeb
from tests.support import run

HOSTS = [f"127.0.0.{i}" for i in range(1, 6)]
PAGES = 15     # a binary tree of pages per host: depth 0..3


def serve_sites(stack: ExitStack, delay_ms: int = 0) -> list[FakeWeb]:
    """Five hosts; page i links to pages 2i+1 and 2i+2 of its host, to page i of the next
    host, and to a robots-disallowed page; each page holds two images with alt text."""
    webs = [stack.enter_context(FakeWeb(host=h)) for h in HOSTS]
    for n, web in enumerate(webs):
        other = webs[(n + 1) % len(webs)]
        web.add_robots("User-agent: *\nDisallow: /private/\n")
        web.add_file("/private/x.html", "<img src='/never.jpg' alt='never'>", {"Content-Type": "text/html"})
        for i in range(PAGES):
            links = [web.url(f"/p/{c}.html") for c in (2 * i + 1, 2 * i + 2) if c < PAGES]
            links += [other.url(f"/p/{i}.html"), web.url("/private/x.html")]
            html = "".join(f"<a href='{u}'>x</a>" for u in links) + "".join(
                f"<img src='/img/{i}-{k}.jpg' alt='host {n} page {i} picture {k}'>" for k in range(2))
            web.add_file(f"/p/{i}.html", html, {"Content-Type": "text/html; charset=utf-8"}, delay_ms=delay_ms)
    return webs


def crawl_config(webs, output, engine="local", **crawl_options) -> dict:
    return {"input": {"path": []}, "output": str(output), "engine": engine, "processes": 2,
            "allow_networks": ["127.0.0.0/8"], "ray": {"num_cpus": 2}, "spark": {"master": "local[2]"},
            "crawl": {"seeds": [w.url("/p/0.html") for w in webs], "max_depth": 3, "tasks": 4,
                      "per_host_limit": 1, **crawl_options}}


def crawled(run_dir: Path) -> pa.Table:
    files = json.loads((run_dir / "steps" / "crawl" / "stats.json").read_text())["files"]
    return pa.concat_tables(pq.read_table(f) for f in files)


def as_set(table: pa.Table) -> set:
    return {tuple(row.values()) for row in table.to_pylist()}


def test_spread_crawl_finds_what_the_one_process_crawler_finds_one_host_per_task(tmp_path):
    with ExitStack() as stack:
        webs = serve_sites(stack)
        run(crawl_config(webs, tmp_path / "run"))
        alone = crawl([w.url("/p/0.html") for w in webs], allow_networks=["127.0.0.0/8"], max_depth=3)
        robots = sum(w.count("/robots.txt") for w in webs)
        private = sum(w.count("/private/x.html") for w in webs)
    pairs = crawled(tmp_path / "run")
    assert pairs.num_rows == 5 * PAGES * 2
    assert as_set(pairs) == as_set(alone.replace_schema_metadata(None))
    assert private == 0 and robots == 2 * len(HOSTS), "robots.txt once per host per crawl"

    buckets = {host: bucket_of(f"http://{host}/", 4) for host in HOSTS}
    assert len(set(buckets.values())) > 1, "the hosts spread over several tasks"
    pairs_files = sorted((tmp_path / "run" / "steps" / "crawl").glob("level-*/fetch/pairs-*.parquet"))
    assert len({int(p.stem.split("-")[1]) for p in pairs_files}) > 1, "no pairs files of several tasks found"
    rows = 0
    for pairs_file in pairs_files:
        bucket = int(pairs_file.stem.split("-")[1])
        page_urls = pq.read_table(pairs_file)["page_url"].to_pylist()
        rows += len(page_urls)
        assert all(buckets[host_of(u)] == bucket for u in page_urls), "a host's pages are in its bucket's task"
    assert rows == pairs.num_rows, "the tasks' pairs files hold every pair"


def test_the_page_budget_is_shared_in_proportion_and_adds_up():
    assert share_budget(10, {0: 5, 3: 3}) == {0: 5, 3: 3}
    assert share_budget(10, {0: 10, 1: 5, 2: 5}) == {0: 5, 1: 3, 2: 2}
    assert sum(share_budget(7, {b: 3 for b in range(5)}).values()) == 7


@pytest.mark.slow
def test_a_killed_crawl_resumes_at_its_checkpoint(tmp_path):
    with ExitStack() as stack:
        webs = serve_sites(stack, delay_ms=120)
        config = crawl_config(webs, tmp_path / "run", max_pages=60)
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
        process = subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(tmp_path / "c.yaml")],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        done = tmp_path / "run" / "steps" / "crawl" / "level-01" / "fetch"
        deadline = time.time() + 120
        while time.time() < deadline and not list(done.glob("done-*.json")) and process.poll() is None:
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        finished = {p: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("done-*.json")}
        assert finished and not (tmp_path / "run" / "steps" / "crawl" / "_SUCCESS").exists()
        before = sum(w.total_requests for w in webs)
        result = subprocess.run([sys.executable, "-m", "pipeline", "run", str(tmp_path / "c.yaml")],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        resumed = sum(w.total_requests for w in webs) - before
        run(crawl_config(webs, tmp_path / "whole", max_pages=60))
        whole = sum(w.total_requests for w in webs) - before - resumed
    assert crawled(tmp_path / "run").equals(crawled(tmp_path / "whole"))
    for path, mtime in finished.items():
        assert path.stat().st_mtime_ns == mtime, f"{path} was done again"
    assert resumed < whole, "the resumed crawl did not fetch the finished levels again"


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["ray", "spark"])
def test_spread_crawl_gives_the_same_pairs_on_every_engine(tmp_path, engine):
    with ExitStack() as stack:
        webs = serve_sites(stack)
        run(crawl_config(webs, tmp_path / "local", max_pages=40))
        run(crawl_config(webs, tmp_path / engine, engine=engine, max_pages=40))
    local = crawled(tmp_path / "local")
    stats = json.loads((tmp_path / "local" / "steps" / "crawl" / "stats.json").read_text())
    assert stats["pages_fetched"] == 40, "the budget binds"
    assert crawled(tmp_path / engine).equals(local)
