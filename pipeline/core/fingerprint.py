"""What a run's input files were, so that a rerun whose input changed is noticed.

A run folder records, in `inputs.json`, each input file's size, what changes when it is
rewritten (modified time on a file system, the object's etag on a store) and a sha256 of its
first and last `EDGE` bytes. A rerun compares the files it finds now with that record: parts
already done were read from the old input, so going on would mix two inputs in one result.
"""
from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor

from pipeline.core import storage
from pipeline.errors import UserError

FILE = "inputs.json"
EDGE = 64 * 1024   # bytes hashed at each end of a file
THREADS = 16       # files fingerprinted at once (object stores: one HEAD and two ranged GETs each)


def fingerprint(path: str) -> dict:
    """One file's record: `path`, `size`, `mtime` or `etag`, `edges_sha256`."""
    info = storage.stat(path)
    size = info["size"]
    digest = hashlib.sha256(storage.read_range(path, 0, min(size, EDGE)))
    if size > EDGE:
        digest.update(storage.read_range(path, max(EDGE, size - EDGE), size))
    return {"path": path, **info, "edges_sha256": digest.hexdigest()}


def fingerprints(paths: list[str]) -> list[dict]:
    if len(paths) <= 1:
        return [fingerprint(p) for p in paths]
    with ThreadPoolExecutor(min(THREADS, len(paths))) as pool:
        return list(pool.map(fingerprint, paths))


def differences(previous: list[dict], current: list[dict]) -> list[str]:
    """What changed between two records, one phrase per file."""
    before = {r["path"]: r for r in previous}
    now = {r["path"]: r for r in current}
    found = [f"{p}: no longer an input" for p in before if p not in now]
    found += [f"{p}: a new input file" for p in now if p not in before]
    for path in (p for p in now if p in before):
        old, new = before[path], now[path]
        if old.get("size") != new.get("size"):
            found.append(f"{path}: size {old.get('size'):,} -> {new.get('size'):,} bytes")
        elif old.get("edges_sha256") != new.get("edges_sha256"):
            found.append(f"{path}: content changed")
        elif old.get("mtime") != new.get("mtime") or old.get("etag") != new.get("etag"):
            found.append(f"{path}: rewritten (modified time or etag changed)")
    return found


def check_inputs(run_dir: str, paths: list[str], allow_changed: bool = False) -> list[str]:
    """Record the inputs' fingerprints on a new run; on a rerun, refuse in one line when they
    changed, unless `allow_changed` (then record the new ones). Returns what changed."""
    record_path = storage.join(run_dir, FILE)
    previous = storage.read_marker(record_path)
    current = fingerprints(paths)
    changed = differences(previous, current) if previous is not None else []
    if changed and not allow_changed:
        more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
        raise UserError(f"{run_dir}: the input changed since this run began: {changed[0]}{more}; "
                        f"start a new run with another --output, or pass --allow-changed-input "
                        f"to go on with the parts already done")
    if previous is None or changed:
        storage.write_json(current, record_path)
    return changed
