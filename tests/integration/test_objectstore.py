"""pipeline.testing.objectstore against a real client: s3fs (aiobotocore) through the proxy."""
import os

import pytest

s3fs = pytest.importorskip("s3fs")
pytest.importorskip("moto.server")


BUCKET = "objstore-test"


@pytest.fixture(scope="module")
def store(object_store):
    object_store.create_bucket(BUCKET)
    return object_store


@pytest.fixture
def fs(store):
    store.reset_counts()
    yield s3fs.S3FileSystem(client_kwargs={"endpoint_url": store.endpoint}, key="testing",
                            secret="testing", skip_instance_cache=True,
                            config_kwargs={"retries": {"max_attempts": 10, "mode": "standard"}})
    assert store.faults_left() == 0


def test_small_write_and_read_are_counted(store, fs, tmp_path):
    src = tmp_path / "small.bin"
    src.write_bytes(b"hello object store")
    fs.put_file(str(src), f"{BUCKET}/small/a.bin")
    assert store.counts() == {"PUT": 1, "GET": 0, "HEAD": 0, "LIST": 0, "DELETE": 0, "POST": 0}
    assert store.puts_per_key() == {"small/a.bin": 1}

    store.reset_counts()
    with fs.open(f"{BUCKET}/small/a.bin", "rb") as f:
        assert f.read() == b"hello object store"
    counts = store.counts()
    assert counts["GET"] == 1 and counts["PUT"] == 0 and counts["POST"] == 0
    assert store.puts_per_key() == {}

    store.reset_counts()
    assert fs.ls(f"{BUCKET}/small", detail=False) == [f"{BUCKET}/small/a.bin"]
    assert store.counts()["LIST"] == 1 and store.counts()["GET"] == 0
    # the helpers go straight to moto and are not counted
    store.reset_counts()
    assert store.list_keys(BUCKET, "small/") == ["small/a.bin"]
    assert store.get(BUCKET, "small/a.bin") == b"hello object store"
    assert store.requests() == []


def test_multipart_upload_counts_once_per_key(store, fs):
    data = os.urandom(11 * 2**20)
    fs.pipe_file(f"{BUCKET}/big/b.bin", data, chunksize=5 * 2**20)  # >= 2 chunks: multipart
    reqs = store.requests()
    parts = [r for r in reqs if r.method == "PUT" and "partNumber" in r.op]
    assert len(parts) >= 2
    assert store.counts()["PUT"] == len(parts)
    assert store.counts()["POST"] == 2  # initiate (?uploads) + complete (?uploadId)
    assert store.puts_per_key() == {"big/b.bin": 1}
    assert store.get(BUCKET, "big/b.bin") == data
    assert fs.cat_file(f"{BUCKET}/big/b.bin") == data


def test_503_and_reset_are_retried(store, fs):
    store.inject("PUT", 2, "503", key_contains="flaky/")
    store.inject("GET", 1, "reset", key_contains="flaky/")
    assert store.faults_left() == 3
    fs.pipe_file(f"{BUCKET}/flaky/c.bin", b"survives")
    assert fs.cat_file(f"{BUCKET}/flaky/c.bin") == b"survives"
    assert store.faults_left() == 0
    statuses = [(r.method, r.status) for r in store.requests() if r.method in ("PUT", "GET")]
    assert statuses == [("PUT", 503), ("PUT", 503), ("PUT", 200), ("GET", 0), ("GET", 200)]
    assert store.puts_per_key() == {"flaky/c.bin": 1}  # failed attempts are not writes


def test_403_raises_permission_error(store, fs):
    fs.pipe_file(f"{BUCKET}/denied/d.bin", b"secret")
    store.inject("GET", 1, "403", key_contains="denied/")
    with pytest.raises(PermissionError):
        fs.cat_file(f"{BUCKET}/denied/d.bin")
    store.inject("PUT", 1, "403")
    with pytest.raises(PermissionError):
        fs.pipe_file(f"{BUCKET}/denied/e.bin", b"x")
    assert store.list_keys(BUCKET, "denied/") == ["denied/d.bin"]


def test_env_is_enough_for_a_client(store, monkeypatch):
    for name, value in store.env().items():
        monkeypatch.setenv(name, value)
    store.reset_counts()
    fs = s3fs.S3FileSystem(skip_instance_cache=True)  # endpoint comes from AWS_ENDPOINT_URL
    fs.pipe_file(f"{BUCKET}/env/e.bin", b"via env")
    assert store.puts_per_key() == {"env/e.bin": 1}
    assert store.get(BUCKET, "env/e.bin") == b"via env"
