"""shard's task_images: rows whose images are scattered over the files are gathered once per
task, and the tars are the same bytes as when read shard by shard."""
from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa

from pipeline.core import images, parts
from pipeline.stages import shard
from pipeline.stages.shard import SHARD, WriteShards, task_images


def stored_rows(folder, files: int = 3, rows: int = 40) -> pa.Table:
    """Rows with references into `files` parquet files of image bytes (row groups of 4)."""
    tables = []
    for f in range(files):
        path = folder / f"images-{f}.parquet"
        table = pa.table({"uid": [f"{f:02d}{i:030x}" for i in range(rows)],
                          "text": [f"caption {f} {i}" for i in range(rows)],
                          "jpg": [bytes([f, i]) * (50 + i) for i in range(rows)]})
        parts.write_parquet(table, path, row_group_rows=4)
        tables.append(images.read_detached(parts.PartRef(str(path))))
    return pa.concat_tables(tables)


def with_shards(table: pa.Table, per: int) -> pa.Table:
    return table.append_column(SHARD, pa.array(np.arange(table.num_rows) // per, pa.int64()))


def tar_digests(folder) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.tar"))}


def test_scattered_rows_gathered_with_the_same_tars(tmp_path, monkeypatch):
    rows = stored_rows(tmp_path)
    scattered = with_shards(rows.take(np.random.default_rng(0).permutation(rows.num_rows)), 10)
    with task_images(scattered, scattered[SHARD].to_numpy()) as gathered:
        assert gathered is not None
        picked = np.array([5, 0, 77, 3])
        expected = images.attach_images(scattered.take(picked))["jpg"].combine_chunks()
        assert gathered(picked).equals(expected)
    outputs = {}
    for name, threshold in (("gathered", 0.0), ("by_shard", float("inf"))):
        monkeypatch.setattr(shard, "SCATTERED", threshold)
        out = tmp_path / name
        outputs[name] = (WriteShards(str(out), seed=3, samples_per_shard=10)(scattered), tar_digests(out))
    assert len(outputs["gathered"][1]) == 12
    assert outputs["gathered"][1] == outputs["by_shard"][1]
    assert outputs["gathered"][0].equals(outputs["by_shard"][0])
    assert "jpg" not in outputs["gathered"][0].column_names


def test_rows_in_file_order_read_shard_by_shard(tmp_path):
    rows = with_shards(stored_rows(tmp_path), 8)   # as download leaves them: in order
    with task_images(rows, rows[SHARD].to_numpy()) as gathered:
        assert gathered is None
