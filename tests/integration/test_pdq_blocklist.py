"""PDQ blocklists over a real download (loopback): a list of the originals' PDQ hashes catches
their resized, low-quality re-encoded and lightly cropped copies, passes other photos, and
every kept row carries its PDQ hash into kept/ and the run's index.

Measured on scikit-image's photo tiles (256 px, 53 tiles) at the default distance 31:
half-size 100%, JPEG quality 20 98%, 2% cropped (1% a side) 74%, 5% cropped 6% (PDQ is a
global DCT hash: a crop shifts the frame, and 5% is past what it tolerates), other photos
0% (their nearest listed hash is 96 bits away)."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.pdq import hash_image
from pipeline.testing.fakeweb import FakeWeb
from pipeline.testing.photos import jpeg, photo_tiles
from tests.support import assert_run_invariants, read_dataset, run

LISTED = 20


def cropped(tile, fraction):
    width, height = tile.size
    cut_w, cut_h = round(width * fraction / 2), round(height * fraction / 2)
    return tile.crop((cut_w, cut_h, width - cut_w, height - cut_h))


VARIANTS = {
    "half": lambda t: jpeg(t.resize((t.size[0] // 2, t.size[1] // 2), Image.BILINEAR)),
    "jpeg_q20": lambda t: jpeg(t, 20),
    "crop_2pct": lambda t: jpeg(cropped(t, 0.02)),
    "crop_5pct": lambda t: jpeg(cropped(t, 0.05)),
}
FLOORS = {"half": 0.9, "jpeg_q20": 0.9, "crop_2pct": 0.6}   # crop_5pct is reported, not promised


def serve_and_list(tmp_path, web):
    """The served copies and other photos, the input table and the list; returns the rows
    (url, kind), the other photos and the config (output: tmp_path / "run")."""
    tiles = photo_tiles(256)
    listed, others = tiles[:LISTED], tiles[LISTED:]
    hashes = [hash_image(jpeg(t)) for t in listed]
    # pdq-photo-hasher's `hash,quality,name` lines, with a comment and a blank line
    (tmp_path / "pdq.txt").write_text("# takedown list\n\n" + "".join(
        f"{h},{q},tile-{i}.jpg\n" for i, (h, q) in enumerate(hashes)))
    rows = []    # (url, kind)
    for i, tile in enumerate(listed):
        for kind, make in VARIANTS.items():
            web.add_image(f"/{kind}/{i}.jpg", make(tile))
            rows.append((web.url(f"/{kind}/{i}.jpg"), kind))
    for i, tile in enumerate(others):
        web.add_image(f"/other/{i}.jpg", jpeg(tile))
        rows.append((web.url(f"/other/{i}.jpg"), "other"))
    pq.write_table(pa.table({"url": [u for u, _ in rows], "text": [f"photo {k} {i}" for i, (_, k) in enumerate(rows)]}),
                   tmp_path / "pairs.parquet")
    config = {"input": {"path": [str(tmp_path / "pairs.parquet")], "part_rows": 40},
              "output": str(tmp_path / "run"), "processes": 2, "allow_networks": ["127.0.0.1/32"],
              "download": {"image_size": 32, "threads": 8, "timeout": 5},
              "blocklist": {"pdq": [str(tmp_path / "pdq.txt")]},
              "ray": {"num_cpus": 2}}
    return rows, others, config


@pytest.mark.slow
def test_pdq_list_catches_near_copies_and_passes_other_photos(tmp_path):
    with FakeWeb() as web:
        rows, others, config = serve_and_list(tmp_path, web)
        summary = run(config)
    run_dir = tmp_path / "run"
    assert_run_invariants(run_dir)
    ledger = read_dataset(run_dir / "ledger")
    blocked = ledger.filter(pa.compute.equal(ledger["reason"], "blocklisted"))
    assert blocked["url"].null_count == blocked.num_rows and blocked["uid"].null_count == 0, "uid and reason only"
    assert set(ledger.column_names) == {"uid", "url", "stage", "reason", "detail"}
    assert blocked["detail"].null_count == blocked.num_rows
    named = set(u for u in ledger["url"].to_pylist() if u)
    assert len(named) == len(rows) - blocked.num_rows, "every other row is in the ledger with its URL"

    caught = {kind: np.mean([url not in named for url, k in rows if k == kind]) for kind in (*VARIANTS, "other")}
    print("PDQ recall at distance 31:", {k: round(float(v), 3) for k, v in caught.items() if k != "other"},
          "false-positive rate:", round(float(caught["other"]), 3))
    for kind, floor in FLOORS.items():
        assert caught[kind] >= floor, (kind, caught[kind])
    assert caught["other"] == 0.0
    stages = {s["name"]: s for s in summary["stages"]}
    assert stages["download"]["dropped"] == {"blocklisted": blocked.num_rows}

    kept = read_dataset(run_dir / "kept")
    assert kept.schema.field("pdq").type == pa.string() and kept.schema.field("pdq_quality").type == pa.int32()
    assert all(len(h) == 64 and int(h, 16) >= 0 for h in kept["pdq"].to_pylist())
    assert all(0 <= q <= 100 for q in kept["pdq_quality"].to_pylist())
    expected = {web_url: hash_image(jpeg(t))[0] for web_url, t in zip(
        [u for u, k in rows if k == "other"], others)}
    assert {u: h for u, h in zip(kept["url"].to_pylist(), kept["pdq"].to_pylist()) if u in expected} == expected
    index = read_dataset(run_dir / "index")
    assert sorted(zip(index["uid"].to_pylist(), index["pdq"].to_pylist(), index["pdq_quality"].to_pylist())) == \
        sorted(zip(kept["uid"].to_pylist(), kept["pdq"].to_pylist(), kept["pdq_quality"].to_pylist()))


@pytest.mark.parametrize("content, message", [
    ("# list\n" + "ab" * 32 + "\n" + "zz" * 32 + "\n", r"pdq.txt:3: not a PDQ hash"),
    ("ab" * 31 + "\n", r"pdq.txt:1: not a PDQ hash"),
])
def test_a_bad_pdq_list_is_one_line_naming_file_and_line(tmp_path, content, message):
    from pipeline.errors import UserError

    (tmp_path / "pdq.txt").write_text(content)
    pq.write_table(pa.table({"url": ["http://a.example/y.jpg"], "text": ["a red circle"]}), tmp_path / "p.parquet")
    with pytest.raises(UserError, match=message) as error:
        run({"input": {"path": [str(tmp_path / "p.parquet")]}, "output": str(tmp_path / "run"),
             "blocklist": {"pdq": [str(tmp_path / "pdq.txt")]}})
    assert "\n" not in str(error.value)


@pytest.mark.slow
def test_same_result_on_ray(tmp_path):
    with FakeWeb() as web:
        _, _, config = serve_and_list(tmp_path, web)
        local = run(config)
        ray = run({**config, "engine": "ray", "output": str(tmp_path / "ray")})
    assert [{**s, "seconds": 0} for s in local["stages"]] == [{**s, "seconds": 0} for s in ray["stages"]]
    columns = ["uid", "pdq", "pdq_quality"]
    assert read_dataset(tmp_path / "run" / "kept").select(columns).sort_by("uid") == \
        read_dataset(tmp_path / "ray" / "kept").select(columns).sort_by("uid")
