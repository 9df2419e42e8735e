"""`curate takedown`: listed samples leave the tars of two releases (the second excluding the
first); untouched tars keep their bytes, the ledger, summary and data card account for every
removal, a rerun changes nothing, a killed takedown rerun finishes the same way, and open_clip
still reads the shards; locally and in a bucket."""
import hashlib
import io
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from argparse import Namespace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.cli import main
from pipeline.core import storage
from pipeline.testing.fakeweb import FakeWeb
from pipeline.testing.world import make_world
from tests.integration.test_datacard import assert_valid
from tests.support import assert_run_invariants, read_dataset, run, serve_world, tar_digests

A_ROWS = 24


def config(pairs, output, **extra) -> dict:
    return {"input": {"path": [str(pairs)], "part_rows": 10}, "output": str(output), "processes": 1,
            "allow_networks": ["127.0.0.1/32"],
            "download": {"image_size": 64, "threads": 4, "timeout": 5, "part_rows": 8},
            "image_dedup": {"phash_distance": 2}, "shard": {"samples_per_shard": 4, "start_index": "auto"},
            **extra}


def make_releases(folder: Path, out_a: str, out_b: str) -> None:
    """Release A (24 world images) and release B (A's first 6 rows again, 8 new images),
    B excluding A."""
    with FakeWeb() as web:
        urls, texts = serve_world(web, A_ROWS)
        pq.write_table(pa.table({"url": urls, "text": texts}), folder / "a.parquet")
        run(config(folder / "a.parquet", out_a))
        rows = list(zip(urls[:6], texts[:6]))
        for i, sample in enumerate(make_world(8, seed=11, image_size=64)):
            web.add_image(f"/b/new/{i}.jpg", sample.jpg)
            rows.append((web.url(f"/b/new/{i}.jpg"), sample.caption))
        pq.write_table(pa.table({"url": [r[0] for r in rows], "text": [r[1] for r in rows]}), folder / "b.parquet")
        run(config(folder / "b.parquet", out_b, exclude=[out_a]))


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    """The two releases' folders, to be copied by each test."""
    folder = tmp_path_factory.mktemp("takedown")
    make_releases(folder, str(folder / "a"), str(folder / "b"))
    return folder


def copies(releases, tmp_path):
    for name in ("a", "b"):
        shutil.copytree(releases / name, tmp_path / name)
    return tmp_path / "a", tmp_path / "b"


def tar_samples(run_dir) -> list[dict]:
    """Every sample of a run's tars: key, uid, url, sha256 of the image."""
    found = []
    for name in sorted(storage.read_json(Path(run_dir) / "shards" / "sizes.json")):
        with tarfile.open(Path(run_dir) / "shards" / name) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar}
        for member, data in members.items():
            if member.endswith(".json"):
                import json
                meta = json.loads(data)
                jpg = members[member[:-5] + ".jpg"]
                found.append({"tar": name, "key": meta["key"], "uid": meta["uid"], "url": meta["url"],
                              "sha256": hashlib.sha256(jpg).hexdigest(), "md5": hashlib.md5(jpg).hexdigest()})
    return found


def write_lists(folder: Path, a, b) -> dict:
    """One sample of each release by URL, one of A by uid, one of B by sha256, one of A by
    MD5 of its image; returns the lists' files and the uids they name."""
    in_a, in_b = tar_samples(a), tar_samples(b)
    picks = {"urls": [in_a[0], in_b[0]], "uids": [in_a[5]], "sha256": [in_b[3]], "md5": [in_a[9]]}
    (folder / "urls.txt").write_text("# takedown request 1\n" + "\n".join(p["url"] for p in picks["urls"]) + "\n")
    (folder / "uids.txt").write_text("\n".join(p["uid"] for p in picks["uids"]) + "\n")
    (folder / "sha.txt").write_text("\n".join(p["sha256"] for p in picks["sha256"]) + "\n")
    pq.write_table(pa.table({"md5": [p["md5"] for p in picks["md5"]]}), folder / "md5.parquet")
    lists = ["--list", str(folder / "urls.txt"), "--list", f"uids:{folder / 'uids.txt'}",
             "--list", f"sha256:{folder / 'sha.txt'}", "--list", str(folder / "md5.parquet")]
    return {"args": lists, "uids": {p["uid"] for group in picks.values() for p in group},
            "by_run": {"a": {p["uid"] for p in (in_a[0], in_a[5], in_a[9])}, "b": {in_b[0]["uid"], in_b[3]["uid"]}}}


