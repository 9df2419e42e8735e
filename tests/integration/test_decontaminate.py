"""decontaminate on real photographs (scikit-image's, cut into distinct tiles: see
`pipeline.testing.photos`): augmented copies (5-10% crop, resize, colour shift, JPEG
quality 20-35, a new caption) of held-out photos, planted among distractor photos, are
dropped as `eval_duplicate` with their set's name in the ledger; recall and precision at
the chosen thresholds (printed with -s); bad sets fail before the run; every engine gives
the same result."""
import io
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipeline.decontam.index import EvalIndex, ModelSpec, build_index, embed_images
from pipeline.decontam.matching import HashIndex, pool_hashes, pr_curve, variant_hashes
from pipeline.errors import UserError
from pipeline.stages.decontaminate import EVAL_DUPLICATE, DecontaminateSettings, DecontaminateStage, EvalSetSettings
from pipeline.testing.photos import augment, jpeg, photo_tiles
from tests.support import assert_run_invariants, kept_uids, ledger_rows, read_dataset, read_summary, run

EVAL, DISTRACTORS = 100, 120


@pytest.fixture(scope="module")
def photos():
    """(eval photos as JPEG, planted copies (copy i of eval photo i), distractors: each
    distractor photo as it is and augmented the same way)."""
    tiles = photo_tiles()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(tiles))
    assert len(tiles) >= EVAL + DISTRACTORS
    held = [tiles[i] for i in order[:EVAL]]
    others = [tiles[i] for i in order[EVAL:EVAL + DISTRACTORS]]
    copies = [augment(t, rng) for t in held]
    distractors = [jpeg(t) for t in others] + [augment(t, rng) for t in others]
    return [jpeg(t) for t in held], copies, distractors


def test_recall_and_precision_on_real_photos(photos, tmp_path):
    """The perceptual-hash curve over distances; the default distance keeps recall >= 0.95
    at precision >= 0.99, through the stage's own `process`."""
    held, copies, distractors = photos
    defaults = DecontaminateSettings()
    index = HashIndex(np.stack([variant_hashes(j) for j in held]), defaults.phash_distance, 128)
    owner, dist = index.match(pool_hashes(copies + distractors)[0])
    positive = dist[:EVAL].astype(float)
    positive[owner[:EVAL] != np.arange(EVAL)] = 129    # a copy matched to another photo is missed
    curve = pr_curve(positive, dist[EVAL:].astype(float), range(8, 25, 2), higher_matches=False)
    print(f"\nphash <= {defaults.phash_distance} and phash + dhash <= t: (t, recall, precision)",
          [(d, round(r, 3), round(p, 3)) for d, r, p in curve])
    _, recall, precision = next(row for row in curve if row[0] == defaults.hash_distance)
    assert recall >= 0.95 and precision >= 0.99, (recall, precision)

    folder = tmp_path / "eval"
    folder.mkdir()
    for i, j in enumerate(held):
        (folder / f"{i:03d}.jpg").write_bytes(j)
    settings = DecontaminateSettings(sets=[EvalSetSettings("held", str(folder))], embeddings=False,
                                     cache=str(tmp_path / "cache"))
    table = pa.table({"uid": [f"{i:04d}" for i in range(len(copies) + len(distractors))],
                      "jpg": pa.array(copies + distractors, pa.binary())})
    out = DecontaminateStage(settings).process(table)
    removed = pc.equal(out["_reason"], EVAL_DUPLICATE).to_numpy(zero_copy_only=False)
    removed = np.nan_to_num(removed.astype(float)).astype(bool)
    tp, fp = removed[:EVAL].sum(), removed[EVAL:].sum()
    recall, precision = tp / EVAL, tp / max(1, tp + fp)
    print(f"stage at the defaults: recall {recall:.3f}, precision {precision:.3f} "
          f"({EVAL} copies among {len(distractors)} distractors)")
    assert recall >= 0.95 and precision >= 0.99
    assert set(out.filter(pc.is_valid(out["_reason"]))["_detail"].to_pylist()) == {"held"}


