"""Hostile and careless input never changes what is kept (loopback only).

Each case runs a real pipeline (or the CLI) and asserts the outcome: conservation, tars that
hold exactly the images download fetched, one line and a non-zero exit for a user mistake,
no traceback, and a refused run leaving its folder as it was.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.app import build_steps
from pipeline.config import settings_from_dict
from pipeline.stages.ingest import input_names
from tests.support import assert_run_invariants, kept_uids, ledger_rows, read_dataset, run, serve_world


def image_config(pairs: Path, output: Path, **extra) -> dict:
    return {"input": {"path": [str(pairs)], "part_rows": 6}, "output": str(output), "processes": 2,
            "allow_networks": ["127.0.0.1/32"], "download": {"image_size": 64, "threads": 2, "timeout": 5},
            "image_dedup": {"phash_distance": 0}, "shard": {"samples_per_shard": 5}, **extra}


def tar_samples(run_dir: Path) -> dict:
    """uid -> (jpg bytes, json dict) over every tar of a run."""
    samples = {}
    for tar_path in sorted((run_dir / "shards").glob("*.tar")):
        members = {}
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                key, ext = member.name.rsplit(".", 1)
                members.setdefault(key, {})[ext] = tar.extractfile(member).read()
        for parts in members.values():
            meta = json.loads(parts["json"])
            samples[meta["uid"]] = (parts["jpg"], meta)
    return samples


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("curate: error: "), lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def folder_state(folder: Path) -> dict:
    """Every file under a folder with its size and modification time."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


# --- internal and output column names in the input -----------------------------------------

def hostile_columns(rows: int, foreign: Path) -> dict:
    """Columns named as the pipeline's own: image references into another file, drop reasons,
    positions, parse marks, and output names (images, hashes, keys, scores)."""
    return {
        "_image_file": [str(foreign)] * rows, "_image_row": [0] * rows,
        "_reason": ["evil" if i % 2 else None for i in range(rows)],
        "_malformed": ["x" if i % 3 == 0 else None for i in range(rows)],
        "_pos": [0] * rows, "_shard": [99] * rows, "_source_part": [7] * rows,
        "jpg": [b"not an image"] * rows, "sha256": ["0" * 64] * rows, "key": ["evil"] * rows,
        "shard": ["evil.tar"] * rows, "uid": ["same"] * rows, "clip_score": [1.0] * rows,
        "phash": ["0"] * rows, "width": [1] * rows, "input_jpg": ["taken"] * rows,
    }


@pytest.mark.slow
def test_input_columns_named_as_the_pipelines_change_nothing_kept(fakeweb, tmp_path):
    urls, texts = serve_world(fakeweb, 18)
    foreign = tmp_path / "foreign.parquet"
    pq.write_table(pa.table({"jpg": [b"\xff\xd8 another file's image"]}), foreign)
    clean, hostile = tmp_path / "clean.parquet", tmp_path / "hostile.parquet"
    pq.write_table(pa.table({"url": urls, "text": texts}), clean)
    pq.write_table(pa.table({"url": urls, "text": texts, **hostile_columns(len(urls), foreign)}), hostile)

    run(image_config(clean, tmp_path / "clean"))
    summary = run(image_config(hostile, tmp_path / "hostile"))
    assert_run_invariants(tmp_path / "hostile")
    assert summary["input_rows"] == 18

    assert kept_uids(tmp_path / "hostile") == kept_uids(tmp_path / "clean")
    assert ledger_rows(tmp_path / "hostile") == ledger_rows(tmp_path / "clean")
    samples, reference = tar_samples(tmp_path / "hostile"), tar_samples(tmp_path / "clean")
    assert samples.keys() == reference.keys() and samples
    for uid, (jpg, meta) in samples.items():
        assert hashlib.sha256(jpg).hexdigest() == meta["sha256"], "each image is the one fetched"
        assert jpg == reference[uid][0]
        assert meta["input__reason"] in ("evil", None) and meta["input_sha256"] == "0" * 64
        assert meta["input_key"] == "evil" and meta["key"] != "evil"
        assert meta["input_jpg"] == "taken", "the input's own input_jpg keeps its name"

    kept = read_dataset(tmp_path / "hostile" / "kept")
    assert {"input__image_file", "input__reason", "input__malformed", "input_input_jpg", "input_uid",
            "input_phash", "input_shard"} <= set(kept.column_names)
    assert kept["input_uid"].to_pylist() == ["same"] * kept.num_rows
    assert kept["clip_score"].to_pylist() == [1.0] * kept.num_rows, "no stage of this run adds clip_score"


