"""heads' `model: nudenet`: NudeNet's own model from its wheel, run batch-wise by us, reports
the classes NudeNet's NudeDetector reports and the score its network gives; an image's
result does not depend on its batch; the heads step reads the images only for such a head,
adds `<name>_score` and `<name>_classes`, drops with the head's reason and never drops an
undecodable image; bad settings and files are one line."""
import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.app import build_steps
from pipeline.config import settings_from_dict
from pipeline.core.steps import execute_step
from pipeline.engines.local import LocalEngine
from pipeline.errors import UserError
from pipeline.nudenet import EXPOSED, LABELS, NudeNet, model_path, session
from pipeline.stages.heads import (
    HeadSettings,
    HeadsSettings,
    HeadsStage,
    HeadsStep,
    apply_heads,
    check_settings,
    load_head,
)
from pipeline.testing.faces import face_sample
from pipeline.testing.world import make_sample

nudenet = pytest.importorskip("nudenet")
skimage_data = pytest.importorskip("skimage.data")


def jpeg(array) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).convert("RGB").save(out, format="JPEG", quality=90)
    return out.getvalue()


@pytest.fixture(scope="module")
def images() -> list:
    """Two real photos with a face, the coffee cup and the cat, drawn faces, shapes, a PNG
    with alpha, and two rows that are no image."""
    photos = [jpeg(getattr(skimage_data, name)()) for name in ("astronaut", "camera", "coffee", "chelsea")]
    rgba = io.BytesIO()
    Image.fromarray(skimage_data.astronaut()).convert("RGBA").resize((200, 300)).save(rgba, format="PNG")
    return (photos + [face_sample(i)[0] for i in range(4)] + [make_sample(i, 3, 256).jpg for i in range(4)]
            + [rgba.getvalue(), b"not an image", None])


def test_classes_and_scores_are_nudedetectors(images):
    from nudenet.nudenet import _read_image  # NudeDetector's own input, through its own session

    detector = nudenet.NudeDetector()
    scores, classes = NudeNet(session(model_path()), LABELS, 0.25, batch_size=4).run(images)
    exposed, _ = NudeNet(session(model_path()), EXPOSED, 0.25, batch_size=4).run(images)
    for i, data in enumerate(images[:-2]):
        assert classes[i] == sorted({d["class"] for d in detector.detect(data)}), i
        theirs = detector.onnx_session.run(None, {detector.input_name: _read_image(data, 320)[0]})[0][0]
        assert abs(scores[i] - theirs[4:].max()) < 1e-5
        columns = [4 + LABELS.index(c) for c in EXPOSED]
        assert abs(exposed[i] - theirs[columns].max()) < 1e-5
    assert classes[0] == ["FACE_FEMALE"] and classes[1] == ["FACE_MALE"]   # the astronaut, the cameraman
    assert np.isnan(scores[-2:]).all() and classes[-2:] == [None, None]
    assert exposed.dtype == np.float32 and np.nanmax(exposed) < 0.5   # no nudity here


def test_an_images_result_does_not_depend_on_its_batch(images):
    sess = session(model_path())
    results = [NudeNet(sess, LABELS, 0.25, batch_size=size).run(images) for size in (1, 3, 16)]
    for scores, classes in results[1:]:
        assert np.array_equal(scores, results[0][0], equal_nan=True) and classes == results[0][1]


def test_apply_heads_adds_score_and_classes_and_drops_with_the_reason(images):
    face = HeadSettings(name="face", model="nudenet", classes=["FACE_FEMALE", "FACE_MALE"], drop_above=0.5)
    nsfw = HeadSettings(name="nsfw", model="nudenet", drop_above=0.5)
    heads = [load_head(nsfw), load_head(face)]
    table = pa.table({"uid": [str(i) for i in range(len(images))], "jpg": pa.array(images, pa.binary())})
    out = apply_heads(table, heads)
    assert out.schema.field("nsfw_score").type == pa.float32()
    assert out.schema.field("nsfw_classes").type == pa.list_(pa.string())
    assert out["nsfw_classes"][0].as_py() == ["FACE_FEMALE"] and out["face_classes"][1].as_py() == ["FACE_MALE"]
    assert out["nsfw_score"].null_count == 2 and out["nsfw_classes"].null_count == 2
    reasons = out["_reason"].to_pylist()
    face_scores = out["face_score"].to_pylist()
    assert reasons == [("face" if s is not None and s > 0.5 else None) for s in face_scores]
    assert reasons[0] == "face" and reasons[-2:] == [None, None]


