"""One run per folder: a run holds a lease on its output folder while it works.

The lease is a small JSON file `<run>/_lease/<generation>.json` naming its owner (host, pid,
when it started) and a heartbeat the owner rewrites every `HEARTBEAT` seconds. The highest
generation present is the current lease. A run takes it by creating the next generation
with an exclusive write (`storage.create_exclusive`: O_EXCL on a file system, a conditional
put on an object store), so of two runs that start together exactly one wins; the loser
reads the winner's file and refuses in one line naming it.

A lease is stale when its owner is gone: on this host, its process no longer exists; from
another host, its heartbeat is older than `STALE_AFTER` seconds. A stale lease is taken
over the same way (the next generation, created exclusively), so two runs that find the
same stale lease cannot both take it. The owner removes its file when it ends (the folder
then holds no `_lease/` on a file system), and the winner of a takeover removes the older
generations.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Iterator, Optional

from pipeline.core import storage
from pipeline.errors import UserError

FOLDER = "_lease"
HEARTBEAT = 10.0      # seconds between the owner's rewrites of its lease
STALE_AFTER = 90.0    # a lease from another host whose heartbeat is older is taken over


class FolderInUse(UserError):
    """Another live run holds the run folder."""


@contextmanager
def held(run_dir: str) -> Iterator[dict]:
    """Hold the lease on `run_dir` for the block (raises `FolderInUse` when a live run holds
    it); yields this run's lease record."""
    folder = storage.join(run_dir, FOLDER)
    path, record = acquire(folder, run_dir)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(path, record, stop), daemon=True,
                            name="curate-lease-heartbeat")
    beat.start()
    try:
        yield record
    finally:
        stop.set()
        beat.join(timeout=HEARTBEAT)
        release(folder, path)


def acquire(folder: str, run_dir: str) -> tuple[str, dict]:
    """Create the next generation of the lease, after checking that the current one (if any)
    is stale; returns its path and record."""
    for _ in range(5):   # lost races against runs that then ended: look again
        generations = _generations(folder)
        current = generations[-1] if generations else 0
        if current:
            holder = _read(storage.join(folder, _name(current)))
            if holder is not None and not is_stale(holder):
                raise in_use(run_dir, holder)
        record = own_record()
        path = storage.join(folder, _name(current + 1))
        if storage.create_exclusive(path, _encode(record)):
            for older in generations:
                storage.remove(storage.join(folder, _name(older)))
            return path, record
    holder = _read(storage.join(folder, _name(_generations(folder)[-1]))) if _generations(folder) else None
    raise in_use(run_dir, holder or {})


def release(folder: str, path: str) -> None:
    """Give the lease up: remove its file (and on a file system the empty `_lease/`)."""
    storage.remove(path)
    if storage.is_local(folder):
        try:
            os.rmdir(storage.normalize(folder))
        except OSError:
            pass


def is_stale(record: dict, now: Optional[float] = None) -> bool:
    """Whether the lease's owner is gone (see the module's docstring)."""
    if record.get("host") == socket.gethostname():
        return not _process_alive(record.get("pid"), record.get("started_ticks"))
    now = time.time() if now is None else now
    return now - float(record.get("heartbeat", 0)) > STALE_AFTER


def current(run_dir: str) -> Optional[dict]:
    """The lease on `run_dir` now (its record, with `held`: whether its owner is alive), or
    None when no run holds the folder. Reads only: safe while a run works there."""
    folder = storage.join(run_dir, FOLDER)
    generations = _generations(folder)
    if not generations:
        return None
    record = _read(storage.join(folder, _name(generations[-1])))
    if record is None:   # removed as its owner ended
        return None
    return {**record, "held": not is_stale(record)}


def own_record() -> dict:
    now = time.time()
    return {"host": socket.gethostname(), "pid": os.getpid(), "started_ticks": _start_ticks(os.getpid()),
            "since": now, "heartbeat": now}


def in_use(run_dir: str, holder: dict) -> FolderInUse:
    since = holder.get("since")
    when = datetime.fromtimestamp(since, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if since else "?"
    return FolderInUse(f"{run_dir}: in use by another run (host {holder.get('host', '?')}, "
                       f"pid {holder.get('pid', '?')}, since {when}); wait for it to end, "
                       f"or use another --output")


def _heartbeat(path: str, record: dict, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT):
        record["heartbeat"] = time.time()
        try:
            storage.write_bytes(path, _encode(record))
        except Exception:  # noqa: BLE001 - a missed beat is retried at the next one
            pass


def _generations(folder: str) -> list[int]:
    found = []
    for name in storage.list_names(folder):
        stem = name[:-len(".json")] if name.endswith(".json") else ""
        if stem.isdigit():
            found.append(int(stem))
    return sorted(found)


def _name(generation: int) -> str:
    return f"{generation:08d}.json"


def _read(path: str) -> Optional[dict]:
    try:
        record = storage.read_marker(path)
    except (ValueError, UnicodeDecodeError):   # being written: a live owner
        return {"heartbeat": time.time()}
    return record if isinstance(record, dict) else None


def _encode(record: dict) -> bytes:
    return json.dumps(record, sort_keys=True).encode("utf-8")


def _process_alive(pid, started_ticks) -> bool:
    """Whether process `pid` of this host exists and is the one that took the lease (its
    start time, when known, tells a reused pid apart)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    fields = _proc_stat(pid)
    if fields is None:
        return True   # no /proc: trust kill(0)
    if fields[0] == b"Z":   # exited, not yet reaped by its parent
        return False
    return started_ticks is None or int(fields[19]) == started_ticks


def _start_ticks(pid: int) -> Optional[int]:
    """When process `pid` started, in clock ticks since boot (Linux), else None."""
    fields = _proc_stat(pid)
    return int(fields[19]) if fields is not None else None


def _proc_stat(pid: int) -> Optional[list[bytes]]:
    """The fields of /proc/<pid>/stat after the command name (state first), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stream:
            fields = stream.read().rsplit(b")", 1)[1].split()
        return fields if len(fields) > 19 else None
    except (OSError, IndexError):
        return None