def reserved_names(sections: dict) -> frozenset:
    """The names an input column may not use in a run of these sections."""
    return build_steps(settings_from_dict({"input": "x.parquet", **sections}, "t.yaml"))[1].added


def test_renaming_rule(tmp_path):
    import torch

    torch.save(torch.nn.Linear(512, 1).state_dict(), tmp_path / "nsfw.pt")
    assert reserved_names({}) == {"uid", "url", "text"}, "a column no stage of the run adds stays"
    reserved = reserved_names({section: {} for section in ("dedup", "language", "metadata", "download",
                                                           "image_dedup", "clip_score", "shard", "face_blur")}
                              | {"heads": {"heads": [{"name": "nsfw", "path": str(tmp_path / "nsfw.pt")}]}})
    assert {"uid", "url", "text", "jpg", "sha256", "key", "shard", "clip_score", "phash", "nsfw_score",
            "language", "entry_ids", "image_embedding", "text_embedding", "faces"} <= reserved
    names = ["_reason", "input__reason", "jpg", "caption_id", "key", "input_key"]
    renamed = input_names(names, reserved)
    assert renamed["caption_id"] == "caption_id" and renamed["input_key"] == "input_key"
    assert renamed["_reason"] == "input_input__reason", "the input's own input__reason keeps its name"
    assert renamed["input__reason"] == "input__reason"
    assert renamed["jpg"] == "input_jpg" and renamed["key"] == "input_input_key"
    assert len(set(renamed.values())) == len(names)


# --- values that cannot be encoded, parsed or sized -----------------------------------------

def test_bad_values_are_rows_not_the_run(tmp_path):
    """A lone surrogate in JSON, a 200 KiB CSV field and a 2 MiB one, numbers and objects as
    captions: the run goes on, and each row is kept cleaned or dropped with a reason."""
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text("\n".join([
        '{"url": "http://a.org/1.jpg", "text": "a lone \\ud800 surrogate here"}',
        '{"url": "http://a.org/2.jpg", "text": 12345}',
        '{"url": "http://a.org/3.jpg", "text": {"nested": ["a", "b"]}}',
        '{"url": "http://a.org/4.jpg", "text": "fine caption", "\\udfff key": "\\udc00"}',
        'not json at all',
    ]) + "\n")
    csv_path = tmp_path / "pairs.csv"
    csv_path.write_text("url,text\n"
                        f'http://b.org/1.jpg,"{"long caption " * 15_000}"\n'
                        f'http://b.org/2.jpg,"{"x" * (2 << 20)}"\n'
                        "http://b.org/3.jpg,short one\n")
    output = tmp_path / "run"
    config = {"input": {"path": [str(jsonl), str(csv_path)]}, "output": str(output), "processes": 1,
              "dedup": {}}
    summary = run(config)
    assert_run_invariants(output)
    assert summary["input_rows"] == 8
    assert summary["stages"][0]["dropped"] == {"malformed_row": 1, "oversized_field": 1}
    kept = read_dataset(output / "kept").to_pylist()
    texts = {row["url"]: row["text"] for row in kept}
    assert texts["http://a.org/1.jpg"] == "a lone \ufffd surrogate here"
    assert texts["http://a.org/2.jpg"] == "12345"
    assert json.loads(texts["http://a.org/3.jpg"]) == {"nested": ["a", "b"]}
    assert len(texts["http://b.org/1.jpg"]) == len("long caption " * 15_000)
    assert "http://b.org/2.jpg" not in texts


# --- user mistakes: one line, exit 2, nothing written ----------------------------------------

