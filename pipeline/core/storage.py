"""The one I/O layer: every path the pipeline reads or writes goes through here, and may be a
local path or a URL (`s3://`, `gs://`, `file://`, `memory://`; remote ones through fsspec).

Commits. Every write goes to a local temporary file first and is committed whole:
- on a file system, renamed into place from `.<name>.<pid>.<random>.tmp` beside its target,
  so a reader never sees a half-written file; a killed writer leaves only temporaries, which
  the next attempt at the same target removes (`remove_stale_temporaries`);
- on an object store (no rename), uploaded under its final name in one request (an object
  is there whole or not at all); a rerun overwrites it under the same name.
Either way a unit of work is done when its *marker* exists, written last and naming the
objects before it (`tasks.py`: `done/part-N.json`; a step's `_SUCCESS`; a folder's
`_SUCCESS`), and readers find data through markers, never by listing a prefix, so what a
killed attempt left is never read. `read_marker` reads one in a single request.

Remote credentials and endpoint come from the standard environment (`AWS_ENDPOINT_URL`,
`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`; Google's application default
credentials) plus the config's `storage_options`; `worker_settings()` carries both to the
processes of an engine, which call `apply()` before their task (no shared file system or home
folder is assumed). Transient errors (503 SlowDown, timeouts, resets) are retried with backoff
by the clients; a permanent one (403, missing bucket) raises `StorageError` naming the URL.
"""
from __future__ import annotations

import functools
import json
import os
import posixpath
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from pipeline.errors import UserError

ENV_KEYS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE",
            "GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT")
RETRIES = 10            # attempts for a transient object-store error (botocore "standard" backoff)
SUCCESS = "_SUCCESS"    # a folder's (or step's) marker
CLIENT_MODULES = ("botocore", "aiobotocore", "aiohttp", "s3fs", "gcsfs", "google")   # their errors name the URL

_options: dict = {}     # the config's storage_options, for every filesystem this process opens
_sizes: dict = {}       # sizes of objects this process wrote or opened (no request to learn them)
_versions: dict = {}    # how often this process committed each object (invalidates caches)


class StorageError(UserError):
    """A permanent storage problem (no access, no such bucket): one line naming the URL."""


# --- where a path lives ----------------------------------------------------------------

def normalize(path: str | Path) -> str:
    """A path as the pipeline keeps it: `file://` URLs become local paths."""
    path = str(path)
    return path[len("file://"):] if path.startswith("file://") else path


def is_local(path: str | Path) -> bool:
    return "://" not in normalize(path)


def join(base: str | Path, *names: str) -> str:
    return posixpath.join(normalize(base), *names)


def parent(path: str | Path) -> str:
    return posixpath.dirname(normalize(path).rstrip("/"))


def name(path: str | Path) -> str:
    return posixpath.basename(normalize(path).rstrip("/"))


def absolute(path: str | Path) -> str:
    """Local paths made absolute (workers may run elsewhere); URLs as they are."""
    path = normalize(path)
    return path if not is_local(path) else os.path.abspath(path)


def configure(options: Optional[dict]) -> None:
    """Set the config's `storage_options` for this process: keys that name a protocol
    (`s3`, `gs`, `gcs`, `memory`) hold that protocol's options, other keys apply to all."""
    global _options
    _options = dict(options or {})
    _filesystem.cache_clear()


def worker_settings() -> dict:
    """What a worker process needs to reach the same storage as the driver."""
    return {"options": _options, "env": {k: os.environ[k] for k in ENV_KEYS if k in os.environ}}


def apply(settings: Optional[dict]) -> None:
    """On a worker: the driver's storage settings (the worker's own environment wins)."""
    if not settings:
        return
    for key, value in settings.get("env", {}).items():
        os.environ.setdefault(key, value)
    if settings.get("options", {}) != _options:
        configure(settings.get("options"))