def folder_digests(run_dir) -> dict:
    """sha256 of every file under a run folder but its lease and log."""
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(run_dir).rglob("*")) if p.is_file() and "_lease" not in p.parts}


def assert_taken_down(run_dir, listed: set, removed: set, before: dict) -> dict:
    """The listed samples are nowhere in the release; everything else is as it was."""
    from pipeline import datacard

    after = tar_digests(run_dir)
    samples = tar_samples(run_dir)
    assert not {s["uid"] for s in samples} & listed
    records = [storage.read_json(p) for p in sorted((Path(run_dir) / "takedowns").glob("*.json"))]
    assert len(records) == 1 and records[0]["matched"] == len(removed)
    record = records[0]
    changed = set(record["tars"])
    assert changed and {n: after[n] for n in after if n not in changed} == \
        {n: before[n] for n in before if n not in changed}, "untouched tars keep their bytes"
    for name, tar in record["tars"].items():
        assert (tar["old_sha256"], tar["new_sha256"]) == (before[name], after[name]) and before[name] != after[name]
    sizes = storage.read_json(Path(run_dir) / "shards" / "sizes.json")
    assert sizes == {n: sum(s["tar"] == n for s in samples) for n in sizes}
    summary = assert_run_invariants(run_dir)   # conservation, ledger == summary, kept == ledger's kept
    assert summary["stages"][-1] == {"name": "takedown", "rows_in": summary["kept_rows"] + len(removed),
                                     "rows_out": summary["kept_rows"], "dropped": {"taken_down": len(removed)},
                                     "seconds": 0.0}
    ledger = read_dataset(Path(run_dir) / "ledger")
    taken = ledger.filter(pa.compute.equal(ledger["reason"], "taken_down"))
    assert set(taken["uid"].to_pylist()) == removed and taken["url"].null_count == taken.num_rows
    kept = read_dataset(Path(run_dir) / "kept")
    assert not set(kept["uid"].to_pylist()) & listed and kept.num_rows == len(samples)
    uids = np.load(Path(run_dir) / "uids.npy")
    assert {f"{int(h):016x}{int(lo):016x}" for h, lo in zip(uids["f0"], uids["f1"])} == set(kept["uid"].to_pylist())
    card = datacard.read_datacard(str(run_dir))
    assert_valid(card)
    assert card["safety"]["taken_down"] == len(removed) and card["rows"]["kept"] == kept.num_rows
    assert card["safety"]["takedowns"][0]["matched"] == len(removed)
    assert {n: t["sha256"] for n, t in card["shards"]["tars"].items()} == after
    return record


def open_clip_reads(run_dir) -> int:
    import open_clip
    from open_clip_train.data import get_wds_dataset

    from pipeline.clip.wds_compat import patch_open_clip_webdataset

    patch_open_clip_webdataset()
    names = sorted(storage.read_json(Path(run_dir) / "shards" / "sizes.json"))
    pattern = str(Path(run_dir) / "shards" / f"{{{names[0][:5]}..{names[-1][:5]}}}.tar")
    args = Namespace(train_data=pattern, val_data=pattern, train_num_samples=None, val_num_samples=None,
                     dataset_resampled=False, train_data_upsampling_factors=None, seed=0,
                     batch_size=1, workers=0, world_size=1)
    info = get_wds_dataset(args, open_clip.image_transform(64, is_train=False), is_train=True,
                           tokenizer=open_clip.get_tokenizer("RN50"))
    return sum(images.shape[0] for images, _ in info.dataloader)


