"""Blocklists: URLs, domains and image hashes a released dataset must not hold.

    blocklist:
      urls: [lists/urls.txt]            # exact image URLs (scheme and host case-insensitive)
      domains: [lists/domains.txt]      # a host and every host under it (example.com: a.example.com)
      md5: [s3://lists/md5.parquet]     # hex digests of the ORIGINAL image bytes, as such lists
      sha256: [lists/sha256.txt]        #   are distributed (not of our resized copy)
      pdq: [lists/pdq.txt]              # PDQ perceptual hashes (64 hex digits) of images
      pdq_distance: 31                  # bits of 256: the PDQ authors' match threshold
      pdq_min_quality: 50               # images whose PDQ quality is lower are not matched

Each file is plain text (one entry a line; blank lines and `#` comments skipped) or parquet
(the column named after the kind, `url`/`domain`/`md5`/`sha256`, or its only string column),
local or on an object store. Rows go with reason `blocklisted` at the earliest step that can
tell: URLs and domains at ingest, hashes in the download task right after the fetch, before
the image is decoded or any byte stored. Those stages declare the reason among their
`withheld_reasons`, so the ledger keeps such a row's uid and reason only (never its URL), and
the report counts them, never shows them.

PDQ (`pipeline.pdq`): the download task hashes every image's original bytes (decoded) and
drops it as `blocklisted` when a listed hash is within `pdq_distance` bits, before the image
is resized or stored; an image whose PDQ quality is under `pdq_min_quality` (flat or tiny
images, whose hashes are unreliable) is never matched. PDQ lists are text (a line's first
64-hex-digit token: bare hashes, `pdq-photo-hasher`'s and ThreatExchange's `dataset -P`
lines; or CSV under a header naming a `pdq`/`hash`/`signal_str` column, as ThreatExchange's
`dataset -P --csv`) or parquet, held per worker as a multi-index (`pipeline.pdq`, ~80 bytes
a hash).

Every list is checked on the driver before any work (a bad entry is one line naming the file
and line) and loaded once per worker: URLs and hashes as sorted 16-byte keys
(`run_index.KeySet`: 16 bytes an entry), domains as a set.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Annotated, Iterable, Optional
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa

from pipeline.core import storage
from pipeline.core.constraints import Between
from pipeline.core.run_index import KeySet
from pipeline.core.tasks import built_once
from pipeline.errors import UserError
from pipeline.pdq import DISTANCE as PDQ_DISTANCE
from pipeline.pdq import MIN_QUALITY as PDQ_MIN_QUALITY
from pipeline.pdq import PdqIndex, read_pdq_file, read_pdq_list

BLOCKLISTED = "blocklisted"   # the reason

KINDS = ("urls", "domains", "md5", "sha256", "pdq")
HEX = {"md5": re.compile(r"^[0-9a-f]{32}$"), "sha256": re.compile(r"^[0-9a-f]{64}$"),
       "uids": re.compile(r"^[0-9a-f]{32}$")}   # uids: takedown lists (`pipeline.takedown`)
COLUMN_NAMES = {"urls": ("url", "urls"), "domains": ("domain", "domains", "host"),
                "md5": ("md5",), "sha256": ("sha256",), "uids": ("uid", "uids")}


@dataclass
class BlocklistSettings:
    """The top-level `blocklist` key (`pipeline.config` adds it to every run's settings):
    files, text or parquet, local or on an object store."""
    urls: list[str] = field(default_factory=list)
    domains: list[str] = field(default_factory=list)
    md5: list[str] = field(default_factory=list)       # of the original image bytes
    sha256: list[str] = field(default_factory=list)    # of the original image bytes
    pdq: list[str] = field(default_factory=list)       # PDQ hashes of images (`pipeline.pdq`)
    pdq_distance: Annotated[int, Between(0, 128)] = PDQ_DISTANCE      # bits (of 256) for a match
    pdq_min_quality: Annotated[int, Between(0, 100)] = PDQ_MIN_QUALITY   # lower-quality images never match

    def any(self, *kinds: str) -> bool:
        return any(getattr(self, kind) for kind in (kinds or KINDS))


def canonical_url(url: str) -> str:
    """Scheme and host lower-cased, the fragment dropped: the form URLs are matched in."""
    url = url.strip()
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user}@{host.lower()}"
    else:
        netloc = netloc.lower()
    query = f"?{parts.query}" if parts.query else ""
    return f"{parts.scheme.lower()}://{netloc}{parts.path}{query}"


def url_key(url: str) -> str:
    return hashlib.md5(canonical_url(url).encode("utf-8", "surrogatepass")).hexdigest()


def host_of(url: str) -> Optional[str]:
    try:
        host = urlsplit(url.strip()).hostname
    except ValueError:
        return None
    return host.rstrip(".").lower() if host else None


def domain_entry(value: str) -> str:
    return value.strip().lower().lstrip("*").lstrip(".").rstrip(".")


def under_blocked_domain(host: Optional[str], domains: set) -> bool:
    """The host, or a domain it is under (an IP address only as a whole), is listed."""
    if not host:
        return False
    if host in domains:
        return True
    if host.replace(".", "").isdigit() or ":" in host:
        return False
    labels = host.split(".")
    return any(".".join(labels[i:]) in domains for i in range(1, len(labels)))


def read_entries(path: str, kind: str, label: str = "blocklist") -> list[str]:
    """The entries of one list file (text or parquet), normalised; a bad file or entry is a
    one-line UserError naming `label.kind`, the file (and line)."""
    try:
        if path.endswith(".parquet"):
            values = parquet_column(path, kind, label)
            lines = [(i + 1, v) for i, v in enumerate(values) if v is not None]
        else:
            with storage.open_input(path) as stream:
                text = stream.read().decode("utf-8")
            lines = [(i + 1, line) for i, line in enumerate(text.splitlines())]
    except FileNotFoundError:
        raise UserError(f"{label}.{kind}: {path}: no such file") from None
    except UnicodeDecodeError:
        raise UserError(f"{label}.{kind}: {path}: not UTF-8 text (or name it .parquet)") from None
    except (OSError, pa.ArrowException) as error:
        raise UserError(f"{label}.{kind}: {path}: cannot be read ({error})") from None
    entries = []
    for number, line in lines:
        value = line.split("#", 1)[0].strip() if kind != "urls" else line.strip()
        if not value or value.startswith("#"):
            continue
        if kind in HEX:
            value = value.lower()
            if not HEX[kind].match(value):
                raise UserError(f"{label}.{kind}: {path}:{number}: not a {kind} hex digest: {value[:80]!r}")
        elif kind == "domains":
            value = domain_entry(value)
            if not value or "/" in value:
                raise UserError(f"{label}.domains: {path}:{number}: not a domain: {line.strip()[:80]!r}")
        elif not host_of(value):
            raise UserError(f"{label}.urls: {path}:{number}: not a URL with a host: {value[:80]!r}")
        entries.append(value)
    return entries


def parquet_column(path: str, kind: str, label: str = "blocklist") -> list:
    import pyarrow.parquet as pq

    with storage.open_input(path) as stream:
        table = pq.read_table(stream)
    names = [n for n in table.column_names if n.lower() in COLUMN_NAMES[kind]]
    if not names:
        names = [f.name for f in table.schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
        if len(names) != 1:
            raise UserError(f"{label}.{kind}: {path}: no column named {COLUMN_NAMES[kind][0]!r} "
                            f"and not exactly one text column ({table.column_names})")
    return table[names[0]].to_pylist()


def check(settings: Optional[BlocklistSettings]) -> None:
    """Read every list once on the driver: a bad file fails the run before any work."""
    for kind in KINDS:
        for path in getattr(settings, kind, None) or ():
            if kind == "pdq":
                read_pdq_file(path)
            else:
                read_entries(path, kind)


@dataclass
class Matcher:
    """The loaded lists of one worker."""
    urls: Optional[KeySet]
    domains: set
    md5: Optional[KeySet]
    sha256: Optional[KeySet]
    pdq: Optional[PdqIndex] = None
    pdq_distance: int = PDQ_DISTANCE
    pdq_min_quality: int = PDQ_MIN_QUALITY

    @classmethod
    def load(cls, settings: BlocklistSettings) -> "Matcher":
        def entries(kind: str) -> list[str]:
            return [e for path in getattr(settings, kind) for e in read_entries(path, kind)]

        def keys(kind: str, values: Iterable[str]) -> Optional[KeySet]:
            return KeySet(list(values)) if getattr(settings, kind) else None

        return cls(urls=keys("urls", (url_key(u) for u in entries("urls"))),
                   domains=set(entries("domains")),
                   md5=keys("md5", entries("md5")), sha256=keys("sha256", entries("sha256")),
                   pdq=PdqIndex(read_pdq_list(settings.pdq)) if settings.pdq else None,
                   pdq_distance=int(settings.pdq_distance), pdq_min_quality=int(settings.pdq_min_quality))

    def urls_blocked(self, urls: list) -> np.ndarray:
        """Per URL (or None): listed itself, or on a listed domain?"""
        found = np.zeros(len(urls), dtype=bool)
        if self.urls is not None and urls:
            found |= self.urls.contains([url_key(u) if u else None for u in urls])
        if self.domains:
            found |= np.array([bool(u) and under_blocked_domain(host_of(u), self.domains) for u in urls],
                              dtype=bool)
        return found

    def bytes_blocked(self, data: bytes) -> bool:
        """The original bytes' MD5 or SHA-256 is listed?"""
        if self.md5 is not None and self.md5.contains([hashlib.md5(data).hexdigest()])[0]:
            return True
        return self.sha256 is not None and bool(self.sha256.contains([hashlib.sha256(data).hexdigest()])[0])

    def image_blocked(self, pdq_hex: Optional[str], quality: Optional[int]) -> bool:
        """A listed PDQ hash is within `pdq_distance` bits of this image's (one of at least
        `pdq_min_quality`)?"""
        if self.pdq is None or pdq_hex is None or quality is None or quality < self.pdq_min_quality:
            return False
        return bool(self.pdq.matches([pdq_hex], self.pdq_distance)[0])

    @property
    def checks_bytes(self) -> bool:
        return self.md5 is not None or self.sha256 is not None

    @property
    def checks_pdq(self) -> bool:
        return self.pdq is not None


def matcher(settings: Optional[BlocklistSettings]) -> Optional[Matcher]:
    """This worker's matcher for `settings` (loaded once per process), or None without lists."""
    if settings is None or not settings.any():
        return None
    key = ("blocklist", settings.pdq_distance, settings.pdq_min_quality) + tuple(
        tuple(getattr(settings, kind)) for kind in KINDS)
    return built_once(key, lambda: Matcher.load(settings))
