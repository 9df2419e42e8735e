"""semantic_dedup on world images through download and clip_score (curate-tiny): re-crops
and colour shifts that pHash misses are dropped as `semantic_duplicate`; the kept set does
not depend on the part count; every input row is in the ledger once.

curate-tiny knows colours and backgrounds, hardly shapes or positions: two world images of
the same colour on the same background embed at cosine ~0.99. So the labelled set takes
one original per (colour, background) pair (30 distinct images), plus a re-crop or a colour
shift of some of them; precision and recall are measured on that set (printed with -s).
"""
import io

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.stages.phash_lsh import phash_of
from pipeline.testing.fakeweb import FakeWeb
from pipeline.testing.world import describe, encode_jpeg, make_sample
from tests.support import assert_run_invariants, kept_uids, ledger_rows, read_dataset, read_summary, run

pytestmark = pytest.mark.slow  # image pipelines through download and clip_score, on every engine

WORLD_SEED = 5
PHASH_DISTANCE = 2
EPS = 0.05   # the default


def originals(limit: int = 400) -> list[int]:
    """The first world index of each (colour, background) pair: 30 distinct-looking images."""
    seen, chosen = set(), []
    for index in range(limit):
        scene = describe(index, WORLD_SEED)
        if (scene.colour, scene.background) not in seen:
            seen.add((scene.colour, scene.background))
            chosen.append(index)
    return chosen


def recrop(jpg: bytes) -> bytes:
    with Image.open(io.BytesIO(jpg)) as image:
        w, h = image.size
        return encode_jpeg(image.convert("RGB").crop((5, 4, w - 3, h - 6)).resize((w, h)))


def colour_shift(jpg: bytes) -> bytes:
    with Image.open(io.BytesIO(jpg)) as image:
        pixels = np.asarray(image.convert("RGB")).astype(np.int16)
    shifted = np.clip(pixels + np.array([14, -10, 8]), 0, 255).astype(np.uint8)
    return encode_jpeg(Image.fromarray(shifted))


def labelled_set() -> tuple[list[bytes], list[str], list[int]]:
    """Images, captions and a group id per row (a variant shares its original's group):
    every original, and a variant of every other original that pHash does not match."""
    jpgs, captions, groups = [], [], []
    for group, index in enumerate(originals()):
        sample = make_sample(index, WORLD_SEED, 64)
        jpgs.append(sample.jpg)
        captions.append(sample.caption)
        groups.append(group)
        if group % 2:
            continue
        variant = (recrop if group % 4 == 0 else colour_shift)(sample.jpg)
        if bin(phash_of(variant) ^ phash_of(sample.jpg)).count("1") > PHASH_DISTANCE:
            jpgs.append(variant)
            captions.append(sample.caption)
            groups.append(group)
    return jpgs, captions, groups


def config_for(folder, pairs, checkpoint, name: str, part_rows: int, processes: int, **extra) -> dict:
    return {"input": {"path": [str(pairs)], "part_rows": part_rows}, "output": str(folder / name),
            "engine": "local", "processes": processes, "allow_networks": ["127.0.0.1/32"],
            "download": {"image_size": 64, "threads": 8, "timeout": 5, "part_rows": part_rows},
            "image_dedup": {"phash_distance": PHASH_DISTANCE},
            "clip_score": {"model": "curate-tiny", "pretrained": str(checkpoint), "device": "cpu",
                           "precision": "fp32", "batch_size": 32, "filter": "none"},
            "semantic_dedup": {}, **extra}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_clip_checkpoint):
    """The labelled set in one part on one process with one cluster, and with 3 clusters in
    one part on one process and in parts of 6 rows (7 parts, global tasks of 10 rows,
    keep_embeddings) on two processes; yields (folder, groups by url)."""
    folder = tmp_path_factory.mktemp("semdedup")
    jpgs, captions, groups = labelled_set()
    with FakeWeb() as web:
        urls = []
        for i, jpg in enumerate(jpgs):
            web.add_image(f"/s/{i}.jpg", jpg)
            urls.append(web.url(f"/s/{i}.jpg"))
        pairs = folder / "pairs.parquet"
        pq.write_table(pa.table({"url": urls, "text": captions}), pairs)
        # one cluster: every pair is compared (a pair split over clusters is never compared,
        # SemDeDup's trade; which pairs split depends on the uids, so on the server's port)
        run(config_for(folder, pairs, tiny_clip_checkpoint, "one", 1000, 1, semantic_dedup={"clusters": 1}))
        sem = {"semantic_dedup": {"clusters": 3}}
        run(config_for(folder, pairs, tiny_clip_checkpoint, "few", 1000, 1, **sem))
        many = config_for(folder, pairs, tiny_clip_checkpoint, "many", 6, 2, task_rows=10, **sem)
        many["clip_score"]["keep_embeddings"] = True
        run(many)
        yield folder, dict(zip(urls, groups))   # the web stays up for the engine runs