@pytest.mark.slow
def test_takedown_on_two_releases(releases, tmp_path):
    a, b = copies(releases, tmp_path)
    lists = write_lists(tmp_path, a, b)
    before = {r: tar_digests(r) for r in (a, b)}
    kept_before = {r: assert_run_invariants(r)["kept_rows"] for r in (a, b)}
    assert main(["takedown", str(a), str(b), *lists["args"]]) == 0

    for run_dir, name in ((a, "a"), (b, "b")):
        removed = lists["by_run"][name]
        assert_taken_down(run_dir, lists["uids"], removed, before[run_dir])
        assert open_clip_reads(run_dir) == kept_before[run_dir] - len(removed)
        assert not (run_dir / "takedowns" / "_pending.json").exists()

    # the same lists again: nothing matches, nothing changes
    after = {r: folder_digests(r) for r in (a, b)}
    assert main(["takedown", str(a), str(b), *lists["args"]]) == 0
    assert {r: folder_digests(r) for r in (a, b)} == after

    # curate diff: B's rows and tars against a copy of B from before the takedown
    from pipeline.release_diff import diff_runs, format_diff

    result = diff_runs(str(releases / "b"), str(b))
    assert result["removed"] == 2 and result["removed_by_reason"] == {"takedown/taken_down": 2}
    assert result["added"] == 0 and result["tars"]["changed"] == sorted(
        storage.read_json(next((b / "takedowns").glob("*.json")))["tars"])
    assert "takedown/taken_down: 2" in format_diff(result)

    # running A again would write kept/ and the ledger from its steps, taken-down rows too
    from pipeline.errors import UserError

    with pytest.raises(UserError, match="taken down"):
        run(config(releases / "a.parquet", a))
    assert folder_digests(a) == after[a]


@pytest.mark.slow
def test_a_killed_takedown_finishes_the_same_way(releases, tmp_path):
    reference = copies(releases, tmp_path / "ref")
    lists = write_lists(tmp_path, *reference)
    assert main(["takedown", *map(str, reference), *lists["args"]]) == 0

    a, b = copies(releases, tmp_path / "killed")
    plan = a / "takedowns" / "_pending.json"
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "takedown", str(a), str(b), *lists["args"]],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not plan.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

    # and a state a kill after the first tar was replaced leaves (each step commits whole)
    from pipeline import takedown as td

    if plan.exists():
        state = storage.read_json(plan)
        first = next(iter(state["tars"]))
        td.rewrite_tar(str(a), first, state["tars"][first])

    assert main(["takedown", str(a), str(b), *lists["args"]]) == 0
    for run_dir, ref in zip((a, b), reference):
        assert tar_digests(run_dir) == tar_digests(ref)
        assert sorted(read_dataset(run_dir / "kept")["uid"].to_pylist()) == \
            sorted(read_dataset(ref / "kept")["uid"].to_pylist())
        assert sorted(read_dataset(run_dir / "ledger")["uid"].to_pylist()) == \
            sorted(read_dataset(ref / "ledger")["uid"].to_pylist())
        assert (run_dir / "uids.npy").read_bytes() == (ref / "uids.npy").read_bytes()
        assert storage.read_json(run_dir / "shards" / "sizes.json") == storage.read_json(ref / "shards" / "sizes.json")
        assert len(list((run_dir / "takedowns").glob("*.json"))) == 1
        assert not (run_dir / "takedowns" / "_pending").exists() or \
            not list((run_dir / "takedowns" / "_pending").iterdir())
        assert_run_invariants(run_dir)


