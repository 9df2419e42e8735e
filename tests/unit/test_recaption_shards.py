"""Shards of recaptioned rows: `<key>.syn.txt` holds the first synthetic caption, `<key>.txt`
the alt-text, and the JSON the captions with their provenance (no timings: tars stay the same)."""
import json
import tarfile

import pyarrow as pa

from pipeline.shards import write_shards
from pipeline.stages.recaption import CAPTION_TYPE


def captioned_rows(seconds: float) -> pa.Table:
    captions = [[{"text": "a red square", "model": "m", "prompt": "p", "seconds": seconds},
                 {"text": "a square", "model": "m", "prompt": "p", "seconds": seconds}],
                [], None]
    return pa.table({"uid": ["a", "b", "c"], "jpg": [b"1", b"2", b"3"], "text": ["alt a", "alt b", "alt c"],
                     "captions": pa.array(captions, pa.list_(CAPTION_TYPE)),
                     "caption_error": [None, "http 503 (after 4 attempts)", "no_image"]})


def members(path) -> dict:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar}


def test_syn_txt_and_captions_in_json(tmp_path):
    placed = write_shards(captioned_rows(0.5), tmp_path / "one", 10, warn_few=False)
    files = members(tmp_path / "one" / "00000.tar")
    key = dict(zip(placed["uid"].to_pylist(), placed["key"].to_pylist()))
    assert files[f"{key['a']}.syn.txt"] == b"a red square"
    assert files[f"{key['a']}.txt"] == b"alt a"
    assert f"{key['b']}.syn.txt" not in files and f"{key['c']}.syn.txt" not in files
    meta = json.loads(files[f"{key['a']}.json"])
    assert meta["captions"] == [{"text": "a red square", "model": "m", "prompt": "p"},
                                {"text": "a square", "model": "m", "prompt": "p"}]
    assert json.loads(files[f"{key['b']}.json"])["caption_error"] == "http 503 (after 4 attempts)"


def test_timings_do_not_change_the_tars(tmp_path):
    write_shards(captioned_rows(0.5), tmp_path / "one", 10, warn_few=False)
    write_shards(captioned_rows(7.25), tmp_path / "two", 10, warn_few=False)
    assert (tmp_path / "one" / "00000.tar").read_bytes() == (tmp_path / "two" / "00000.tar").read_bytes()