def precision_recall(run_dir, group_of: dict) -> tuple[float, float, dict]:
    """Of the rows dropped as `semantic_duplicate`: a drop is right when its group keeps
    another row; a group of n rows reaching semantic_dedup should lose n - 1."""
    ledger = read_dataset(run_dir / "ledger")
    step = ledger.filter(pc.equal(ledger["stage"], "semantic_dedup"))
    assert set(step["reason"].to_pylist()) <= {"semantic_duplicate"}
    dropped = step["url"].to_pylist()
    reached = dropped + read_dataset(run_dir / "kept")["url"].to_pylist()
    size, lost = {}, {}
    for url in reached:
        size[group_of[url]] = size.get(group_of[url], 0) + 1
    for url in dropped:
        lost[group_of[url]] = lost.get(group_of[url], 0) + 1
    right = sum(min(n, size[g] - 1) for g, n in lost.items())
    expected = sum(n - 1 for n in size.values())
    counts = {"dropped": len(dropped), "right": right, "expected": expected, "reached": len(reached)}
    return (right / len(dropped) if dropped else 1.0), (right / expected if expected else 1.0), counts


def test_phash_misses_the_variants_and_semantic_dedup_catches_them(runs):
    folder, group_of = runs
    summary = assert_run_invariants(folder / "one")
    stages = {s["name"]: s for s in summary["stages"]}
    assert stages["image_dedup"]["dropped"] == {}, "pHash must miss every variant here"
    assert stages["clip_score"]["dropped"] == {}
    precision, recall, counts = precision_recall(folder / "one", group_of)
    print(f"\nsemantic_duplicate on the labelled set: precision {precision:.3f}, recall {recall:.3f}, {counts}")
    assert counts["expected"] == 10 and counts["reached"] == 40
    assert precision == 1.0 and recall == 1.0
    kept = read_dataset(folder / "one" / "kept")
    assert "image_embedding" not in kept.column_names, "embeddings kept only with keep_embeddings"
    stats = read_summary(folder / "one")
    assert [s["name"] for s in stats["stages"]][-2:] == ["clip_score", "semantic_dedup"]


def test_same_kept_set_for_any_part_count(runs):
    folder, group_of = runs
    assert_run_invariants(folder / "many")
    assert len(list((folder / "many" / "steps").glob("*_semantic_dedup/scatter/done/*.json"))) > 1
    assert kept_uids(folder / "few") == kept_uids(folder / "many")
    assert ledger_rows(folder / "few") == ledger_rows(folder / "many")
    # with keep_embeddings the kept rows keep them (and clip_score still writes its layout)
    kept = read_dataset(folder / "many" / "kept")
    assert {"image_embedding", "text_embedding"} <= set(kept.column_names)
    assert (folder / "many" / "embeddings" / "_SUCCESS").exists()


