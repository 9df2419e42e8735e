"""Crawl + ingest + text stages + download against the fake web, end to end."""
import subprocess
import sys

import pyarrow.compute as pc
import pytest
import yaml

from pipeline.testing.fakeweb import FakeWeb
from pipeline.testing.text_sample import english_caption
from tests.support import assert_run_invariants, kept_uids, ledger_rows, read_dataset, read_summary, run, run_and_kill

pytestmark = pytest.mark.slow  # crawl and download end to end, on every engine, killed and resumed

FAULTS = {  # path -> reason (deterministic faults only, so reruns and engines agree)
    "/fault/404/a.jpg": "http_404", "/fault/500/b.jpg": "http_500", "/fault/noai/c.jpg": "opt_out",
    "/fault/html/d.jpg": "decode_error", "/fault/bomb/e.png": "image_too_large",
    "/fault/loop/f.jpg": "too_many_redirects", "/fault/large/30000000/g.jpg": "too_large",
}


def make_site(web: FakeWeb) -> str:
    pages = []
    for p in range(4):
        imgs = "".join(f'<img src="/img/site{p}_{i}.jpg?w=80&h=60" alt="a small photo of thing {p} {i}">'
                       for i in range(5))
        links = "".join(f'<a href="/site/{q}.html">page {q}</a>' for q in range(4))
        web.add_page(f"/site/{p}.html", f"<html><body>{imgs}{links}</body></html>")
        pages.append(p)
    web.add_page("/site/private/x.html", '<img src="/img/private.jpg" alt="never seen">')
    web.add_robots("User-agent: *\nDisallow: /site/private/\n")
    return web.url("/site/0.html")


def write_input(web: FakeWeb, path, rows=60, slow_ms=0):
    import random

    import pyarrow as pa
    import pyarrow.parquet as pq
    rng = random.Random(0)
    urls, texts = [], []
    for i in range(rows):
        image = f"/img/pair{i}.jpg?w={rng.choice([90, 120, 200])}&h={rng.choice([70, 100, 150])}"
        urls.append(web.url(f"/fault/slow/{slow_ms}/pair{i}.jpg" if slow_ms else image))
        texts.append(english_caption(rng))
    for fault in FAULTS:
        urls.append(web.url(fault))
        texts.append(english_caption(rng))
    urls.append(web.url("/fault/redirect-to/h.jpg?to=http://127.0.0.2:9/x.jpg"))
    texts.append("a redirect to a blocked address")
    pq.write_table(pa.table({"url": urls, "text": texts}), path)


def image_config(web, input_path, output, engine="local", crawl=True):
    config = {
        "input": {"path": [str(input_path)]}, "output": str(output), "engine": engine, "processes": 2,
        "allow_networks": ["127.0.0.1/32"],
        "dedup": {}, "caption_filter": {"min_words": 2},
        "download": {"image_size": 64, "threads": 8, "timeout": 3, "retries": 1, "part_rows": 20,
                     "max_bytes": 5_000_000},
        "ray": {"num_cpus": 2}, "spark": {"master": "local[2]"},
    }
    if crawl:
        config["crawl"] = {"seeds": [make_site(web)], "max_depth": 2, "max_pages": 50}
    return config



def test_crawl_and_download_end_to_end(tmp_path):
    with FakeWeb() as web:
        write_input(web, tmp_path / "in.parquet")
        summary = run(image_config(web, tmp_path / "in.parquet", tmp_path / "run"))
        assert web.count("/site/private/x.html") == 0, "robots.txt must be honoured"
    assert_run_invariants(tmp_path / "run")
    assert summary["input_rows"] == 60 + len(FAULTS) + 1 + 20   # list + 20 crawled images
    download = summary["stages"][-1]
    assert download["name"] == "download" and download["rows_out"] == 80
    ledger = read_dataset(tmp_path / "run" / "ledger")
    reasons = dict(zip(ledger["url"].to_pylist(), ledger["reason"].to_pylist()))
    for fault, reason in FAULTS.items():
        got = [r for u, r in reasons.items() if u.endswith(fault)]
        assert got == [reason], (fault, got)
    assert [r for u, r in reasons.items() if "redirect-to" in u] == ["blocked_address"]
    kept = read_dataset(tmp_path / "run" / "kept")
    assert set(kept["width"].to_pylist()) == {64} and set(kept["height"].to_pylist()) == {64}
    assert kept.filter(pc.is_valid(kept["page_url"])).num_rows == 20  # crawled rows keep page_url
    assert all(len(s) == 64 for s in kept["sha256"].to_pylist())


@pytest.mark.parametrize("engine", ["ray", "spark"])
def test_crawl_and_download_match_local(tmp_path, engine):
    with FakeWeb() as web:
        write_input(web, tmp_path / "in.parquet", rows=30)
        run(image_config(web, tmp_path / "in.parquet", tmp_path / "local"))
        run(image_config(web, tmp_path / "in.parquet", tmp_path / engine, engine=engine))
    assert kept_uids(tmp_path / "local") == kept_uids(tmp_path / engine)
    assert ledger_rows(tmp_path / "local") == ledger_rows(tmp_path / engine)
    a = read_dataset(tmp_path / "local" / "kept").sort_by("uid")
    b = read_dataset(tmp_path / engine / "kept").sort_by("uid")
    assert a["sha256"].to_pylist() == b["sha256"].to_pylist()


def test_sigkill_during_download_resumes_without_refetching(tmp_path):
    with FakeWeb() as web:
        write_input(web, tmp_path / "in.parquet", rows=200, slow_ms=30)
        config = image_config(web, tmp_path / "in.parquet", tmp_path / "run", crawl=False)
        config["download"]["threads"] = 2
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
        done = tmp_path / "run" / "steps" / "03_download" / "map" / "done"
        finished = run_and_kill(tmp_path / "c.yaml", done, 2)
        assert 2 <= len(finished) < 11, "killed part-way through the download"
        fetched_before = {u: web.count(u) for u in _pair_urls(web, 200)}
        result = subprocess.run([sys.executable, "-m", "pipeline", "run", str(tmp_path / "c.yaml")],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        fetched_after = {u: web.count(u) for u in _pair_urls(web, 200)}
    finished_parts = {int(p.stem.split("-")[1]) for p in finished}
    data = read_dataset(tmp_path / "run" / "kept")
    assert_run_invariants(tmp_path / "run")
    refetched = [u for u in fetched_before if fetched_before[u] and fetched_after[u] > fetched_before[u]]
    # rows of parts that were complete at the kill are never fetched again
    assert len(refetched) <= (11 - len(finished_parts)) * 20
    assert sum(fetched_after.values()) < 200 + 2 * 20, "finished parts were fetched again"
    assert data.num_rows == read_summary(tmp_path / "run")["kept_rows"] >= 200
    assert not list((tmp_path / "run").rglob("*.tmp")), "no partial files left behind"


def _pair_urls(web, rows):
    return [f"/fault/slow/30/pair{i}.jpg" for i in range(rows)]
