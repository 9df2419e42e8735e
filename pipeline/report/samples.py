"""Sample pairs for the report's image grids: kept pairs from `shards/*.tar`, and pairs dropped
after download (their images are in the download step's data parts, found by uid from the
ledger). Images are re-encoded as small JPEG thumbnails in `data:` URIs."""
from __future__ import annotations

import base64
import io
import json
import tarfile
from contextlib import closing
from dataclasses import dataclass
from itertools import islice

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core import storage
from pipeline.report.data import phase_files, read_columns, read_json, step_records

THUMB = 160


@dataclass
class Sample:
    image: str     # data: URI of a JPEG thumbnail
    caption: str
    note: str      # clip score of a kept pair, stage and reason of a dropped one


def thumbnail_uri(jpg: bytes | None, size: int = THUMB) -> str | None:
    """A small JPEG `data:` URI of an encoded image, or None when it does not decode."""
    if not jpg:
        return None
    from PIL import Image

    try:
        with Image.open(io.BytesIO(jpg)) as image:
            image = image.convert("RGB")
            image.thumbnail((size, size))
            out = io.BytesIO()
            image.save(out, format="JPEG", quality=85)
    except Exception:  # noqa: BLE001 - any undecodable image is simply not shown
        return None
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode("ascii")


TARS_READ, SAMPLES_PER_TAR = 4, 64   # the most the report reads for kept samples: its cost is fixed


def kept_samples(run_dir: str, limit: int = 24) -> list[Sample]:
    """Up to `limit` samples whose image decodes, from the first SAMPLES_PER_TAR samples of
    TARS_READ tars spread over the shards (the first tar first; shards are already shuffled
    by uid hash): a bounded read, whatever the run's size and whether its images decode."""
    samples: list[Sample] = []
    sizes = read_json(storage.join(run_dir, "shards", "sizes.json")) or {}
    names = [name for name in sorted(sizes) if sizes[name]]
    for name in spread(names, TARS_READ):
        with closing(tar_samples(storage.join(run_dir, "shards", name))) as members_of:
            for members in islice(members_of, SAMPLES_PER_TAR):
                sample = kept_sample(members)
                if sample is not None:
                    samples.append(sample)
                if len(samples) >= limit:
                    return samples
    return samples


def spread(names: list[str], count: int) -> list[str]:
    """Up to `count` of `names`, evenly spaced, the first one first."""
    return list(dict.fromkeys(names[i * len(names) // count] for i in range(count))) if names else []


def tar_samples(path: str):
    """Yield {extension: bytes} per webdataset sample (members grouped by key) of one tar."""
    current, members = None, {}
    with storage.open_input(path, sequential=True) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, _, extension = member.name.partition(".")
            if key != current and members:
                yield members
                members = {}
            current = key
            members[extension] = tar.extractfile(member).read()
    if members:
        yield members


def kept_sample(members: dict[str, bytes]) -> Sample | None:
    image = thumbnail_uri(members.get("jpg"))
    if image is None:
        return None
    caption = members.get("txt", b"").decode("utf-8", "replace")
    try:
        score = json.loads(members.get("json", b"{}")).get("clip_score")
    except ValueError:
        score = None
    note = f"clip score {score:.3f}" if isinstance(score, (int, float)) else "kept"
    return Sample(image, caption, note)


def dropped_samples(run_dir: str, stages: list[str], limit: int = 24) -> list[Sample]:
    """Pairs dropped after download, spread over their (stage, reason)s, with images."""
    if "download" not in stages:
        return []
    later = stages[stages.index("download") + 1:]
    ledger = read_columns(storage.join(run_dir, "ledger"), ["uid", "url", "stage", "reason"],
                          filter=pc.field("stage").isin(later or ["-"]) & pc.field("url").is_valid())
    # a row the ledger withholds the URL of (blocklisted) is never shown
    if ledger is None or ledger.num_rows == 0:
        return []
    picked = pick_spread(ledger, limit)
    paths = phase_files(run_dir, "download", "data")
    found = read_columns(paths, ["uid", "text", "jpg"], filter=pc.field("uid").isin(list(picked)))
    if found is None or "jpg" not in found.column_names:
        return []
    images = {row["uid"]: row for row in found.to_pylist()}
    samples = []
    for uid, (stage, reason) in picked.items():
        row = images.get(uid)
        image = thumbnail_uri(row["jpg"]) if row else None
        if image is not None:
            samples.append(Sample(image, row.get("text") or "", f"{stage}: {reason}"))
    return samples


def duplicate_pairs(run_dir: str, limit: int = 8) -> list[tuple[Sample, Sample]]:
    """Pairs semantic_dedup removed, each beside the kept pair it duplicates (the examples
    its step recorded), with their images from the download step's parts."""
    examples = [pair for _, record in step_records(run_dir, "semantic_dedup")
                for pair in (record.get("semantic_dedup") or {}).get("examples", [])][:limit]
    if not examples:
        return []
    uids = sorted({pair[side] for pair in examples for side in ("removed", "kept")})
    found = read_columns(phase_files(run_dir, "download", "data"), ["uid", "text", "jpg"],
                         filter=pc.field("uid").isin(uids))
    if found is None or "jpg" not in found.column_names:
        return []
    rows = {row["uid"]: row for row in found.to_pylist()}
    pairs = []
    for pair in examples:
        removed, kept = rows.get(pair["removed"]), rows.get(pair["kept"])
        images = [thumbnail_uri(row["jpg"]) if row else None for row in (removed, kept)]
        if None not in images:
            pairs.append((Sample(images[0], removed.get("text") or "", f"removed: cosine {pair['similarity']:.3f}"),
                          Sample(images[1], kept.get("text") or "", "kept")))
    return pairs


def pick_spread(ledger: pa.Table, limit: int) -> dict[str, tuple[str, str]]:
    """Up to `limit` uids, taken in turn from each (stage, reason), lowest uids first
    (uids are hashes, so that is an arbitrary but stable sample)."""
    ledger = ledger.sort_by("uid")
    groups = ledger.group_by(["stage", "reason"]).aggregate([]).to_pylist()
    lists = []
    for group in sorted(groups, key=lambda g: (str(g["stage"]), str(g["reason"]))):
        mask = pc.and_(pc.equal(ledger["stage"], group["stage"]), pc.equal(ledger["reason"], group["reason"]))
        uids = ledger.filter(mask).slice(0, limit)["uid"].to_pylist()
        lists.append([(uid, (group["stage"], group["reason"])) for uid in uids])
    picked: dict[str, tuple[str, str]] = {}
    for turn in range(limit):
        for items in lists:
            if turn < len(items) and len(picked) < limit:
                picked.setdefault(*items[turn])
    return picked

