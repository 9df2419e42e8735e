"""Blocklist entries: text and parquet lists, normalisation, domain suffixes, hash matching."""
import hashlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.blocklist import BlocklistSettings, Matcher, canonical_url, read_entries, under_blocked_domain
from pipeline.errors import UserError


def test_urls_match_with_scheme_and_host_in_any_case_but_path_exact(tmp_path):
    (tmp_path / "u.txt").write_text("# list\nHTTP://Img.Example.COM/a/B.jpg#frag\n\nhttps://x.example/q?a=1\n")
    m = Matcher.load(BlocklistSettings(urls=[str(tmp_path / "u.txt")]))
    found = m.urls_blocked(["http://img.example.com/a/B.jpg", "http://img.example.com/a/b.jpg",
                            "https://x.example/q?a=1", "https://x.example/q?a=2", None])
    assert found.tolist() == [True, False, True, False, False]
    assert canonical_url("HTTP://u:P@Host.Example/x#y") == "http://u:P@host.example/x"


def test_a_domain_blocks_itself_and_every_host_under_it_an_ip_only_whole():
    domains = {"example.com", "127.0.0.3"}
    assert under_blocked_domain("example.com", domains)
    assert under_blocked_domain("a.b.example.com", domains)
    assert not under_blocked_domain("notexample.com", domains)
    assert under_blocked_domain("127.0.0.3", domains) and not under_blocked_domain("10.127.0.0.3", domains)


def test_hashes_of_the_original_bytes_from_text_and_parquet(tmp_path):
    data, other = b"\xff\xd8 some jpeg", b"\xff\xd8 another"
    (tmp_path / "s.txt").write_text(hashlib.sha256(data).hexdigest().upper() + "  # found 2026\n")
    pq.write_table(pa.table({"id": [1], "hash": [hashlib.md5(other).hexdigest()]}), tmp_path / "m.parquet")
    m = Matcher.load(BlocklistSettings(sha256=[str(tmp_path / "s.txt")], md5=[str(tmp_path / "m.parquet")]))
    assert m.checks_bytes and m.bytes_blocked(data) and m.bytes_blocked(other)
    assert not m.bytes_blocked(b"\xff\xd8 a third")


@pytest.mark.parametrize("kind, text, message", [
    ("md5", "abc\n", "x.txt:1: not a md5 hex digest"),
    ("sha256", "# c\n" + "a" * 63 + "\n", "x.txt:2: not a sha256 hex digest"),
    ("domains", "example.com/path\n", "x.txt:1: not a domain"),
    ("urls", "ftp-less text\n", "x.txt:1: not a URL with a host"),
])
def test_a_bad_entry_names_file_and_line(tmp_path, kind, text, message):
    (tmp_path / "x.txt").write_text(text)
    with pytest.raises(UserError, match=message):
        read_entries(str(tmp_path / "x.txt"), kind)


def test_a_parquet_list_needs_a_named_or_single_text_column(tmp_path):
    pq.write_table(pa.table({"a": ["x.example"], "b": ["y.example"]}), tmp_path / "d.parquet")
    with pytest.raises(UserError, match="no column named 'domain'"):
        read_entries(str(tmp_path / "d.parquet"), "domains")
    pq.write_table(pa.table({"n": [1, 2], "name": ["*.X.example.", "y.example"]}), tmp_path / "e.parquet")
    assert read_entries(str(tmp_path / "e.parquet"), "domains") == ["x.example", "y.example"]


def test_the_stages_that_drop_blocklisted_rows_have_the_ledger_withhold_their_urls():
    from pipeline.blocklist import BLOCKLISTED
    from pipeline.core.tasks import split_by_reason
    from pipeline.stages.download import DownloadStage
    from pipeline.stages.ingest import IngestStage

    assert BLOCKLISTED in IngestStage.withheld_reasons and BLOCKLISTED in DownloadStage.withheld_reasons
    table = pa.table({"uid": ["a", "b", "c"], "url": ["http://x/1", "http://x/2", "http://x/3"],
                      "_reason": [None, BLOCKLISTED, "not_found"]})
    kept, ledger = split_by_reason(table, "download", DownloadStage.withheld_reasons)
    assert kept.column_names == ["uid", "url"] and kept["uid"].to_pylist() == ["a"]
    assert ledger.drop_columns(["detail"]).to_pylist() == [
        {"uid": "b", "url": None, "stage": "download", "reason": BLOCKLISTED},
        {"uid": "c", "url": "http://x/3", "stage": "download", "reason": "not_found"}]
    assert split_by_reason(table, "t")[1]["url"].null_count == 0   # nothing withheld by default
