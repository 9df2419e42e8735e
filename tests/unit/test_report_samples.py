"""The report's kept samples read a bounded part of the shards, whatever decodes."""
from __future__ import annotations

import io

import pyarrow as pa
from PIL import Image

from pipeline.report import samples as report_samples
from pipeline.shards import write_shards


def shards_of(folder, jpg: bytes, rows: int, per: int) -> None:
    write_shards(pa.table({"uid": [f"{i:032x}" for i in range(rows)], "text": [f"caption {i}" for i in range(rows)],
                           "jpg": [jpg] * rows}), folder / "shards", per, warn_few=False)


def counting(monkeypatch) -> list:
    read = []
    original = report_samples.tar_samples

    def tar_samples(path):
        for members in original(path):
            read.append(path)
            yield members

    monkeypatch.setattr(report_samples, "tar_samples", tar_samples)
    return read


def test_images_that_do_not_decode_read_a_bounded_sample(tmp_path, monkeypatch):
    shards_of(tmp_path, b"not an image", rows=3000, per=100)   # 30 tars
    read = counting(monkeypatch)
    assert report_samples.kept_samples(str(tmp_path)) == []
    assert len(read) == report_samples.TARS_READ * report_samples.SAMPLES_PER_TAR
    assert len(set(read)) == report_samples.TARS_READ


def test_decodable_images_fill_the_grid_from_the_first_tar(tmp_path, monkeypatch):
    out = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(out, "JPEG")
    shards_of(tmp_path, out.getvalue(), rows=300, per=100)
    read = counting(monkeypatch)
    found = report_samples.kept_samples(str(tmp_path), limit=24)
    assert len(found) == 24 and all(s.image.startswith("data:image/jpeg;base64,") for s in found)
    assert len(read) == 24 and set(read) == {str(tmp_path / "shards" / "00000.tar")}
