"""Blocklists of URLs, domains and original-image hashes: blocked rows never reach a stored
part or a tar, their URLs appear nowhere in the run folder (the ledger keeps uid and reason
only), the report shows no sample of them, and every row is still accounted for."""
import hashlib
import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.errors import UserError
from pipeline.testing.fakeweb import FakeWeb
from pipeline.testing.world import make_world
from tests.support import assert_run_invariants, read_dataset, run

ROWS = 40
BY_URL, BY_DOMAIN, BY_MD5, BY_SHA256 = range(0, 4), range(4, 10), range(10, 13), range(13, 16)


def blocklist_run(tmp_path, web, engine="local"):
    world = make_world(ROWS, seed=3, image_size=48)
    urls = []
    for i, sample in enumerate(world):
        web.add_image(f"/b/{i}.jpg", sample.jpg)
        urls.append(web.url(f"/b/{i}.jpg", host="localhost" if i in BY_DOMAIN else None))
    pq.write_table(pa.table({"url": urls, "text": [s.caption for s in world]}), tmp_path / "pairs.parquet")
    lists = tmp_path / "lists"
    lists.mkdir(exist_ok=True)
    listed = [urls[i].replace("http://", "HTTP://") if i == 0 else urls[i] for i in BY_URL]   # scheme case
    (lists / "urls.txt").write_text("# child-safety list\n\n" + "\n".join(listed) + "\n")
    (lists / "domains.txt").write_text("localhost   # the second name of the server\nexample.org\n")
    pq.write_table(pa.table({"md5": [hashlib.md5(world[i].jpg).hexdigest() for i in BY_MD5]}),
                   lists / "md5.parquet")
    (lists / "sha256.txt").write_text("\n".join(hashlib.sha256(world[i].jpg).hexdigest().upper()
                                                for i in BY_SHA256))
    config = {"input": {"path": [str(tmp_path / "pairs.parquet")], "part_rows": 10},
              "output": str(tmp_path / engine), "engine": engine, "processes": 2,
              "allow_networks": ["127.0.0.1/32"],
              "download": {"image_size": 48, "threads": 4, "timeout": 5},
              "shard": {"samples_per_shard": 8},
              "blocklist": {"urls": [str(lists / "urls.txt")], "domains": [str(lists / "domains.txt")],
                            "md5": [str(lists / "md5.parquet")], "sha256": [str(lists / "sha256.txt")]},
              "ray": {"num_cpus": 2}, "spark": {"master": "local[2]"}}
    return run(config), urls, world


def strings_in_run_folder(run_dir):
    """Every text value of every parquet file, and the bytes of every other file."""
    for path in run_dir.rglob("*"):
        if not path.is_file():
            continue
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            for column in table.columns:
                if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
                    yield path, "\n".join(v for v in column.to_pylist() if v)
        else:
            yield path, path.read_bytes().decode("latin-1")


@pytest.mark.slow
def test_blocked_rows_never_stored_and_never_named(tmp_path):
    with FakeWeb() as web:
        summary, urls, world = blocklist_run(tmp_path, web)
    run_dir = tmp_path / "local"
    assert_run_invariants(run_dir)
    stages = {s["name"]: s for s in summary["stages"]}
    assert stages["ingest"]["dropped"] == {"blocklisted": len(BY_URL) + len(BY_DOMAIN)}
    assert stages["download"]["dropped"] == {"blocklisted": len(BY_MD5) + len(BY_SHA256)}
    assert summary["kept_rows"] == ROWS - 16

    ledger = read_dataset(run_dir / "ledger")
    blocked = ledger.filter(pa.compute.equal(ledger["reason"], "blocklisted"))
    assert blocked.num_rows == 16 and blocked["url"].null_count == 16, "uid and reason only"
    blocked_uids = set(blocked["uid"].to_pylist())

    # no stored part holds a blocked row (their bytes were never stored), no tar holds one
    stored = [p for p in (run_dir / "steps").rglob("*_download/*/data/*.parquet")]
    stored_uids = {u for p in stored for u in pq.read_table(p, columns=["uid"])["uid"].to_pylist()}
    assert stored and not blocked_uids & stored_uids
    hashed = {hashlib.sha256(world[i].jpg).hexdigest() for i in (*BY_MD5, *BY_SHA256)}
    tar_uids = set()
    for tar_path in (run_dir / "shards").glob("*.tar"):
        with tarfile.open(tar_path) as tar:
            for member in tar:
                data = tar.extractfile(member).read()
                if member.name.endswith(".json"):
                    tar_uids.add(json.loads(data)["uid"])
                assert hashlib.sha256(data).hexdigest() not in hashed
    assert len(tar_uids) == ROWS - 16 and not blocked_uids & tar_uids

    # the URLs of the blocklisted rows (URL and domain lists) appear nowhere in the run folder
    named = [urls[i] for i in (*BY_URL, *BY_DOMAIN)]
    strings = list(strings_in_run_folder(run_dir))
    assert strings, "no file read in the run folder"
    for path, text in strings:
        found = [u for u in named if u in text or u.split("://", 1)[1] in text]
        assert not found, f"{path} names {found[:2]}"

    from pipeline.report.page import write_report

    html = open(write_report(run_dir)).read()
    assert "blocklisted" in html and not any(urls[i] in html for i in (*BY_MD5, *BY_SHA256))


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["ray"])
def test_same_result_on_ray(tmp_path, engine):
    with FakeWeb() as web:
        local, _, _ = blocklist_run(tmp_path, web)
        other, _, _ = blocklist_run(tmp_path, web, engine)
    assert local["stages"] == [{**s, "seconds": mine["seconds"]} for s, mine in zip(other["stages"], local["stages"])]
    assert sorted(read_dataset(tmp_path / "local" / "kept")["uid"].to_pylist()) == \
        sorted(read_dataset(tmp_path / engine / "kept")["uid"].to_pylist())


