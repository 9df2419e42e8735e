"""download -> shard with face_blur over a loopback FakeWeb: the tars hold the face images
blurred and the faceless ones with the very bytes download stored; `faces` in each sample's
JSON and in kept/; byte-identical tars on a rerun and a second run; no change without it.
With the Haar cascade; MTCNN (the default) through the engines: tests/engines/test_image_detectors.py."""
import json
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.app import build_steps
from pipeline.config import settings_from_dict
from pipeline.errors import UserError
from pipeline.testing.faces import face_sample
from pipeline.testing.fakeweb import FakeWeb
from pipeline.testing.world import make_sample
from schemas import kept_schema, missing_or_mistyped
from tests.support import assert_run_invariants, read_dataset, run, tar_digests

cv2 = pytest.importorskip("cv2")
FACE_IMAGES, WORLD_IMAGES = 8, 8


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """(input parquet, {url: faces drawn}): face images and coloured shapes, 256 px."""
    folder = tmp_path_factory.mktemp("faces-web")
    with FakeWeb() as web:
        urls, texts, drawn = [], [], {}
        for i in range(FACE_IMAGES):
            jpg, faces = face_sample(i)
            web.add_image(f"/face/{i}.jpg", jpg)
            urls.append(web.url(f"/face/{i}.jpg"))
            texts.append(f"a portrait of person number {i}")
            drawn[urls[-1]] = faces
        for i in range(WORLD_IMAGES):
            sample = make_sample(i, seed=2, image_size=256)
            web.add_image(f"/shape/{i}.jpg", sample.jpg)
            urls.append(web.url(f"/shape/{i}.jpg"))
            texts.append(sample.caption)
            drawn[urls[-1]] = []
        pq.write_table(pa.table({"url": urls, "text": texts}), folder / "pairs.parquet")
        yield folder / "pairs.parquet", drawn


def config(pairs_path, output, blur=True) -> dict:
    cfg = {"input": {"path": [str(pairs_path)]}, "output": str(output), "engine": "local",
           "processes": 2, "allow_networks": ["127.0.0.1/32"],
           "download": {"image_size": 256, "threads": 8, "timeout": 5, "part_rows": 8},
           "shard": {"samples_per_shard": 4}}
    if blur:
        cfg["face_blur"] = {"detector": "haar"}   # finds every one of these drawn faces (MTCNN: all but two)
    return cfg


@pytest.fixture(scope="module")
def runs(pairs, tmp_path_factory):
    path, _ = pairs
    folder = tmp_path_factory.mktemp("face-runs")
    for name, blur in (("blurred", True), ("again", True), ("plain", False)):
        run(config(path, folder / name, blur))
    return folder


def stored_images(run_dir) -> dict:
    """url -> the bytes download stored."""
    stored = read_dataset(next((run_dir / "steps").glob("*_download")) / "map" / "data")
    return dict(zip(stored["url"].to_pylist(), stored["jpg"].to_pylist()))


def tar_samples(run_dir) -> dict:
    """key -> (jpg bytes, json dict) of every sample in the run's tars."""
    samples = {}
    for path in sorted((run_dir / "shards").glob("*.tar")):
        with tarfile.open(path) as tar:
            for member in tar:
                key, ext = member.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return {k: (s["jpg"], json.loads(s["json"])) for k, s in samples.items()}


def decode(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).astype(np.int16)


def far_from(faces, shape) -> np.ndarray:
    """Pixels more than half a face width away from every face's oval box."""
    far = np.ones(shape, bool)
    for face in faces:
        x0, y0, x1, y1 = face.box()
        pad = (x1 - x0) // 2
        far[max(0, y0 - pad):y1 + pad, max(0, x0 - pad):x1 + pad] = False
    return far