def test_embedding_curve_with_the_offline_model(photos, tiny_clip_checkpoint):
    """The CLIP image-embedding curve with the one model available offline (curate-tiny,
    trained on generated shapes): measured and printed. It does not separate real photos
    (unrelated tiles embed at cosine ~0.9999), so no threshold reaches precision 0.99 with
    useful recall; with a real CLIP the same code matches re-crops that the hash misses."""
    held, copies, distractors = photos
    spec = ModelSpec("curate-tiny", str(tiny_clip_checkpoint), "cpu", "fp32", 64)
    eval_x = embed_images(spec, held)
    x = embed_images(spec, copies + distractors)
    sims = x @ eval_x.T
    positive = sims[np.arange(EVAL), np.arange(EVAL)]
    negative = sims[EVAL:].max(axis=1)
    curve = pr_curve(positive, negative, [0.9, 0.95, 0.99, 0.999, 0.9999], higher_matches=True)
    print("\ncurate-tiny cosine, recall, precision:", [(t, round(r, 3), round(p, 3)) for t, r, p in curve])
    assert np.allclose(np.linalg.norm(eval_x, axis=1), 1, atol=1e-3)
    index = EvalIndex([{"hashes": np.zeros((EVAL, 76, 2), np.uint64), "valid": np.zeros(EVAL, bool),
                        "embeddings": eval_x}], 8, 16)
    found = index.match(np.zeros((3, 2), np.uint64), np.zeros(3, bool), eval_x[:3], 0.999)
    assert found["owner"].tolist() == [0, 1, 2] and (found["method"] == 2).all()   # an exact copy matches


def test_cache_is_keyed_by_content(photos, tmp_path):
    held = photos[0][:5]
    keys = [f"{i}.jpg" for i in range(5)]
    first, hits = build_index(keys, held, True, None, str(tmp_path))
    again, hits_again = build_index(keys, held, True, None, str(tmp_path))
    other, hits_other = build_index(keys, held[:4] + held[:1], True, None, str(tmp_path))
    assert hits == {"hashes": False} and hits_again == {"hashes": True} and hits_other == {"hashes": False}
    assert (first["hashes"] == again["hashes"]).all() and len(list(tmp_path.glob("*.npz"))) == 2


def write_sets(folder, held: list[bytes]) -> dict:
    """The held photos as three sets: a folder (0-29), a WebDataset tar (30-39), a parquet
    file (40-49)."""
    images = folder / "coco-like"
    images.mkdir(parents=True)
    for i in range(30):
        (images / f"{i:03d}.jpg").write_bytes(held[i])
    tar_path = folder / "wds-like.tar"
    with tarfile.open(tar_path, "w") as tar:
        for i in range(30, 40):
            for name, data in ((f"{i:05d}.jpg", held[i]), (f"{i:05d}.txt", b"a caption")):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    pq.write_table(pa.table({"image": pa.array(held[40:50], pa.binary()), "id": [f"p{i}" for i in range(40, 50)]}),
                   folder / "hf-like.parquet")
    return {"sets": [{"name": "coco-like", "path": str(images)},
                     {"name": "wds-like", "path": str(tar_path)},
                     {"name": "hf-like", "path": str(folder / "hf-like.parquet"), "image_col": "image",
                      "key_col": "id"}]}


def pool_config(fakeweb, folder, photos, engine: str = "local", name: str = "run") -> dict:
    """Copies of 50 held photos (new captions) among 60 distractors, served on loopback."""
    held, copies, distractors = photos
    pairs = folder / "pairs.parquet"
    if not pairs.exists():
        urls, texts = [], []
        for i, data in enumerate(copies[:50] + distractors[:60]):
            fakeweb.add_image(f"/decontam/{i}.jpg", data)
            urls.append(fakeweb.url(f"/decontam/{i}.jpg"))
            texts.append(f"a reposted photo number {i}" if i < 50 else f"some other photo {i}")
        pq.write_table(pa.table({"url": urls, "text": texts}), pairs)
    if not (folder / "sets").exists():
        SETS[str(folder)] = write_sets(folder / "sets", held)
    config = {"input": {"path": [str(pairs)], "part_rows": 40}, "output": str(folder / name),
              "engine": engine, "processes": 2, "allow_networks": ["127.0.0.1/32"],
              "download": {"image_size": 128, "threads": 8, "timeout": 5},
              "image_dedup": {"phash_distance": 0},
              "decontaminate": {**SETS[str(folder)], "embeddings": False, "cache": str(folder / "cache")},
              "shard": {"samples_per_shard": 40}}
    return config


SETS: dict = {}


def removed_by_set(run_dir) -> dict:
    ledger = read_dataset(run_dir / "ledger")
    rows = ledger.filter(pc.equal(ledger["reason"], EVAL_DUPLICATE))
    assert set(rows["stage"].to_pylist()) <= {"decontaminate"}
    found: dict = {}
    for detail in rows["detail"].to_pylist():
        found[detail] = found.get(detail, 0) + 1
    return found


