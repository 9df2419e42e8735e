"""`curate takedown RUN... --list FILE`: remove listed samples from finished runs' tars.

Lists name samples by URL, uid, SHA-256 or MD5 of the image bytes in the tar (our stored copy),
or PDQ hash (within `pdq_distance` bits). Each list is a file, text (one entry a line, `#`
comments) or parquet, local or on an object store, read with the blocklist's readers; its
kind is given as `urls:FILE`, `uids:FILE`, `sha256:FILE`, `md5:FILE`, `pdq:FILE` (a text file
of URLs, or a parquet file with a column named after the kind, needs no prefix).

Matching reads each run's `kept/` (uid, url, sha256, pdq, shard, key), never an image, except
for MD5 lists (the tars' images are hashed: MD5 is not kept). Then, per run, holding its lease:

1. the plan, `takedowns/_pending.json`: the rows matched, per affected tar the keys to remove,
   its sample count and sha256 before; written before anything changes;
2. each affected tar rewritten without those samples (same name, the others in the same order,
   same keys and bytes; `shards.write_samples`, committed whole), a marker per tar done
   (`takedowns/_pending/<tar>.json`, its new sha256) written after it;
3. `sizes.json`, `kept/` (affected parts rewritten), `ledger/` (the rows' `kept` rows removed
   from `kept-N.parquet`, and `takedown-<stamp>.parquet` added: uid, stage `takedown`,
   reason `taken_down`, no URL), `uids.npy`, the clip-retrieval `embeddings/` (a stale faiss
   index is removed), `summary.json` (a last stage `takedown`, counted from the ledger's
   takedown parts), then `takedowns/<stamp>.json` (the record), `datacard.json` and the report;
4. the plan and markers removed.

Every step after the plan is idempotent (the folder edits: `pipeline.takedown_edits`), so a
killed takedown rerun with the same lists finishes the same way; once finished, the same
lists match nothing and change nothing.
`index/` keeps the taken-down rows: a later release that excludes this run still drops them.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import blocklist, datacard, pdq, shards
from pipeline.core import lease, parts, storage
from pipeline.errors import UserError
from pipeline.takedown_edits import (
    add_ledger_part,
    filter_embeddings,
    filter_folder,
    filter_uids_file,
    update_summary,
)

KINDS = ("urls", "uids", "sha256", "md5", "pdq")
FOLDER = "takedowns"
PLAN = "_pending.json"
MARKERS = "_pending"
PDQ_DISTANCE = pdq.DISTANCE   # bits of 256: PDQ's recommended match threshold


@dataclass
class TakedownList:
    kind: str
    path: str


def parse_list(value: str) -> TakedownList:
    """`KIND:FILE`, or a FILE whose kind is clear (a text file of URLs, a parquet column)."""
    kind, sep, rest = value.partition(":")
    if sep and kind in KINDS:
        return TakedownList(kind, storage.absolute(rest))
    path = storage.absolute(value)
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        with storage.open_input(path) as stream:
            names = [n.lower() for n in pq.read_schema(stream).names]
        found = [k for k in KINDS if set(names) & {k, k.rstrip("s"), *blocklist.COLUMN_NAMES.get(k, ())}]
        if len(found) == 1:
            return TakedownList(found[0], path)
    else:
        entries = [line.split("#", 1)[0].strip() for line in storage.read_text(path).splitlines()]
        if all("://" in e for e in entries if e) and any(entries):
            return TakedownList("urls", path)
    raise UserError(f"--list {value}: name its kind, e.g. uids:{value} (one of {', '.join(KINDS)})")


def read_list(item: TakedownList) -> list[str]:
    if item.kind == "pdq":
        return [bytes(code).hex() for code in pdq.read_pdq_list([item.path])]
    return blocklist.read_entries(item.path, item.kind, label="takedown")


@dataclass
class Matcher:
    """Every list's entries, read once (a bad entry: one line naming the file and line)."""
    entries: dict   # kind -> set of entries (URLs as their blocklist keys)
    pdq_distance: int
    described: list   # per list: kind, path, entries, sha256 of the entries

    @classmethod
    def load(cls, lists: list[TakedownList], pdq_distance: int = PDQ_DISTANCE) -> "Matcher":
        entries: dict = {kind: set() for kind in KINDS}
        described = []
        for item in lists:
            values = read_list(item)
            keyed = (blocklist.url_key if item.kind == "urls" else str.lower)
            entries[item.kind].update(keyed(v) for v in values)
            digest = hashlib.sha256("\n".join(sorted(values)).encode("utf-8", "surrogatepass")).hexdigest()
            described.append({"kind": item.kind, "path": item.path, "entries": len(values), "sha256": digest})
        return cls(entries, pdq_distance, described)

    @property
    def id(self) -> str:
        """The lists' identity (kinds and entries, not paths): a plan belongs to one."""
        text = json.dumps([sorted((d["kind"], d["sha256"]) for d in self.described), self.pdq_distance])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def rows(self, table: pa.Table) -> np.ndarray:
        """Which kept rows a list names (all but MD5, which needs the images)."""
        found = np.zeros(table.num_rows, bool)
        for kind, column in (("uids", "uid"), ("sha256", "sha256")):
            if self.entries[kind] and column in table.column_names:
                values = pc.utf8_lower(table[column].cast(pa.string()))
                found |= pc.fill_null(pc.is_in(values, pa.array(sorted(self.entries[kind]))), False).to_numpy()
        if self.entries["urls"]:
            keys = [blocklist.url_key(u) if u else None for u in table["url"].to_pylist()]
            found |= np.array([k in self.entries["urls"] for k in keys], bool)
        if self.entries["pdq"] and "pdq" in table.column_names:
            found |= self.pdq_rows(table)
        return found

    def pdq_rows(self, table: pa.Table) -> np.ndarray:
        """Rows whose image's PDQ hash is within `pdq_distance` bits of a listed one (a hash
        under PDQ's quality floor never matches, as in blocklists)."""
        found = pdq.PdqIndex(sorted(self.entries["pdq"])).matches(table["pdq"].to_pylist(), self.pdq_distance)
        if "pdq_quality" in table.column_names:
            quality = pc.fill_null(table["pdq_quality"], 0).to_numpy(zero_copy_only=False)
            found &= quality >= pdq.MIN_QUALITY
        return found


