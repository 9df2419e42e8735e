"""core.storage: one temporary-name scheme and one commit rule for files and folders."""
import pytest

from pipeline.core import storage


def test_a_failed_write_leaves_neither_target_nor_temporary(tmp_path):
    target = tmp_path / "a" / "part.bin"
    with pytest.raises(RuntimeError):
        with storage.committing(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert not target.exists() and list((tmp_path / "a").iterdir()) == []


def test_commit_replaces_whole_files_and_folders(tmp_path):
    storage.write_bytes(tmp_path / "f", b"old")
    storage.write_bytes(tmp_path / "f", b"new", durable=True)
    assert (tmp_path / "f").read_bytes() == b"new"
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "stale.parquet").write_bytes(b"x")
    with storage.committing(tmp_path / "kept") as folder:
        folder.mkdir()
        (folder / "part-00000.parquet").write_bytes(b"y")
    assert [p.name for p in (tmp_path / "kept").iterdir()] == ["part-00000.parquet"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "kept"]


def test_stale_temporaries_of_a_killed_attempt_are_removed(tmp_path):
    target = tmp_path / "part-00001.parquet"
    stale_file = storage.tmp_name(target)
    stale_file.write_bytes(b"half")
    stale_dir = storage.tmp_name(tmp_path / "ledger")
    stale_dir.mkdir()
    other = storage.tmp_name(tmp_path / "part-00002.parquet")
    other.write_bytes(b"someone else's")
    storage.remove_stale_temporaries(target)
    storage.remove_stale_temporaries(tmp_path / "ledger")
    assert not stale_file.exists() and not stale_dir.exists() and other.exists()


def test_link_or_copy_and_json(tmp_path):
    storage.write_json({"b": 1, "a": (1, 2)}, tmp_path / "s.json")
    storage.link_or_copy(tmp_path / "s.json", tmp_path / "t.json")
    assert storage.read_json(tmp_path / "t.json") == {"a": [1, 2], "b": 1}
    assert storage.json_roundtrip({"a": (1, 2)}) == {"a": [1, 2]}