def test_a_bad_list_is_one_line(tmp_path, capsys):
    (tmp_path / "uids.txt").write_text("not-a-uid\n")
    (tmp_path / "run").mkdir()
    assert main(["takedown", str(tmp_path / "run"), "--list", f"uids:{tmp_path / 'uids.txt'}"]) == 2
    err = capsys.readouterr().err
    assert "takedown.uids:" in err and "uids.txt:1" in err and len(err.splitlines()) == 1
    (tmp_path / "mixed.txt").write_text("0" * 32 + "\n")
    assert main(["takedown", str(tmp_path / "run"), "--list", str(tmp_path / "mixed.txt")]) == 2
    assert "name its kind" in capsys.readouterr().err


def bucket_samples(run_dir: str) -> list[dict]:
    import json

    from pipeline.shards import read_samples

    sizes = storage.read_json(storage.join(run_dir, "shards", "sizes.json"))
    return [{"tar": name, **json.loads(sample["json"])}
            for name in sorted(sizes) for sample in read_samples(storage.join(run_dir, "shards", name))]


@pytest.mark.slow
def test_takedown_in_a_bucket(object_store, tmp_path, monkeypatch):
    """Both releases in a bucket of a real S3 server; a takedown killed after its first tar
    (the state it leaves: plan, one tar replaced) finishes on rerun; then nothing changes."""
    from pipeline import takedown as td

    object_store.create_bucket("takedown")
    for key, value in object_store.env().items():
        monkeypatch.setenv(key, value)
    storage.configure({})
    a, b = "s3://takedown/a", "s3://takedown/b"
    make_releases(tmp_path, a, b)
    before = {r: tar_digests(r) for r in (a, b)}
    in_a, in_b = bucket_samples(a), bucket_samples(b)
    listed = {in_a[2]["uid"], in_b[1]["uid"]}
    (tmp_path / "urls.txt").write_text(in_a[2]["url"] + "\n")
    (tmp_path / "uids.txt").write_text(in_b[1]["uid"] + "\n")
    args = ["--list", str(tmp_path / "urls.txt"), "--list", f"uids:{tmp_path / 'uids.txt'}"]

    matcher = td.Matcher.load([td.parse_list(v) for v in args[1::2]])
    plan = td.make_plan(a, matcher)
    storage.write_json(plan, storage.join(a, "takedowns", td.PLAN))
    first = next(iter(plan["tars"]))
    td.rewrite_tar(a, first, plan["tars"][first])
    assert main(["takedown", a, b, *args]) == 0

    for run_dir, gone in ((a, in_a[2]), (b, in_b[1])):
        removed = gone["uid"]
        samples = bucket_samples(run_dir)
        assert not {s["uid"] for s in samples} & listed
        after = tar_digests(run_dir)
        assert {n for n in after if after[n] != before[run_dir][n]} == {gone["tar"]}, "only its tar changed"
        assert storage.read_json(storage.join(run_dir, "shards", "sizes.json")) == \
            {n: sum(s["tar"] == n for s in samples) for n in after}
        ledger = read_dataset(f"{run_dir}/ledger")
        taken = ledger.filter(pa.compute.equal(ledger["reason"], "taken_down"))
        assert taken["uid"].to_pylist() == [removed]
        assert ledger.num_rows == storage.read_json(storage.join(run_dir, "summary.json"))["input_rows"]
        assert set(read_dataset(f"{run_dir}/kept")["uid"].to_pylist()) == {s["uid"] for s in samples}
        card = storage.read_json(storage.join(run_dir, "datacard.json"))
        assert card["safety"]["taken_down"] == 1
        assert {n: t["sha256"] for n, t in card["shards"]["tars"].items()} == after
        assert not storage.marker_exists(storage.join(run_dir, "takedowns", td.PLAN))
    digests = {r: tar_digests(r) for r in (a, b)}
    assert main(["takedown", a, b, *args]) == 0
    assert {r: tar_digests(r) for r in (a, b)} == digests
    storage.configure({})


