import os

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# --- fakeweb fixtures (pipeline.testing.fakeweb): a real HTTP server on loopback ---------------
import ipaddress as _ipaddress
import socket as _socket

import pytest

from pipeline.testing.fakeweb import FakeWeb


@pytest.fixture(scope="session")
def fakeweb():
    """A FakeWeb on 127.0.0.1 for the whole session; tests use fresh paths to keep counts apart."""
    with FakeWeb("127.0.0.1") as web:
        yield web


@pytest.fixture(scope="session")
def fakeweb_other():
    """A second FakeWeb on 127.0.0.2: loopback, but outside `allow_networks=['127.0.0.1/32']`."""
    with FakeWeb("127.0.0.2") as web:
        yield web


@pytest.fixture
def connect_log(monkeypatch):
    """Records every socket connect; refuses (never sends to) anything off loopback."""
    peers = []
    real_connect = _socket.socket.connect

    def recording_connect(sock, address):
        peers.append(address[0])
        if not _ipaddress.ip_address(str(address[0]).split("%")[0]).is_loopback:
            raise AssertionError(f"test tried to connect off loopback: {address}")
        return real_connect(sock, address)

    monkeypatch.setattr(_socket.socket, "connect", recording_connect)
    return peers


# --- object store (pipeline.testing.objectstore): moto_server behind a counting proxy -----------
@pytest.fixture(scope="session")
def object_store():
    """One S3-compatible server on loopback for the session; each test module makes its bucket."""
    from pipeline.testing.objectstore import ObjectStore

    with ObjectStore() as store:
        yield store


# --- CLIP fixtures (pipeline.testing.tiny_clip): a curate-tiny trained on world pairs --------
@pytest.fixture(scope="session")
def tiny_clip_checkpoint(request, tmp_path_factory):
    """Path of a curate-tiny checkpoint (`epoch_latest.pt`, `model_config.json` beside it),
    trained briefly on `pipeline.testing.world` pairs. Cached across sessions, keyed by the training
    config and sources: in pytest's cache (`--cache-clear` retrains) or, with
    `-p no:cacheprovider`, beside pytest's temporary folders."""
    from pipeline.testing.tiny_clip import TinyTrainConfig, ensure_tiny_checkpoint

    cache = getattr(request.config, "cache", None)
    if cache is not None:
        root = cache.mkdir("curate-tiny")
    else:
        root = tmp_path_factory.getbasetemp().parent / "curate-tiny-cache"
    # one thread: on a shared 2-core machine two OpenMP threads spin against other jobs
    return ensure_tiny_checkpoint(root, TinyTrainConfig(threads=1))
