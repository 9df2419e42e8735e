"""The learned detectors that ship in wheels, through a small image pipeline on the local, Ray
and Spark engines: download -> heads (NudeNet: `model: nudenet`) -> shard with face_blur's
MTCNN. Every engine writes byte-identical tars, the same kept rows (scores and classes
included) and the same ledger."""
import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.testing.faces import face_sample
from pipeline.testing.fakeweb import FakeWeb
from pipeline.testing.world import make_sample
from tests.support import assert_run_invariants, ledger_rows, read_dataset, run, tar_digests

pytestmark = pytest.mark.slow  # image pipelines on the Ray and Spark engines
pytest.importorskip("facenet_pytorch")
pytest.importorskip("nudenet")


def jpeg(array) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).convert("RGB").save(out, format="JPEG", quality=90)
    return out.getvalue()


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """Drawn faces, two real photos with a face (astronaut, cameraman), coloured shapes."""
    from skimage import data

    folder = tmp_path_factory.mktemp("detectors-web")
    images = [face_sample(i)[0] for i in range(6)] + [jpeg(data.astronaut()), jpeg(data.camera())]
    images += [make_sample(i, seed=2, image_size=256).jpg for i in range(8)]
    with FakeWeb() as web:
        urls = []
        for i, jpg in enumerate(images):
            web.add_image(f"/img/{i}.jpg", jpg)
            urls.append(web.url(f"/img/{i}.jpg"))
        texts = [f"picture number {i}" for i in range(len(urls))]
        pq.write_table(pa.table({"url": urls, "text": texts}), folder / "pairs.parquet")
        yield folder / "pairs.parquet"


def config(pairs_path, output, engine: str) -> dict:
    return {"input": {"path": [str(pairs_path)], "part_rows": 6}, "output": str(output), "engine": engine,
            "processes": 2, "allow_networks": ["127.0.0.1/32"], "ray": {"num_cpus": 2},
            "spark": {"master": "local[2]"},
            "download": {"image_size": 256, "threads": 4, "timeout": 5, "part_rows": 6},
            "heads": {"heads": [
                {"name": "nsfw", "model": "nudenet", "drop_above": 0.5, "batch_size": 4},
                # NudeNet's face classes as a score, to see a head drop rows (the photos)
                {"name": "face", "model": "nudenet", "classes": ["FACE_FEMALE", "FACE_MALE"], "drop_above": 0.6}]},
            "shard": {"samples_per_shard": 4},
            "face_blur": {"detector": "mtcnn", "batch_size": 4}}


def test_nudenet_head_and_mtcnn_face_blur_give_the_same_tars_on_every_engine(pairs, tmp_path):
    runs = {}
    for engine in ("local", "ray", "spark"):
        run(config(pairs, tmp_path / engine, engine))
        assert_run_invariants(tmp_path / engine)
        runs[engine] = tmp_path / engine
    kept = read_dataset(runs["local"] / "kept")
    for column, type_ in (("nsfw_score", pa.float32()), ("nsfw_classes", pa.list_(pa.string())),
                          ("face_score", pa.float32()), ("faces", pa.int32())):
        assert kept.schema.field(column).type == type_
    assert max(kept["nsfw_score"].to_pylist()) < 0.5   # no nudity in these pictures
    reasons = [(stage, reason) for _, _, stage, reason in ledger_rows(runs["local"])]
    assert reasons.count(("heads", "face")) == 1   # the astronaut's face (NudeNet: FACE_FEMALE 0.7)
    assert sum(kept["faces"].to_pylist()) >= 5   # the drawn faces were blurred
    digests = tar_digests(runs["local"])
    assert digests and digests == tar_digests(runs["ray"]) == tar_digests(runs["spark"])
    rows = {e: read_dataset(runs[e] / "kept").sort_by("uid").to_pylist() for e in runs}
    assert rows["local"] == rows["ray"] == rows["spark"]
    assert ledger_rows(runs["local"]) == ledger_rows(runs["ray"]) == ledger_rows(runs["spark"])
