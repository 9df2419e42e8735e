"""core.storage: one temporary-name scheme and one commit rule for files and folders."""
import os

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


# --- URLs (memory:// stands in for an object store here; tests/integration/test_object_store.py
# runs the same paths against a real S3 server)

def test_remote_commit_is_one_whole_object_and_a_failed_one_leaves_nothing():
    base = "memory://test-storage/commit"
    with pytest.raises(RuntimeError):
        with storage.committing(f"{base}/part.bin") as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert not storage.exists(f"{base}/part.bin")
    storage.write_json({"a": 1}, f"{base}/done.json")
    assert storage.read_marker(f"{base}/done.json") == {"a": 1}
    assert storage.read_marker(f"{base}/missing.json") is None
    assert storage.marker_exists(f"{base}/done.json") and not storage.marker_exists(f"{base}/nope")
    assert storage.size(f"{base}/done.json") == len(storage.read_bytes(f"{base}/done.json"))


def test_a_remote_folder_is_complete_when_its_marker_names_its_files():
    folder = "memory://test-storage/kept"
    with pytest.raises(RuntimeError):
        with storage.committing_folder(folder) as out:
            storage.write_bytes(storage.join(out.path, "part-00000.parquet"), b"x")
            raise RuntimeError("killed")
    assert storage.folder_files(folder) is None, "no marker: not a folder to read"
    with storage.committing_folder(folder) as out:
        storage.write_bytes(storage.join(out.path, "part-00000.parquet"), b"xy")
        out.files["part-00000.parquet"] = 2
    assert storage.folder_files(folder) == [f"{folder}/part-00000.parquet"]
    assert storage.read_json(f"{folder}/_SUCCESS") == {"files": {"part-00000.parquet": 2}}


def test_urls_globs_and_local_copies(tmp_path):
    assert storage.normalize("file:///tmp/x") == "/tmp/x" and storage.is_local("file:///tmp/x")
    assert storage.join("s3://b/run", "steps", "a") == "s3://b/run/steps/a"
    assert storage.parent("s3://b/run/x.json") == "s3://b/run" and storage.name("s3://b/r/x.pt") == "x.pt"
    for name in ("a.parquet", "b.parquet", "sub/c.parquet", "_hidden/d.parquet"):
        storage.write_bytes(f"memory://test-storage/in/{name}", name.encode())
    assert storage.glob("memory://test-storage/in/*.parquet") == [
        "memory://test-storage/in/a.parquet", "memory://test-storage/in/b.parquet"]
    assert storage.files_under("memory://test-storage/in") == [
        "memory://test-storage/in/a.parquet", "memory://test-storage/in/b.parquet",
        "memory://test-storage/in/sub/c.parquet"]
    storage.write_bytes("memory://test-storage/model/config.json", b"{}")
    local = storage.local_copy("memory://test-storage/in/a.parquet",
                               beside=["memory://test-storage/model/config.json"])
    assert open(local, "rb").read() == b"a.parquet"
    assert sorted(os.listdir(os.path.dirname(local))) == ["a.parquet", "config.json"]
    with storage.local_file("memory://test-storage/in/b.parquet") as path:
        assert path.endswith("b.parquet") and open(path, "rb").read() == b"b.parquet"
    assert not os.path.exists(path)


def test_workers_get_the_drivers_storage_settings(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    storage.configure({"s3": {"key": "k"}})
    try:
        shipped = storage.worker_settings()
        assert shipped == {"options": {"s3": {"key": "k"}}, "env": {"AWS_ENDPOINT_URL": "http://127.0.0.1:9"}}
        storage.configure({})
        monkeypatch.delenv("AWS_ENDPOINT_URL")
        storage.apply(shipped)
        assert os.environ["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9"
        assert storage._protocol_options("s3")["client_kwargs"]["endpoint_url"] == "http://127.0.0.1:9"
        assert storage._protocol_options("s3")["key"] == "k"
    finally:
        storage.configure({})
        os.environ.pop("AWS_ENDPOINT_URL", None)

