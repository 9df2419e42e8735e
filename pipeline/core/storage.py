"""The one place that commits files. Every write goes to a temporary name beside its target,
`.<name>.<pid>.<random>.tmp`, and is renamed into place when complete: a reader never sees a
half-written file, and a killed writer leaves only temporaries, which the next attempt at the
same target removes (`remove_stale_temporaries`). Folders are committed the same way.

Parts (parquet), stats and markers (JSON), numpy extras, tars, `sizes.json`, checkpoints,
`eval.json`, `kept/`, `ledger/` and the report all go through here, so a backend for an
object store (write the objects, then a marker last) replaces this module alone.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def tmp_name(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def remove_stale_temporaries(path: str | Path) -> None:
    """Temporaries an earlier, killed attempt at `path` left behind."""
    path = Path(path)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        _remove(stale)


@contextmanager
def committing(path: str | Path, durable: bool = False) -> Iterator[Path]:
    """Yields the temporary path to write `path` through; commits it when the block ends
    (after an fsync with `durable`), removes it when the block fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(path)
    try:
        yield tmp
        if durable and tmp.is_file():
            with open(tmp, "rb") as stream:
                os.fsync(stream.fileno())
        if tmp.is_dir():
            _remove(path)
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def write_bytes(path: str | Path, data: bytes, durable: bool = False) -> None:
    with committing(path, durable) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(obj: Any, path: str | Path) -> None:
    write_text(path, json.dumps(obj, indent=1, sort_keys=True, default=_json_default))


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def link_or_copy(source: str | Path, target: str | Path) -> None:
    """`target` with `source`'s content: a hard link where the file system allows, else a copy."""
    with committing(target) as tmp:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)


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