def _protocol_options(protocol: str) -> dict:
    shared = {k: v for k, v in _options.items() if k not in ("s3", "gs", "gcs", "memory", "file")}
    own = _options.get(protocol) or _options.get({"gcs": "gs", "gs": "gcs"}.get(protocol, ""), {})
    options = {**shared, **(own or {})}
    if protocol in ("s3", "s3a"):
        client = dict(options.get("client_kwargs") or {})
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            client.setdefault("endpoint_url", endpoint)
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            client.setdefault("region_name", region)
        config = dict(options.get("config_kwargs") or {})
        config.setdefault("retries", {"max_attempts": RETRIES, "mode": "standard"})
        options.update(client_kwargs=client, config_kwargs=config)
        options.setdefault("use_listings_cache", False)
    return options


def filesystem(path: str):
    """The fsspec filesystem of a URL and the path within it."""
    protocol = normalize(path).split("://", 1)[0]
    fs = _filesystem(protocol, json.dumps(_protocol_options(protocol), sort_keys=True, default=str))
    return fs, fs._strip_protocol(path)


@functools.lru_cache(maxsize=None)
def _filesystem(protocol: str, options_json: str):
    try:
        import fsspec
    except ImportError:  # pragma: no cover - fsspec comes with the project's dependencies
        raise StorageError(f"{protocol}://: fsspec is not installed") from None
    try:
        return fsspec.filesystem(protocol, **json.loads(options_json))
    except (ImportError, ValueError) as exc:
        raise StorageError(f"{protocol}://: no filesystem for this protocol ({_first_line(exc)}); "
                           f"install s3fs for s3://, gcsfs for gs://") from None
    except TypeError as exc:   # an option the filesystem does not take
        raise StorageError(f"storage_options: {protocol}://: {_first_line(exc)}") from None


