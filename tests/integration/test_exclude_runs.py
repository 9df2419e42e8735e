"""`exclude: [RUN_DIR]`: a second release drops what the first holds (uid, sha256, pHash)
as `in_earlier_run` at the earliest step that can tell, and its tars continue the numbering."""
import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.core import storage
from pipeline.testing.fakeweb import FakeWeb
from pipeline.testing.world import make_world
from schemas import INDEX_V1
from tests.support import assert_run_invariants, read_dataset, run, serve_world

A_ROWS = 24
SAME_URL = range(0, 6)                 # A's rows again: same url and caption (uid)
SAME_BYTES = (6, 7, 8, 10, 12)         # A's image bytes at new URLs (sha256)
RESIZED = (9, 11, 13, 16, 22, 23)      # A's images resized and re-encoded (pHash within 2-3 bits)
NEW = range(8)                         # images of another world, > 10 bits from every A image


def resized(jpg: bytes) -> bytes:
    with Image.open(io.BytesIO(jpg)) as image:
        out = io.BytesIO()
        image.convert("RGB").resize((96, 96)).save(out, "JPEG", quality=80)
        return out.getvalue()


def config(pairs, output, processes=1, **extra) -> dict:
    return {"input": {"path": [str(pairs)], "part_rows": 10}, "output": str(output),
            "processes": processes, "allow_networks": ["127.0.0.1/32"],
            "download": {"image_size": 64, "threads": 4, "timeout": 5, "part_rows": 8},
            "image_dedup": {"phash_distance": 4}, "shard": {"samples_per_shard": 4}, **extra}


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    """Run A over A_ROWS world images, and B's input (`b.parquet`): (web, folder, the step
    expected to drop each B url, or kept)."""
    folder = tmp_path_factory.mktemp("exclude")
    with FakeWeb() as web:
        urls, texts = serve_world(web, A_ROWS)
        pq.write_table(pa.table({"url": urls, "text": texts}), folder / "a.parquet")
        run(config(folder / "a.parquet", folder / "a", shard={"samples_per_shard": 4,
                                                              "start_index": "auto"}))
        a_world = make_world(A_ROWS, seed=5, image_size=64)
        rows = [(urls[i], texts[i], "uid") for i in SAME_URL]
        for i in SAME_BYTES:
            web.add_image(f"/b/same/{i}.jpg", a_world[i].jpg)
            rows.append((web.url(f"/b/same/{i}.jpg"), f"the same picture again {i}", "download"))
        for i in RESIZED:
            web.add_image(f"/b/resized/{i}.jpg", resized(a_world[i].jpg))
            rows.append((web.url(f"/b/resized/{i}.jpg"), f"a bigger copy {i}", "image_dedup"))
        for i, sample in zip(NEW, make_world(len(NEW), seed=11, image_size=64)):
            web.add_image(f"/b/new/{i}.jpg", sample.jpg)
            rows.append((web.url(f"/b/new/{i}.jpg"), sample.caption, "kept"))
        pq.write_table(pa.table({"url": [r[0] for r in rows], "text": [r[1] for r in rows]}),
                       folder / "b.parquet")
        yield web, folder, {url: stage for url, _, stage in rows}