def test_the_step_reads_the_images_only_for_a_nudenet_head(tmp_path, images):
    assert HeadsStage.input_columns(HeadsSettings([HeadSettings(name="nsfw", model="nudenet")])) == ("jpg",)
    assert HeadsStage.output_fields(HeadsSettings([HeadSettings(name="nsfw", model="nudenet")])) == (
        ("nsfw_score", pa.float32()), ("nsfw_classes", pa.list_(pa.string())))
    settings = settings_from_dict({"input": {"path": ["x.parquet"]}, "download": {}, "heads": {"heads": [
        {"name": "nsfw", "model": "nudenet", "drop_above": 0.5}]}}, "c.yaml")
    steps, _ = build_steps(settings)   # no clip_score: nothing asks for embeddings
    assert [s.name for s in steps][-2:] == ["download", "heads"]

    part = tmp_path / "in.parquet"
    pq.write_table(pa.table({"uid": [f"u{i:02d}" for i in range(len(images))],
                             "url": [f"http://a.example/{i}" for i in range(len(images))],
                             "jpg": pa.array(images, pa.binary())}), part)
    face = HeadsSettings([HeadSettings(name="face", model="nudenet", classes=["FACE_FEMALE"], drop_above=0.5)])
    with LocalEngine(1) as engine:
        record = execute_step(HeadsStep(face), engine, str(tmp_path / "run"), 0, 0, [str(part)])
    assert record["rows_in"] == len(images) and record["dropped"] == {"face": 2}   # the astronaut, JPEG and PNG
    kept = pq.read_table(record["parts"][0])
    assert kept.num_rows == len(images) - 2 and "face_classes" in kept.column_names


def test_bad_nudenet_settings_and_files_are_one_line(tmp_path):
    check_settings(HeadsSettings([HeadSettings(name="nsfw", model="nudenet")]))   # no path: the wheel's model
    with pytest.raises(UserError, match=r"^heads: nsfw: nudenet's 320n\.onnx: classes: unknown NudeNet class "
                                        r"'BREASTS' \(one of FEMALE_GENITALIA_COVERED, "):
        check_settings(HeadsSettings([HeadSettings(name="nsfw", model="nudenet", classes=["BREASTS"])]))
    with pytest.raises(UserError, match=r"^heads: nsfw: .*: model: nudenet reads the images; embedding and input"):
        check_settings(HeadsSettings([HeadSettings(name="nsfw", model="nudenet", input="text")]))
    with pytest.raises(UserError, match=r"^heads: a: p\.pt: classes is a setting of model: nudenet$"):
        check_settings(HeadsSettings([HeadSettings(name="a", path="p.pt", classes=["FACE_MALE"])]))
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(UserError, match=r"^heads: nsfw: .*bad\.onnx: not a NudeNet ONNX model \("):
        load_head(HeadSettings(name="nsfw", model="nudenet", path=str(tmp_path / "bad.onnx")))
    with pytest.raises(UserError, match=r"heads\.heads\[0\]\.model: must be one of 'linear', 'nudenet'"):
        settings_from_dict({"heads": {"heads": [{"name": "a", "model": "yolo"}]}}, "c.yaml")
    with pytest.raises(UserError, match=r"heads\.heads\[0\]\.min_confidence: must be between 0 and 1"):
        settings_from_dict({"heads": {"heads": [{"name": "a", "model": "nudenet", "min_confidence": 2}]}}, "c.yaml")