def takedown(runs: list[str], lists: list[TakedownList], pdq_distance: int = PDQ_DISTANCE,
             log: Callable = print) -> list[Optional[dict]]:
    """Take the listed samples down in every run; returns each run's record (None: no match)."""
    if not lists:
        raise UserError("takedown: give at least one --list")
    matcher = Matcher.load(lists, pdq_distance)
    records = []
    for run in runs:
        run_dir = storage.absolute(run)
        if storage.read_marker(storage.join(run_dir, "summary.json")) is None \
                or storage.folder_files(storage.join(run_dir, "kept")) is None:
            raise UserError(f"{run}: not a finished run (no summary.json or kept/)")
        with lease.held(run_dir):
            records.append(takedown_run(run_dir, matcher, log))
    return records


def takedown_run(run_dir: str, matcher: Matcher, log: Callable) -> Optional[dict]:
    plan_path = storage.join(run_dir, FOLDER, PLAN)
    plan = storage.read_marker(plan_path)
    if plan is not None and plan["id"] != matcher.id:
        raise UserError(f"{run_dir}: an unfinished takedown of other lists ({plan['lists'][0]['path']}, "
                        f"begun {plan['stamp']}); rerun it with those lists first")
    if plan is None:
        plan = make_plan(run_dir, matcher)
        if plan is None:
            log(f"takedown: {run_dir}: nothing listed is in it; nothing changed")
            return None
        storage.write_json(plan, plan_path)
    record = apply_plan(run_dir, plan)
    for tar in plan["tars"]:
        storage.remove(marker_path(run_dir, tar))
    storage.remove(plan_path)
    log(f"takedown: {run_dir}: {record['matched']} sample(s) removed from {len(record['tars'])} tar(s)")
    return record


def make_plan(run_dir: str, matcher: Matcher) -> Optional[dict]:
    """The rows to take down (kept file, uid, shard, key), and each affected tar's keys, sample
    count and sha256 before; None when nothing matches."""
    sizes = storage.read_json(storage.join(run_dir, "shards", shards.SIZES_FILE)) \
        if storage.exists(storage.join(run_dir, "shards", shards.SIZES_FILE)) else {}
    md5_keys = md5_matches(run_dir, sizes, matcher.entries["md5"])
    matched = []
    for path in storage.folder_files(storage.join(run_dir, "kept")):
        names = parts.read_schema(path).names
        wanted = ("uid", "url", "sha256", "pdq", "pdq_quality", "shard", "key")
        table = parts.read_ref(path, [c for c in wanted if c in names])
        found = matcher.rows(table)
        if md5_keys and "key" in names:
            found |= np.array([k in md5_keys for k in table["key"].to_pylist()], bool)
        for row in table.filter(pa.array(found)).to_pylist():
            matched.append({"file": storage.name(path), "uid": row["uid"], "shard": row.get("shard"),
                            "key": row.get("key")})
    if not matched:
        return None
    tars: dict = {}
    for row in matched:
        if row["shard"]:
            tars.setdefault(row["shard"], {"remove": []})["remove"].append(row["key"])
    for name, tar in tars.items():
        path = storage.join(run_dir, "shards", name)
        tar.update(samples=sizes.get(name), sha256=datacard.file_sha256(path))
    stamp = time.strftime("%Y-%m-%dT%H-%M-%SZ", time.gmtime())
    return {"id": matcher.id, "stamp": stamp, "lists": matcher.described, "pdq_distance": matcher.pdq_distance,
            "rows": matched, "tars": dict(sorted(tars.items()))}


