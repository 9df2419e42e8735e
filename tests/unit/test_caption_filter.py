import pyarrow as pa

from pipeline.stages.caption_filter import CaptionFilterSettings, CaptionFilterStage

CASES = [
    ("a dog running on the beach", None),
    (None, "empty_text"),
    ("   \t ", "empty_text"),
    ("IMG_1234.jpg", "filename_text"),
    ("DSC01234.JPG", "filename_text"),
    ("holiday-photo_2.webp", "filename_text"),
    ("image", "placeholder_text"),
    ("Untitled", "placeholder_text"),
    ("  No Image ", "placeholder_text"),
    ("cat", "too_short"),
    ("x" * 30 + " y", "too_long"),
    ("supercalifragilistic", "too_few_words"),
]


def test_each_junk_kind_has_its_own_reason():
    stage = CaptionFilterStage(CaptionFilterSettings(min_chars=5, max_chars=28, min_words=2))
    table = pa.table({"uid": [str(i) for i in range(len(CASES))], "url": ["u"] * len(CASES),
                      "text": pa.array([c[0] for c in CASES], pa.string())})
    out = stage.process(table)
    assert out["_reason"].to_pylist() == [c[1] for c in CASES]
    assert out.num_rows == table.num_rows


def test_junk_check_can_be_turned_off():
    stage = CaptionFilterStage(CaptionFilterSettings(min_chars=1, min_words=1, drop_junk=False))
    out = stage.process(pa.table({"text": ["IMG_1234.jpg", "image"]}))
    assert out["_reason"].to_pylist() == [None, None]