def test_report_shows_removed_pairs_beside_what_they_duplicate(runs):
    import json

    from pipeline.report.page import write_report

    folder, group_of = runs
    run_dir = folder / "one"
    step = next((run_dir / "steps").glob("*_semantic_dedup"))
    examples = json.loads((step / "stats.json").read_text())["semantic_dedup"]["examples"]
    url_of = dict(zip(*(read_dataset(run_dir / "ledger")[c].to_pylist() for c in ("uid", "url"))))
    url_of.update(zip(*(read_dataset(run_dir / "kept")[c].to_pylist() for c in ("uid", "url"))))
    assert len(examples) == 10   # every removed pair of the labelled set (at most 12 are kept)
    assert all(group_of[url_of[p["removed"]]] == group_of[url_of[p["kept"]]] for p in examples)
    assert all(p["kept"] in kept_uids(run_dir) and p["similarity"] >= 1 - EPS for p in examples)
    html = open(write_report(run_dir)).read()
    section = html[html.index('<section id="semantic">'):]
    section = section[:section.index("</section>")]
    assert section.count('<div class="pair">') == 8 and section.count("removed: cosine") == 8


@pytest.mark.parametrize("engine", ["ray", "spark"])
def test_same_result_on_ray_and_spark(runs, tiny_clip_checkpoint, engine):
    folder, _ = runs
    cfg = config_for(folder, folder / "pairs.parquet", tiny_clip_checkpoint, engine, 6, 2, task_rows=10,
                     semantic_dedup={"clusters": 3})
    run({**cfg, "engine": engine, "ray": {"num_cpus": 2}, "spark": {"master": "local[2]"}})
    assert_run_invariants(folder / engine)
    assert kept_uids(folder / engine) == kept_uids(folder / "few")
    assert ledger_rows(folder / engine) == ledger_rows(folder / "few")


def test_a_later_run_excludes_what_an_earlier_one_holds_by_embedding(tmp_path, tiny_clip_checkpoint):
    """Run A keeps some originals; run B (exclude: [A]) gets re-crops and colour shifts of
    them at new URLs (pHash misses them) and new originals: the variants go as
    `in_earlier_run` at semantic_dedup, through A's index (its embeddings, not its images)."""
    jpgs, captions, groups = labelled_set()
    first = {g: i for i, g in reversed(list(enumerate(groups)))}   # a group's original
    has_variant = {g for g in groups if groups.count(g) > 1}
    in_a = [i for i in range(len(jpgs)) if first[groups[i]] == i and groups[i] in has_variant]
    in_b = [i for i in range(len(jpgs)) if i not in in_a]
    with FakeWeb() as web:
        def pairs(name, rows):
            urls = []
            for i in rows:
                web.add_image(f"/{name}/{i}.jpg", jpgs[i])
                urls.append(web.url(f"/{name}/{i}.jpg"))
            pq.write_table(pa.table({"url": urls, "text": [captions[i] for i in rows]}), tmp_path / f"{name}.parquet")
            return dict(zip(urls, rows))
        pairs("a", in_a)
        b_rows = pairs("b", in_b)
        one = {"semantic_dedup": {"clusters": 1}}
        run(config_for(tmp_path, tmp_path / "a.parquet", tiny_clip_checkpoint, "A", 1000, 1, **one))
        summary = run(config_for(tmp_path, tmp_path / "b.parquet", tiny_clip_checkpoint, "B", 8, 2,
                                 exclude=[str(tmp_path / "A")], **one))
    index = read_dataset(tmp_path / "A" / "index")
    assert "image_embedding" in index.column_names and index.num_rows == len(in_a)
    kept_a = read_dataset(tmp_path / "A" / "kept")
    assert not {"image_embedding", "_index_embedding"} & set(kept_a.column_names)
    assert_run_invariants(tmp_path / "B")
    ledger = read_dataset(tmp_path / "B" / "ledger")
    gone = ledger.filter(pc.equal(ledger["reason"], "in_earlier_run"))
    assert set(gone["stage"].to_pylist()) == {"semantic_dedup"}
    variants = {i for i in in_b if first[groups[i]] != i}
    assert {b_rows[u] for u in gone["url"].to_pylist()} == variants and len(variants) == len(in_a)
    assert {b_rows[u] for u in read_dataset(tmp_path / "B" / "kept")["url"].to_pylist()} == set(in_b) - variants
    assert summary["kept_rows"] == len(in_b) - len(variants)
