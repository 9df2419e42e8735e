"""`curate diff RUN_A RUN_B`: what changed between two releases.

Rows: the kept uids of each (`kept/`), those only in B (added) and those only in A
(removed), the removed ones counted by why B does not hold them: B's ledger row for the
uid (`stage/reason`: `dedup/in_earlier_run`, `takedown/taken_down`, ...) or `not in input`
when B never saw it. Tars: by name, from each run's `datacard.json` (sha256 and samples;
hashed afresh for a run without one): added, removed, changed (another sha256), unchanged.
"""
from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc

from pipeline import datacard
from pipeline.core import parts, storage
from pipeline.errors import UserError

NOT_IN_INPUT = "not in input"


def diff_runs(run_a: str, run_b: str) -> dict:
    a, b = storage.absolute(run_a), storage.absolute(run_b)
    kept_a, kept_b = kept_uids(a), kept_uids(b)
    added = pc.filter(kept_b, pc.invert(pc.is_in(kept_b, kept_a)))
    removed = pc.filter(kept_a, pc.invert(pc.is_in(kept_a, kept_b)))
    tars_a, tars_b = tars_of(a), tars_of(b)
    common = sorted(set(tars_a) & set(tars_b))
    return {"a": run_a, "b": run_b, "kept": {"a": len(kept_a), "b": len(kept_b)},
            "added": len(added), "removed": len(removed), "removed_by_reason": removal_reasons(b, removed),
            "tars": {"added": sorted(set(tars_b) - set(tars_a)), "removed": sorted(set(tars_a) - set(tars_b)),
                     "changed": [n for n in common if tars_a[n]["sha256"] != tars_b[n]["sha256"]],
                     "unchanged": len([n for n in common if tars_a[n]["sha256"] == tars_b[n]["sha256"]])}}


def kept_uids(run_dir: str) -> pa.Array:
    files = storage.folder_files(storage.join(run_dir, "kept"))
    if files is None:
        raise UserError(f"{run_dir}: not a finished run (no kept/)")
    chunks = [parts.read_ref(f, ["uid"])["uid"].combine_chunks() for f in files]
    return pc.unique(pa.concat_arrays(chunks)) if chunks else pa.array([], pa.string())


def removal_reasons(run_dir: str, removed: pa.Array) -> dict:
    """`stage/reason` of B's ledger for each removed uid (the latest ledger row: a uid
    dropped, its copy kept and then taken down counts as taken down)."""
    counts: Counter = Counter()
    seen = set()
    for path in sorted(storage.folder_files(storage.join(run_dir, "ledger")) or [],
                       key=lambda p: not storage.name(p).startswith("takedown-")):
        table = parts.read_ref(path, ["uid", "stage", "reason"])
        table = table.filter(pc.is_in(table["uid"], removed))
        for uid, stage, reason in zip(*(table[c].to_pylist() for c in ("uid", "stage", "reason"))):
            if uid not in seen:
                seen.add(uid)
                counts[f"{stage}/{reason}"] += 1
    if len(removed) > len(seen):
        counts[NOT_IN_INPUT] = len(removed) - len(seen)
    return dict(sorted(counts.items()))


def tars_of(run_dir: str) -> dict:
    card = datacard.read_datacard(run_dir)
    if card is not None:
        return card["shards"]["tars"]
    return datacard.tar_hashes(run_dir, {})["tars"]


def format_diff(result: dict) -> str:
    lines = [f"A {result['a']}: {result['kept']['a']:,} kept rows",
             f"B {result['b']}: {result['kept']['b']:,} kept rows",
             f"rows added in B: {result['added']:,}",
             f"rows removed in B: {result['removed']:,}"]
    lines += [f"  {reason}: {count:,}" for reason, count in result["removed_by_reason"].items()]
    tars = result["tars"]
    lines.append(f"tars: {len(tars['added'])} added, {len(tars['removed'])} removed, "
                 f"{len(tars['changed'])} changed, {tars['unchanged']} unchanged")
    for kind in ("added", "removed", "changed"):
        if tars[kind]:
            lines.append(f"  {kind}: {' '.join(tars[kind])}")
    return "\n".join(lines)