@pytest.fixture
def write_config(tmp_path):
    def write(config: dict, name: str = "config.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(config))
        return path
    return write


def test_duplicate_column_names_are_one_line(tmp_path, write_config):
    table = pa.Table.from_arrays([pa.array(["http://a.org/1.jpg"]), pa.array(["a cat"]), pa.array(["b"])],
                                 ["url", "text", "url"])
    pq.write_table(table, tmp_path / "dup.parquet")
    (tmp_path / "dup.csv").write_text("url,text,text\nhttp://a.org/1.jpg,a,b\n")
    for name in ("dup.parquet", "dup.csv"):
        output = tmp_path / f"run-{name}"
        result = cli("run", str(write_config({"input": str(tmp_path / name), "output": str(output)})))
        assert_one_line_error(result, name, "more than once")
        assert not output.exists()


def test_an_output_that_is_a_file_or_cannot_be_made_is_one_line(tmp_path, write_config):
    pq.write_table(pa.table({"url": ["http://a.org/1.jpg"], "text": ["a cat"]}), tmp_path / "in.parquet")
    (tmp_path / "a-file").write_text("x")
    for output, fragment in ((tmp_path / "a-file", "not a folder"),
                             (tmp_path / "a-file" / "run", "cannot create the run folder")):
        result = cli("run", str(write_config({"input": str(tmp_path / "in.parquet"), "output": str(output)})))
        assert_one_line_error(result, str(output), fragment)
    assert (tmp_path / "a-file").read_text() == "x"


def test_an_object_store_that_does_not_answer_is_one_line(tmp_path, write_config):
    import socket

    with socket.socket() as sock:   # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    pq.write_table(pa.table({"url": ["http://a.org/1.jpg"], "text": ["a cat"]}), tmp_path / "in.parquet")
    config = write_config({"input": str(tmp_path / "in.parquet"), "output": "s3://bucket/run",
                           "storage_options": {"s3": {"config_kwargs": {"retries": {"max_attempts": 1},
                                                                         "connect_timeout": 2}}}})
    env = {**os.environ, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "x",
           "AWS_SECRET_ACCESS_KEY": "x", "AWS_REGION": "us-east-1"}
    result = subprocess.run([sys.executable, "-m", "pipeline", "run", str(config)], capture_output=True,
                            text=True, env=env, timeout=300)
    assert_one_line_error(result, "s3://bucket/run")


# --- a changed input --------------------------------------------------------------------------

def test_a_rerun_after_the_input_changed_is_refused(tmp_path, write_config):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("url,text\n" + "".join(f"http://a.org/{i}.jpg,a photo of thing {i}\n" for i in range(6)))
    output = tmp_path / "run"
    config = write_config({"input": str(pairs), "output": str(output), "processes": 1, "dedup": {}})
    first = cli("run", str(config))
    assert first.returncode == 0, first.stderr
    assert json.loads((output / "summary.json").read_text())["kept_rows"] == 6

    with pairs.open("a") as stream:
        stream.write("http://a.org/6.jpg,a photo of thing 6\n")
    before = folder_state(output)
    refused = cli("run", str(config))
    assert_one_line_error(refused, "pairs.csv", "input changed", "--allow-changed-input")
    assert folder_state(output) == before, "a refused run leaves the folder as it was"

    again = cli("run", str(config), "--allow-changed-input")
    assert again.returncode == 0, again.stderr
    assert "Traceback" not in again.stderr
    assert cli("run", str(config)).returncode == 0, "the new input is what the folder records now"


def test_compressed_text_inputs_are_read(tmp_path):
    """.csv.gz, .csv.bz2 and .jsonl.zst are decompressed (their suffix is recognised, so a
    file left compressed would read as one garbled column)."""
    import bz2
    import gzip

    rows = "url,text\nhttp://a.org/1.jpg,a cat on a mat\nhttp://a.org/2.jpg,a dog in the fog\n"
    (tmp_path / "a.csv.gz").write_bytes(gzip.compress(rows.encode()))
    (tmp_path / "b.csv.bz2").write_bytes(bz2.compress(rows.replace("a.org", "b.org").encode()))
    lines = '{"url": "http://c.org/1.jpg", "text": "a red circle"}\n'
    with pa.CompressedOutputStream(str(tmp_path / "c.jsonl.zst"), "zstd") as out:
        out.write(lines.encode())
    summary = run({"input": {"path": [str(tmp_path / n) for n in ("a.csv.gz", "b.csv.bz2", "c.jsonl.zst")]},
                   "output": str(tmp_path / "run"), "processes": 1})
    assert summary["kept_rows"] == 5
    assert sorted(read_dataset(tmp_path / "run" / "kept")["text"].to_pylist())[0] == "a cat on a mat"


def test_archives_beside_a_list_with_other_column_names(tmp_path):
    """`input.url_col`/`text_col` name the list's columns; an archive's pairs still read."""
    from tests.unit.test_archive import http_response, response, write_archive

    pq.write_table(pa.table({"URL": ["http://a.org/1.jpg"], "TEXT": ["a cat on a mat"]}), tmp_path / "list.parquet")
    page = b'<html><body><img src="/dog.jpg" alt="a dog in the fog"></body></html>'
    write_archive(tmp_path / "pages.warc.gz", [response("http://site.org/", http_response(page), 1)])
    summary = run({"input": {"path": [str(tmp_path / "list.parquet"), str(tmp_path / "pages.warc.gz")],
                             "url_col": "URL", "text_col": "TEXT"},
                   "output": str(tmp_path / "run"), "processes": 1})
    assert summary["kept_rows"] == 2, summary["stages"][0]
    assert sorted(read_dataset(tmp_path / "run" / "kept")["text"].to_pylist()) == ["a cat on a mat", "a dog in the fog"]
