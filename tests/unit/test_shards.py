import io
import json
import logging
import tarfile
from argparse import Namespace

import numpy as np
import pyarrow as pa
import pytest

from pipeline.shards import sizes_of, write_shards, write_sizes_json
from pipeline.testing.world import world_rows


@pytest.fixture(scope="module")
def world_table():
    table = pa.Table.from_pylist(world_rows(90, seed=4))
    scores = np.linspace(0.1, 0.4, 90).astype(np.float32)
    scores[7] = np.nan
    return table.append_column("clip_score", pa.array(scores, pa.float32())) \
        .append_column("entry_ids", pa.array([[i, i + 1] for i in range(90)], pa.list_(pa.int32())))


def members(path):
    with tarfile.open(path) as tar:
        return [(m.name, m.mtime, m.mode, m.uid, m.gid, m.uname) for m in tar.getmembers()]


def test_two_runs_give_byte_identical_tars(world_table, tmp_path):
    first = write_shards(world_table, tmp_path / "a", samples_per_shard=25, seed=3)
    shuffled_input = world_table.take(np.random.default_rng(0).permutation(90))
    second = write_shards(shuffled_input.to_batches(max_chunksize=40), tmp_path / "b", 25, seed=3)
    assert first.equals(second)
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == ["00000.tar", "00001.tar", "00002.tar", "00003.tar", "sizes.json"]
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    other_seed = write_shards(world_table, tmp_path / "c", 25, seed=4)
    assert other_seed["uid"].to_pylist() != first["uid"].to_pylist()


def test_members_keys_and_metadata(world_table, tmp_path):
    placed = write_shards(world_table, tmp_path, samples_per_shard=25, seed=0)
    assert json.loads((tmp_path / "sizes.json").read_text()) == \
        {"00000.tar": 25, "00001.tar": 25, "00002.tar": 25, "00003.tar": 15}
    assert sizes_of(placed) == json.loads((tmp_path / "sizes.json").read_text())
    assert sorted(placed["uid"].to_pylist()) == sorted(world_table["uid"].to_pylist())
    assert placed["uid"].to_pylist() != world_table["uid"].to_pylist()  # shuffled
    assert not list(tmp_path.glob("*.tmp"))
    by_uid = {row["uid"]: row for row in world_table.to_pylist()}
    first = members(tmp_path / "00000.tar")
    assert [m[0] for m in first[:3]] == ["0000000.jpg", "0000000.json", "0000000.txt"]
    assert {m[1:] for m in first} == {(0, 0o444, 0, 0, "")}
    second_keys = [k for k, s in zip(placed["key"].to_pylist(), placed["shard"].to_pylist()) if s == "00001.tar"]
    with tarfile.open(tmp_path / "00001.tar") as tar:
        for index, key in enumerate(second_keys):
            assert "." not in key and key == f"00001{index:02d}"
            meta = json.loads(tar.extractfile(f"{key}.json").read())
            row = by_uid[meta["uid"]]
            assert tar.extractfile(f"{key}.jpg").read() == row["jpg"]
            assert tar.extractfile(f"{key}.txt").read().decode() == row["text"]
            assert set(meta) == {"uid", "url", "label", "clip_score", "entry_ids", "key"}
            assert meta["key"] == key and meta["url"] == row["url"] and meta["entry_ids"] == row["entry_ids"]
            assert meta["clip_score"] is None or abs(meta["clip_score"] - row["clip_score"]) < 1e-6


def test_embeddings_become_npy(world_table, tmp_path):
    embeddings = np.random.default_rng(1).normal(size=(90, 2, 8)).astype(np.float16)
    table = world_table.select(["uid", "jpg", "text"])
    for column, values in (("image_embedding", embeddings[:, 0]), ("text_embedding", embeddings[:, 1])):
        table = table.append_column(column, pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), 8))
    placed = write_shards(table, tmp_path, samples_per_shard=50, seed=0)
    uid, key = placed["uid"][0].as_py(), placed["key"][0].as_py()
    with tarfile.open(tmp_path / "00000.tar") as tar:
        array = np.load(io.BytesIO(tar.extractfile(f"{key}.npy").read()))
        assert set(json.loads(tar.extractfile(f"{key}.json").read())) == {"uid", "key"}
    assert array.dtype == np.float16 and array.shape == (2, 8)
    np.testing.assert_array_equal(array, embeddings[table["uid"].to_pylist().index(uid)])


def test_open_clip_reads_exactly_the_samples_written(world_table, tmp_path):
    import open_clip
    from open_clip_train.data import get_wds_dataset

    from pipeline.clip.wds_compat import patch_open_clip_webdataset

    patch_open_clip_webdataset()  # webdataset >= 0.2.96 end-of-shard markers (open_clip #935)
    write_shards(world_table, tmp_path, samples_per_shard=10, seed=0)  # 9 shards
    pattern = str(tmp_path / "{00000..00008}.tar")
    preprocess = open_clip.image_transform(64, is_train=False)
    tokenizer = open_clip.get_tokenizer("RN50")
    args = Namespace(train_data=pattern, val_data=pattern, train_num_samples=None, val_num_samples=90,
                     dataset_resampled=False, train_data_upsampling_factors=None, seed=0,
                     batch_size=9, workers=0, world_size=1)
    for is_train in (True, False):
        info = get_wds_dataset(args, preprocess, is_train=is_train, tokenizer=tokenizer)
        assert info.dataloader.num_samples == 90
        seen = sum(images.shape[0] for images, texts in info.dataloader)
        assert seen == 90


def test_fewer_than_eight_shards_warns(world_table, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="pipeline.shards"):
        write_shards(world_table, tmp_path / "few", samples_per_shard=50)
    assert "fewer than 8" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pipeline.shards"):
        write_shards(world_table, tmp_path / "many", samples_per_shard=10)
    assert "fewer than 8" not in caplog.text


def test_parts_into_one_folder_and_empty_input(world_table, tmp_path):
    a = write_shards(world_table.slice(0, 40), tmp_path, 30, seed=0, start_index=0, write_sizes=False)
    b = write_shards(world_table.slice(40), tmp_path, 30, seed=0, start_index=2, write_sizes=False)
    write_sizes_json(tmp_path, sizes_of(pa.concat_tables([a, b])))
    assert json.loads((tmp_path / "sizes.json").read_text()) == \
        {"00000.tar": 30, "00001.tar": 10, "00002.tar": 30, "00003.tar": 20}
    empty = write_shards([], tmp_path / "empty", 10)
    assert empty.num_rows == 0 and json.loads((tmp_path / "empty" / "sizes.json").read_text()) == {}
    with pytest.raises(ValueError, match="uid"):
        write_shards(world_table.drop_columns(["uid"]), tmp_path / "bad", 10)