@pytest.mark.slow
def test_faces_are_blurred_in_the_tars_and_nothing_else_changes(runs, pairs):
    _, drawn = pairs
    run_dir = runs / "blurred"
    summary = assert_run_invariants(run_dir)
    assert summary["kept_rows"] == FACE_IMAGES + WORLD_IMAGES
    kept = read_dataset(run_dir / "kept")
    assert not missing_or_mistyped(kept.schema, kept_schema(["download", "shard", "face_blur"]))
    assert "jpg" not in kept.column_names
    stored, samples = stored_images(run_dir), tar_samples(run_dir)
    assert len(samples) == kept.num_rows
    checked_far = 0
    for url, key, faces in zip(kept["url"].to_pylist(), kept["key"].to_pylist(), kept["faces"].to_pylist()):
        jpg, meta = samples[key]
        assert meta["faces"] == faces and meta["url"] == url
        if not drawn[url]:
            assert faces == 0 and jpg == stored[url], url   # exact bytes, no re-encode
            continue
        assert faces == len(drawn[url]) >= 1, url
        before, after = decode(stored[url]), decode(jpg)
        for face in drawn[url]:
            x0, y0, x1, y1 = face.box()
            cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
            box = (slice(cy - 25, cy + 25), slice(cx - 25, cx + 25))
            assert np.abs(before[box] - after[box]).mean() > 15
        far = far_from(drawn[url], before.shape[:2])   # only JPEG noise there
        assert not far.any() or np.abs(before - after)[far].mean() < 2, url
        checked_far += far.sum() > 5000
    assert checked_far >= FACE_IMAGES // 2


@pytest.mark.slow
def test_a_rerun_and_a_second_run_write_byte_identical_tars(runs, pairs):
    path, _ = pairs
    digests = tar_digests(runs / "blurred")
    assert len(digests) == 4 and digests == tar_digests(runs / "again")
    run(config(path, runs / "blurred"))   # resumed: finished steps are kept as they are
    assert tar_digests(runs / "blurred") == digests


@pytest.mark.slow
def test_without_face_blur_the_tars_hold_what_download_stored(runs):
    run_dir = runs / "plain"
    kept = read_dataset(run_dir / "kept")
    assert "faces" not in kept.column_names
    stored, samples = stored_images(run_dir), tar_samples(run_dir)
    assert len(samples) == kept.num_rows == FACE_IMAGES + WORLD_IMAGES
    for url, key in zip(kept["url"].to_pylist(), kept["key"].to_pylist()):
        jpg, meta = samples[key]
        assert "faces" not in meta and jpg == stored[url]
    assert tar_digests(run_dir) != tar_digests(runs / "blurred")


def test_face_blur_needs_a_shard_section_and_valid_settings(tmp_path):
    base = {"input": {"path": [str(tmp_path / "in.parquet")]}, "download": {}, "face_blur": {}}
    with pytest.raises(UserError, match=r"^face_blur: changes the images as a step writes them out; "
                                        r"add a shard section, or remove face_blur$"):
        build_steps(settings_from_dict(base, "c.yaml"))
    assert build_steps(settings_from_dict({**base, "face_blur": {"enabled": False}}, "c.yaml"))
    with pytest.raises(UserError, match=r"^c\.yaml: face_blur\.quality: must be between 1 and 100, got 0$"):
        build_steps(settings_from_dict({**base, "shard": {}, "face_blur": {"quality": 0}}, "c.yaml"))
    with pytest.raises(UserError, match=r"^c\.yaml: unknown key 'face_blur\.sigma'"):
        settings_from_dict({**base, "shard": {}, "face_blur": {"sigma": 3}}, "c.yaml")


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["ray", "spark"])
def test_ray_and_spark_write_the_same_blurred_tars(runs, pairs, tmp_path, engine):
    path, _ = pairs
    cfg = {**config(path, tmp_path / engine), "engine": engine, "ray": {"num_cpus": 2},
           "spark": {"master": "local[2]"}}
    run(cfg)
    assert tar_digests(tmp_path / engine) == tar_digests(runs / "blurred")