@pytest.mark.slow
@pytest.mark.parametrize("uid_step, extra", [   # worker processes load the earlier keys
    ("ingest", {"processes": 2, "shard": {"samples_per_shard": 4, "start_index": "auto"}}),
    ("dedup", {"dedup": {}, "shard": {"samples_per_shard": 4, "start_index": 6}}),
])
def test_second_release_keeps_only_new_content(releases, uid_step, extra):
    web, folder, expected = releases
    run_a, run_b = folder / "a", folder / f"b-{uid_step}"
    summary_a = assert_run_invariants(run_a)
    assert summary_a["kept_rows"] == A_ROWS   # A keeps all it has: B's drops are all A's doing
    fetched = {url: web.count(url) for url, stage in expected.items() if stage == "uid"}
    summary = run(config(folder / "b.parquet", run_b, exclude=[str(run_a)], **extra))

    assert_run_invariants(run_b)
    ledger = read_dataset(run_b / "ledger")
    got = {u: (s, r) for u, s, r in zip(*(ledger[c].to_pylist() for c in ("url", "stage", "reason")))}
    assert len(got) == ledger.num_rows == len(expected)
    for url, stage in expected.items():
        want = ("kept", "kept") if stage == "kept" else \
            (uid_step if stage == "uid" else stage, "in_earlier_run")
        assert got[url] == want, url
    assert summary["kept_rows"] == len(NEW)
    assert {url: web.count(url) for url in fetched} == fetched   # dropped before any fetch
    # images of earlier runs are never stored: download's parts hold only rows it kept
    stored = pa.concat_tables([pq.read_table(p, columns=["url"])
                               for p in (run_b / "steps").glob("*_download/map/data/*.parquet")])
    assert not {u for u in stored["url"].to_pylist() if expected[u] in ("uid", "download")}

    # tars continue A's numbering: A wrote 00000..00005
    sizes_a = storage.read_json(run_a / "shards" / "sizes.json")
    sizes_b = storage.read_json(run_b / "shards" / "sizes.json")
    assert sorted(sizes_a) == [f"{i:05d}.tar" for i in range(6)]
    assert sorted(sizes_b) == ["00006.tar", "00007.tar"] and sum(sizes_b.values()) == len(NEW)
    assert all((run_b / "shards" / name).is_file() for name in sizes_b)
    kept = read_dataset(run_b / "kept")
    assert set(kept["shard"].to_pylist()) == set(sizes_b)

    # each run's index: uid, sha256, phash, pdq of its kept rows, no image bytes, small
    for run_dir, rows in ((run_a, A_ROWS), (run_b, len(NEW))):
        index = read_dataset(run_dir / "index")
        assert index.schema.equals(INDEX_V1) and index.num_rows == rows
        assert index["sha256"].null_count == 0 and index["phash"].null_count == 0
        assert index["pdq"].null_count == 0 and index["pdq_quality"].null_count == 0
        files = list((run_dir / "index").iterdir())
        # a footer per part and the four hashes per row (~100 bytes compressed), no image
        assert sum(p.stat().st_size for p in files) < 2560 * len(files) + 160 * rows
    index_b = read_dataset(run_b / "index")
    assert sorted(index_b["uid"].to_pylist()) == sorted(kept["uid"].to_pylist())


@pytest.mark.slow
def test_exclude_names_finished_runs_only(releases, tmp_path):
    from pipeline.errors import UserError

    _, folder, _ = releases
    with pytest.raises(UserError, match="not a finished run"):
        run(config(folder / "b.parquet", tmp_path / "x", exclude=[str(tmp_path / "nothing")]))
    with pytest.raises(UserError, match="own folder"):
        run(config(folder / "b.parquet", folder / "a", exclude=[str(folder / "a")]))


@pytest.mark.parametrize("dedup", [True, False])
def test_a_rerun_excluding_itself_keeps_nothing_on_an_object_store(tmp_path, dedup):
    """Through `memory://` (no listing: the index is found through its `_SUCCESS`), the same
    input again, excluding the first run, drops every valid row: at dedup, or at ingest."""
    from tests.support import write_sample

    sample = write_sample(tmp_path / "s.parquet", rows=300)
    base = f"memory://exclude-{dedup}"
    config = {"input": {"path": [str(sample)], "part_rows": 100}, "processes": 1,
              **({"dedup": {}} if dedup else {})}
    first = run({**config, "output": f"{base}/a"})
    assert storage.read_marker(f"{base}/a/index/_SUCCESS")["files"]
    second = run({**config, "output": f"{base}/b", "exclude": [f"{base}/a"]})
    assert second["kept_rows"] == 0 and first["kept_rows"] > 0
    if dedup:   # every copy of a kept uid, before `duplicate`
        assert second["stages"][1]["dropped"] == {"in_earlier_run": second["stages"][1]["rows_in"]}
    else:
        ingest = second["stages"][0]
        assert ingest["rows_out"] == 0 and ingest["dropped"]["in_earlier_run"] == first["kept_rows"]