@contextmanager
def _errors_named(path: str) -> Iterator[None]:
    """Permanent remote errors as one line naming the URL."""
    try:
        yield
    except PermissionError as exc:
        raise StorageError(f"{path}: access denied ({_first_line(exc)})") from None
    except FileNotFoundError:
        raise
    except OSError as exc:
        if is_local(path):
            raise
        raise StorageError(f"{path}: {_first_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - a client's own error, after its retries
        if type(exc).__module__.split(".")[0] not in CLIENT_MODULES:
            raise
        raise StorageError(f"{path}: {_first_line(exc)}") from None


@contextmanager
def _missing_is_permanent(path: str) -> Iterator[None]:
    """Writing: a missing place (no such bucket) is a permanent error."""
    try:
        yield
    except FileNotFoundError as exc:
        raise StorageError(f"{path}: cannot write there ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# --- reading ---------------------------------------------------------------------------

def _ask(path: str | Path, local: Callable[[str], Any], remote: str) -> Any:
    """A question about a path: `local(path)` on a file system, else the filesystem's method."""
    path = normalize(path)
    if is_local(path):
        return local(path)
    fs, inner = filesystem(path)
    with _errors_named(path):
        return getattr(fs, remote)(inner)


def exists(path: str | Path) -> bool:
    return _ask(path, os.path.exists, "exists")


def isdir(path: str | Path) -> bool:
    return _ask(path, os.path.isdir, "isdir")


def isfile(path: str | Path) -> bool:
    return _ask(path, os.path.isfile, "isfile")


def size(path: str | Path) -> int:
    known = _sizes.get(normalize(path))
    return known if known is not None else int(_ask(path, os.path.getsize, "size"))


def version(path: str) -> int:
    """How often this process committed `path`: a cache of an object's content keys on it
    (objects do not change once their marker exists, but this process may rewrite one)."""
    return _versions.get(normalize(path), 0)


def read_bytes(path: str | Path) -> bytes:
    path = normalize(path)
    if is_local(path):
        return Path(path).read_bytes()
    fs, inner = filesystem(path)
    with _errors_named(path):
        return fs.cat_file(inner, **_one_request(fs))


def _one_request(fs) -> dict:
    """s3fs asks for an object's size (HEAD, and a LIST when it is missing) before a GET
    unless told to fetch it in one piece."""
    return {"max_concurrency": 1} if "s3" in getattr(fs, "protocol", ()) else {}


def read_text(path: str | Path) -> str:
    return read_bytes(path).decode("utf-8")


def read_json(path: str | Path) -> Any:
    return json.loads(read_bytes(path))


def read_marker(path: str | Path) -> Optional[Any]:
    """A marker's JSON, or None when it does not exist (one request on an object store)."""
    try:
        return read_json(path)
    except FileNotFoundError:
        return None


def marker_exists(path: str | Path) -> bool:
    """Whether a marker exists (one GET on an object store, where `exists` may also list)."""
    path = normalize(path)
    if is_local(path):
        return os.path.exists(path)
    try:
        read_bytes(path)
        return True
    except FileNotFoundError:
        return False


SEQUENTIAL_BLOCK = 8 << 20   # bytes a sequential remote reader fetches per request


def open_input(path: str | Path, sequential: bool = False):
    """A binary file to read: a local file, or a remote one that fetches the byte ranges
    asked for (pyarrow coalesces its reads), or with `sequential` (tars, text) blocks of
    8 MB ahead."""
    path = normalize(path)
    if is_local(path):
        return open(path, "rb")
    fs, inner = filesystem(path)
    options = ({"cache_type": "readahead", "block_size": SEQUENTIAL_BLOCK} if sequential
               else {"cache_type": "none"})
    if path in _sizes:   # known: no HEAD to learn it
        options["size"] = _sizes[path]
    with _errors_named(path):
        try:
            stream = fs.open(inner, "rb", **options)
        except TypeError:   # a filesystem without caching options (memory://)
            stream = fs.open(inner, "rb")
    if isinstance(getattr(stream, "size", None), int):
        _sizes[path] = stream.size
    return stream


def glob(pattern: str) -> list[str]:
    """Files matching a glob (`**` recursive), as paths in the pattern's form."""
    import glob as local_glob

    pattern = normalize(pattern)
    if is_local(pattern):
        return sorted(p for p in local_glob.glob(pattern, recursive=True) if os.path.isfile(p))
    fs, inner = filesystem(pattern)
    with _errors_named(pattern):
        found = fs.glob(inner, detail=True)
    return sorted(_url_of(pattern, p) for p, info in found.items() if info.get("type") == "file")


def files_under(folder: str) -> list[str]:
    """Every file below a folder (recursively), skipping names that start with `.` or `_`."""
    folder = normalize(folder)
    if is_local(folder):
        found = []
        for root, dirs, files in os.walk(folder):
            dirs[:] = sorted(d for d in dirs if not d.startswith((".", "_")))
            found.extend(os.path.join(root, f) for f in files if not f.startswith((".", "_")))
        return sorted(found)
    fs, inner = filesystem(folder)
    with _errors_named(folder):
        found = fs.find(inner)
    relative = [p[len(inner.rstrip("/")) + 1:] for p in found]
    keep = [r for r in relative if not any(piece.startswith((".", "_")) for piece in r.split("/"))]
    return sorted(join(folder, r) for r in keep)


def _url_of(like: str, inner: str) -> str:
    return f"{like.split('://', 1)[0]}://{inner.lstrip('/')}"


def local_copy(path: str | Path, beside: Sequence[str] = ()) -> str:
    """A local file with `path`'s content, for libraries that need a file name: the path
    itself when local; a remote file is fetched once per process into a temporary folder,
    with the files `beside` (e.g. a checkpoint's config) next to it."""
    path = normalize(path)
    if is_local(path):
        return path
    folder = os.path.join(_local_cache_dir(), uuid.uuid5(uuid.NAMESPACE_URL, path).hex)
    for source in (*beside, path):
        target = os.path.join(folder, name(source))
        if not os.path.exists(target):
            os.makedirs(folder, exist_ok=True)
            fs, inner = filesystem(source)
            tmp = str(tmp_name(target))
            with _errors_named(source):
                fs.get_file(inner, tmp)
            os.replace(tmp, target)
    return os.path.join(folder, name(path))


@contextmanager
def local_file(path: str | Path) -> Iterator[str]:
    """A local file with `path`'s content for the block (a remote one fetched, then removed)."""
    path = normalize(path)
    if is_local(path):
        yield path
        return
    folder = tempfile.mkdtemp(dir=_local_cache_dir())
    target = os.path.join(folder, name(path))   # the same name: readers go by its suffix
    fs, inner = filesystem(path)
    try:
        with _errors_named(path):
            fs.get_file(inner, target)
        yield target
    finally:
        shutil.rmtree(folder, ignore_errors=True)


_CACHE_DIR: list = []


def _local_cache_dir() -> str:
    if not _CACHE_DIR:
        _CACHE_DIR.append(tempfile.mkdtemp(prefix="curate-storage-"))
    return _CACHE_DIR[0]


# --- writing ---------------------------------------------------------------------------

def tmp_name(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def remove_stale_temporaries(*paths: str | Path) -> None:
    """Temporaries earlier, killed attempts at `paths` left behind (none on object stores):
    one listing per folder, names matched as text (`.<name>.*.tmp`; a glob would compile a
    pattern per name and list the folder once per path)."""
    folders: dict[str, list[str]] = {}
    for path in paths:
        path = normalize(path).rstrip("/")
        if is_local(path):
            folder, base = os.path.split(path)
            folders.setdefault(folder or ".", []).append(f".{base}.")
    for folder, prefixes in folders.items():
        try:
            with os.scandir(folder) as entries:
                stale = [e.path for e in entries if e.name.endswith(".tmp") and any(
                    e.name.startswith(p) and len(e.name) >= len(p) + 4 for p in prefixes)]
        except (FileNotFoundError, NotADirectoryError):
            continue
        for path in stale:
            _remove(Path(path))


@contextmanager
def committing(path: str | Path, durable: bool = False) -> Iterator[Path]:
    """Yields the local temporary path to write `path` through; commits it when the block
    ends (renamed into place after an fsync with `durable`, or uploaded whole), removes it
    when the block fails."""
    path = normalize(path)
    local = is_local(path)
    if local:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = tmp_name(path)
    else:
        tmp = tmp_name(os.path.join(_local_cache_dir(), "out", uuid.uuid4().hex, name(path)))
        tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield tmp
        if local:
            if durable and tmp.is_file():
                with open(tmp, "rb") as stream:
                    os.fsync(stream.fileno())
            if tmp.is_dir():
                _remove(Path(path))
            os.replace(tmp, path)   # nothing left to remove after this
        else:
            if tmp.is_file():
                _sizes[path] = tmp.stat().st_size
                _versions[path] = _versions.get(path, 0) + 1
            _upload(tmp, path)
    except BaseException:
        _sizes.pop(path, None)
        _remove(tmp)
        raise
    finally:
        if not local:
            _remove(tmp)
            shutil.rmtree(tmp.parent, ignore_errors=True)


def _upload(local: Path, path: str) -> None:
    fs, inner = filesystem(path)
    with _errors_named(path), _missing_is_permanent(path):
        if local.is_dir():
            for file in sorted(p for p in local.rglob("*") if p.is_file()):
                fs.put_file(str(file), join(inner, *file.relative_to(local).parts))
        else:
            fs.put_file(str(local), inner)


@dataclass
class Folder:
    """A folder being committed: write its files under `path` (from any process) and record
    them in `files` (name -> size) for the object-store marker."""
    path: str
    files: dict = field(default_factory=dict)


@contextmanager
def committing_folder(path: str | Path) -> Iterator[Folder]:
    """Commits a folder when the block ends: renamed into place on a file system; on an
    object store, where its files go to their final names as they are written, marked by
    `_SUCCESS` (written last, naming the files and their sizes)."""
    path = normalize(path)
    if is_local(path):
        remove_stale_temporaries(path)
        with committing(path) as tmp:
            tmp.mkdir(parents=True)
            yield Folder(str(tmp))
        return
    remove(join(path, SUCCESS))
    folder = Folder(path)
    yield folder
    write_json({"files": dict(sorted(folder.files.items()))}, join(path, SUCCESS))


def folder_files(path: str | Path) -> list[str]:
    """The files of a committed folder (`kept/`, `ledger/`), through its marker on an object
    store; None when it is not there (or not complete)."""
    path = normalize(path)
    if is_local(path):
        if not os.path.isdir(path):
            return None
        return sorted(join(path, f) for f in os.listdir(path) if not f.startswith((".", "_")))
    marker = read_marker(join(path, SUCCESS))
    return None if marker is None else [join(path, f) for f in sorted(marker["files"])]


def makedirs(path: str | Path) -> None:
    """Create a local folder (object stores have none to create)."""
    if is_local(path):
        os.makedirs(normalize(path), exist_ok=True)


def remove(path: str | Path) -> None:
    path = normalize(path)
    if is_local(path):
        _remove(Path(path))
        return
    fs, inner = filesystem(path)
    with _errors_named(path):
        try:
            fs.rm_file(inner)
        except FileNotFoundError:
            pass


def create_exclusive(path: str | Path, data: bytes) -> bool:
    """Write `path` only if nothing is there (O_EXCL; a conditional put, `If-None-Match: *`
    on S3, `ifGenerationMatch=0` on GCS): True when this call created it. Of many callers at
    once, exactly one gets True."""
    path = normalize(path)
    if is_local(path):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        try:
            handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        return True
    fs, inner = filesystem(path)
    with _errors_named(path), _missing_is_permanent(path):
        try:
            fs.pipe_file(inner, data, mode="create")
        except FileExistsError:
            return False
    return True


def list_names(folder: str | Path) -> list[str]:
    """The names directly in a folder (fresh: no listing cache), [] when there is none."""
    folder = normalize(folder)
    if is_local(folder):
        try:
            return sorted(os.listdir(folder))
        except (FileNotFoundError, NotADirectoryError):
            return []
    fs, inner = filesystem(folder)
    with _errors_named(folder):
        try:
            found = fs.ls(inner, detail=False, refresh=True)
        except FileNotFoundError:
            return []
    return sorted(posixpath.basename(p.rstrip("/")) for p in found)


def stat(path: str | Path) -> dict:
    """`size` and what changes when the content is rewritten: `mtime` (ns) on a file
    system, the object's `etag` (or generation, or modified time) on a store."""
    path = normalize(path)
    if is_local(path):
        info = os.stat(path)
        return {"size": info.st_size, "mtime": info.st_mtime_ns}
    fs, inner = filesystem(path)
    with _errors_named(path):
        fs.invalidate_cache(inner)
        info = fs.info(inner)
    tag = info.get("ETag") or info.get("etag") or info.get("generation") or info.get("LastModified") \
        or info.get("mtime") or info.get("updated") or info.get("created")
    return {"size": int(info.get("size") or 0), "etag": str(tag).strip('"') if tag is not None else None}


def read_range(path: str | Path, start: int, stop: int) -> bytes:
    """Bytes [start, stop) of a file (one ranged request on an object store)."""
    path = normalize(path)
    if is_local(path):
        with open(path, "rb") as stream:
            stream.seek(start)
            return stream.read(max(0, stop - start))
    fs, inner = filesystem(path)
    with _errors_named(path):
        return fs.cat_file(inner, start=start, end=stop)


def write_bytes(path: str | Path, data: bytes, durable: bool = False) -> None:
    with committing(path, durable) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(obj: Any, path: str | Path) -> None:
    write_text(path, json.dumps(obj, indent=1, sort_keys=True, default=_json_default))


def link_or_copy(source: str | Path, target: str | Path) -> None:
    """`target` with `source`'s content: a hard link where the file system allows, a
    server-side copy on an object store, else a copy."""
    source, target = normalize(source), normalize(target)
    if is_local(source) and is_local(target):
        with committing(target) as tmp:
            try:
                os.link(source, tmp)
            except OSError:
                shutil.copyfile(source, tmp)
        return
    if not is_local(source) and not is_local(target) and source.split("://")[0] == target.split("://")[0]:
        fs, inner = filesystem(source)
        with _errors_named(target):
            fs.copy(inner, filesystem(target)[1])
        return
    write_bytes(target, read_bytes(source))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def json_roundtrip(obj: Any) -> Any:
    """`obj` as it reads back from JSON (tuples become lists, ...), for comparisons."""
    return json.loads(json.dumps(obj, sort_keys=True, default=_json_default))