@pytest.mark.parametrize("content, message", [
    ("http://a.example/x.jpg\nnot a url\n", "urls.txt:2: not a URL"),
])
def test_a_bad_list_is_one_line_naming_file_and_line(tmp_path, content, message):
    (tmp_path / "urls.txt").write_text(content)
    pq.write_table(pa.table({"url": ["http://a.example/y.jpg"], "text": ["a red circle"]}), tmp_path / "p.parquet")
    with pytest.raises(UserError, match=message) as error:
        run({"input": {"path": [str(tmp_path / "p.parquet")]}, "output": str(tmp_path / "run"),
             "blocklist": {"urls": [str(tmp_path / "urls.txt")]}})
    assert "\n" not in str(error.value)
    with pytest.raises(UserError, match="md5: .*missing.txt: no such file"):
        run({"input": {"path": [str(tmp_path / "p.parquet")]}, "output": str(tmp_path / "run2"),
             "blocklist": {"md5": [str(tmp_path / "missing.txt")]}})


@pytest.mark.slow
def test_a_crawl_never_visits_a_blocked_domain_nor_writes_a_blocked_url(tmp_path):
    """Five linked hosts; 127.0.0.3 is a blocked domain (reached only through links) and one
    image URL of 127.0.0.1 is listed: neither is fetched nor written, the rest is crawled."""
    from contextlib import ExitStack

    from tests.integration.test_crawl_spread import crawl_config, crawled, serve_sites

    with ExitStack() as stack:
        webs = serve_sites(stack)
        blocked_image = webs[0].url("/img/0-0.jpg")
        (tmp_path / "urls.txt").write_text(blocked_image + "\n")
        (tmp_path / "domains.txt").write_text("127.0.0.3\n")
        config = crawl_config([w for w in webs if w.host != "127.0.0.3"], tmp_path / "run")
        config["blocklist"] = {"urls": [str(tmp_path / "urls.txt")], "domains": [str(tmp_path / "domains.txt")]}
        run(config)
        visits = sum(webs[2].count(f"/p/{i}.html") for i in range(15))
        seeded = crawl_config(webs, tmp_path / "seeded")
        seeded["blocklist"] = config["blocklist"]
        with pytest.raises(UserError, match="crawl.seeds: a seed is on the blocklist"):
            run(seeded)
    pairs = crawled(tmp_path / "run")
    assert visits == 0, "a blocked domain is never crawled"
    assert pairs.num_rows == 4 * 15 * 2 - 1 and blocked_image not in pairs["url"].to_pylist()
    stats = json.loads((tmp_path / "run" / "steps" / "crawl" / "stats.json").read_text())
    assert stats["blocklisted"] == 1
    strings = list(strings_in_run_folder(tmp_path / "run"))
    assert strings, "no file read in the run folder"
    for path, text in strings:
        assert "127.0.0.3" not in text and blocked_image not in text, path