@pytest.mark.slow
def test_takedown_by_pdq_within_a_distance(releases, tmp_path):
    """A PDQ list entry of a re-encoded, resized copy of one of A's images takes down that
    image (through the kept rows' stored hashes, no image read) and exactly the kept rows
    within the distance of it."""
    from pipeline import pdq

    a, _ = copies(releases, tmp_path)
    kept = read_dataset(a / "kept")
    good = {u for u, q in zip(kept["uid"].to_pylist(), kept["pdq_quality"].to_pylist()) if q >= pdq.MIN_QUALITY}
    target = next(s for s in tar_samples(a) if s["uid"] in good)   # PDQ's floor: flat images never match
    with tarfile.open(a / "shards" / target["tar"]) as tar:
        jpg = tar.extractfile(f"{target['key']}.jpg").read()
    from PIL import Image
    image = Image.open(io.BytesIO(jpg)).convert("RGB").resize((80, 80))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=70)
    listed, _ = pdq.hash_image(out.getvalue())
    (tmp_path / "pdq.txt").write_text(listed + "\n")
    near = pdq.distances(pdq.as_codes(kept["pdq"].to_pylist()), pdq.as_codes([listed])[0]) <= 20
    expected = {u for u, ok, q in zip(kept["uid"].to_pylist(), near, kept["pdq_quality"].to_pylist())
                if ok and q >= pdq.MIN_QUALITY}
    assert target["uid"] in expected
    before = tar_digests(a)
    assert main(["takedown", str(a), "--list", f"pdq:{tmp_path / 'pdq.txt'}", "--pdq-distance", "20"]) == 0
    record = assert_taken_down(a, expected, expected, before)
    assert record["pdq_distance"] == 20 and record["lists"][0]["kind"] == "pdq"


@pytest.mark.slow
def test_takedown_updates_clip_retrieval_embeddings(tmp_path, tiny_clip_checkpoint):
    """clip_score's kept embeddings lose the taken-down rows, image, text and metadata files
    still aligned, the manifest recounted; a stale faiss index goes and builds again."""
    from pipeline.clip.index import build_index

    with FakeWeb() as web:
        urls, texts = serve_world(web, 32)
        pq.write_table(pa.table({"url": urls, "text": texts}), tmp_path / "pairs.parquet")
        run(config(tmp_path / "pairs.parquet", tmp_path / "run", image_dedup={"phash_distance": 0},
                   clip_score={"model": "curate-tiny", "pretrained": str(tiny_clip_checkpoint), "device": "cpu",
                               "precision": "fp32", "batch_size": 16, "threshold": 0.0, "keep_embeddings": True}))
    run_dir = tmp_path / "run"
    build_index(str(run_dir))
    emb = run_dir / "embeddings"
    rows_before = storage.read_json(emb / "_SUCCESS")["rows"]
    listed = set(read_dataset(run_dir / "kept")["uid"].to_pylist()[:3])
    (tmp_path / "uids.txt").write_text("\n".join(sorted(listed)) + "\n")
    assert main(["takedown", str(run_dir), "--list", f"uids:{tmp_path / 'uids.txt'}"]) == 0

    manifest = storage.read_json(emb / "_SUCCESS")
    metadata = pa.concat_tables([pq.read_table(emb / t["metadata"]) for t in manifest["parts"]])
    assert not set(metadata["uid"].to_pylist()) & listed
    assert manifest["rows"] == metadata.num_rows == rows_before - 3
    for triple in manifest["parts"]:
        images, captions = (np.load(emb / triple[kind]) for kind in ("img_emb", "text_emb"))
        rows = pq.read_table(emb / triple["metadata"]).num_rows
        assert images.shape[0] == captions.shape[0] == rows == triple["rows"]
        assert all((emb / triple[kind]).stat().st_size == manifest["files"][triple[kind]]
                   for kind in ("img_emb", "text_emb", "metadata"))
    assert not (emb / "index" / "index_infos.json").exists()
    assert build_index(str(run_dir))["rows"] == rows_before - 3