def test_pipeline_drops_eval_copies_with_the_set_name(fakeweb, photos, tmp_path):
    config = pool_config(fakeweb, tmp_path, photos)
    run(config)
    summary = assert_run_invariants(tmp_path / "run")
    stage = next(s for s in summary["stages"] if s["name"] == "decontaminate")
    by_set = removed_by_set(tmp_path / "run")
    print("\nremoved per set:", by_set, "of", stage["rows_in"], "rows")
    assert by_set.get("coco-like", 0) >= 28 and by_set.get("wds-like", 0) >= 9 and by_set.get("hf-like", 0) >= 9
    assert sum(by_set.values()) <= 50 and stage["dropped"] == {EVAL_DUPLICATE: sum(by_set.values())}
    ledger = read_dataset(tmp_path / "run" / "ledger")
    assert ledger.filter(pc.equal(ledger["reason"], "kept"))["detail"].null_count == len(kept_uids(tmp_path / "run"))
    record = read_summary(tmp_path / "run")
    import json

    stats = json.loads(next((tmp_path / "run" / "steps").glob("*_decontaminate/stats.json")).read_text())
    table = stats["decontaminate"]
    assert [(s["name"], s["images"]) for s in table["sets"]] == [("coco-like", 30), ("wds-like", 10), ("hf-like", 10)]
    assert [s["removed"] for s in table["sets"]] == [by_set.get(n, 0) for n in ("coco-like", "wds-like", "hf-like")]
    assert table["examples"] and all(e["eval_image"].startswith("data:image/jpeg") for e in table["examples"])
    report = (tmp_path / "run" / "report.html").read_text()
    assert 'id="decontaminate"' in report and "coco-like" in report and "wds-like" in report
    assert record["kept_rows"] >= 58

    again = pool_config(fakeweb, tmp_path, photos, name="again")   # the sets' index comes from the cache
    run(again)
    stats = json.loads(next((tmp_path / "again" / "steps").glob("*_decontaminate/stats.json")).read_text())
    assert all(s["cached"] for s in stats["decontaminate"]["sets"])
    assert ledger_rows(tmp_path / "again") == ledger_rows(tmp_path / "run")


@pytest.mark.parametrize("problem", ["missing folder", "unreadable tar", "parquet without the column"])
def test_a_bad_set_is_one_line_naming_the_file_before_the_run(tmp_path, problem):
    from pipeline.app import run_pipeline
    from pipeline.config import settings_from_dict

    if problem == "missing folder":
        path, extra = tmp_path / "nowhere", {}
    elif problem == "unreadable tar":
        path, extra = tmp_path / "broken.tar", {}
        path.write_bytes(b"this is not a tar archive at all" * 40)
    else:
        path, extra = tmp_path / "set.parquet", {"image_col": "image"}
        pq.write_table(pa.table({"jpg": [b"x"]}), path)
    pairs = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"url": ["http://127.0.0.1:9/a.jpg"], "text": ["a photo"]}), pairs)
    config = {"input": {"path": [str(pairs)]}, "output": str(tmp_path / "run"), "download": {},
              "decontaminate": {"sets": [{"name": "bad", "path": str(path), **extra}]}}
    with pytest.raises(UserError) as error:
        run_pipeline(settings_from_dict(config, "t.yaml"), config["output"], log=lambda *_: None)
    message = str(error.value)
    assert "\n" not in message and str(path) in message and "bad" in message, message
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_ray_and_spark_give_the_local_result(fakeweb, photos, tmp_path):
    runs = {}
    for engine in ("local", "ray", "spark"):
        config = pool_config(fakeweb, tmp_path, photos, engine, name=engine)
        config["ray"] = {"num_cpus": 2}
        config["spark"] = {"master": "local[2]"}
        run(config)
        assert_run_invariants(tmp_path / engine)
        runs[engine] = tmp_path / engine
    assert kept_uids(runs["local"]) == kept_uids(runs["ray"]) == kept_uids(runs["spark"])
    assert ledger_rows(runs["local"]) == ledger_rows(runs["ray"]) == ledger_rows(runs["spark"])
    assert removed_by_set(runs["local"]) == removed_by_set(runs["ray"]) == removed_by_set(runs["spark"])


@pytest.mark.slow
def test_embeddings_come_from_clip_score_when_it_runs(fakeweb, photos, tmp_path, tiny_clip_checkpoint):
    """With clip_score in the run, its model embeds the sets and its `image_embedding`
    column is the pool's (nothing encoded twice); curate-tiny cannot tell real photos apart,
    so its threshold is set out of reach here and the hashes alone decide."""
    import json

    config = pool_config(fakeweb, tmp_path, photos)
    config["clip_score"] = {"model": "curate-tiny", "pretrained": str(tiny_clip_checkpoint), "device": "cpu",
                            "precision": "fp32", "batch_size": 32, "filter": "none"}
    config["decontaminate"] = {**config["decontaminate"], "embeddings": True, "embedding_threshold": 1.0}
    run(config)
    assert_run_invariants(tmp_path / "run")
    stats = json.loads(next((tmp_path / "run" / "steps").glob("*_decontaminate/stats.json")).read_text())
    assert stats["decontaminate"]["model"] == "curate-tiny"
    assert removed_by_set(tmp_path / "run") == {"coco-like": 29, "wds-like": 10, "hf-like": 10}
    assert "image_embedding" not in read_dataset(tmp_path / "run" / "kept").column_names