def md5_matches(run_dir: str, sizes: dict, md5s: set) -> set:
    """Keys of the samples whose image's MD5 is listed (reads every tar's images)."""
    if not md5s:
        return set()
    keys = set()
    for name in sizes:
        for sample in shards.read_samples(storage.join(run_dir, "shards", name)):
            if hashlib.md5(sample.get("jpg", b"")).hexdigest() in md5s:
                keys.add(sample["__key__"])
    return keys


def marker_path(run_dir: str, tar: str) -> str:
    return storage.join(run_dir, FOLDER, MARKERS, f"{tar}.json")


def apply_plan(run_dir: str, plan: dict) -> dict:
    """Every change of a plan, each step idempotent (a rerun redoes what is not marked)."""
    changed = {name: rewrite_tar(run_dir, name, tar) for name, tar in plan["tars"].items()}
    update_sizes(run_dir, plan["tars"])
    uids = {row["uid"] for row in plan["rows"]}
    kept_files = sorted({row["file"] for row in plan["rows"]})
    filter_folder(storage.join(run_dir, "kept"), kept_files, uids)
    ledger = storage.join(run_dir, "ledger")
    filter_folder(ledger, [f.replace("part-", "kept-", 1) for f in kept_files], uids)
    add_ledger_part(ledger, f"takedown-{plan['stamp']}.parquet", [row["uid"] for row in plan["rows"]])
    filter_uids_file(storage.join(run_dir, "uids.npy"), uids)
    filter_embeddings(run_dir, uids)
    update_summary(run_dir)
    record = {"stamp": plan["stamp"], "lists": plan["lists"], "pdq_distance": plan["pdq_distance"],
              "matched": len(plan["rows"]), "kept_rows_changed": len(kept_files),
              "tars": {name: {"old_sha256": plan["tars"][name]["sha256"], "new_sha256": done["sha256"],
                              "removed": len(plan["tars"][name]["remove"]), "samples": done["samples"]}
                       for name, done in changed.items()}}
    storage.write_json(record, storage.join(run_dir, FOLDER, f"{plan['stamp']}.json"))
    before = datacard.read_datacard(run_dir) or {}
    known = {name: tar["sha256"] for name, tar in (before.get("shards") or {}).get("tars", {}).items()}
    datacard.write_datacard(run_dir, {**known, **{name: done["sha256"] for name, done in changed.items()}})
    rewrite_report(run_dir)
    return record


def rewrite_tar(run_dir: str, name: str, tar: dict) -> dict:
    """The tar without the plan's keys (committed whole), then its marker; skipped when marked."""
    marker = marker_path(run_dir, name)
    done = storage.read_marker(marker)
    if done is not None:
        return done
    remove, kept = set(tar["remove"]), [0]

    def remaining():
        for sample in shards.read_samples(storage.join(run_dir, "shards", name)):
            if sample["__key__"] not in remove:
                kept[0] += 1
                yield sample

    digest = shards.write_samples(storage.join(run_dir, "shards", name), remaining())
    shards.record_sha256(storage.join(run_dir, "shards"), name, digest)
    done = {"sha256": digest, "samples": kept[0]}
    storage.write_json(done, marker)
    return done


def update_sizes(run_dir: str, tars: dict) -> None:
    if not tars:   # a run without shards
        return
    path = storage.join(run_dir, "shards", shards.SIZES_FILE)
    sizes = storage.read_json(path)
    for name, tar in tars.items():
        if tar["samples"] is not None:
            sizes[name] = tar["samples"] - len(tar["remove"])
    shards.write_sizes_json(storage.join(run_dir, "shards"), sizes)


def refuse_rerun(run_dir: str) -> None:
    """`curate run` again in a folder with takedowns would write `kept/`, the ledger and
    `uids.npy` again from its steps, the taken-down rows with them: refused."""
    if storage.marker_exists(storage.join(run_dir, "summary.json")) and \
            any(n.endswith(".json") for n in storage.list_names(storage.join(run_dir, FOLDER))):
        raise UserError(f"{run_dir}: samples were taken down from this finished run ({FOLDER}/); running it "
                        f"again would bring them back into kept/ and the ledger: use another --output")


def rewrite_report(run_dir: str) -> None:
    """report.html again (a report problem never fails the takedown: the data is written)."""
    from pipeline.report import write_report

    try:
        write_report(run_dir)
    except Exception:  # noqa: BLE001 - `curate report` rewrites it
        pass
