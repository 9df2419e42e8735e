"""download: fetch, guard, resize and encode each row's image with img2dataset.

The stage drives img2dataset's own `download_image` (urllib fetch + X-Robots-Tag opt-out) on
a thread pool and its `Resizer` (OpenCV resize + encode) in the consuming thread, as
img2dataset's `Downloader.download_shard` does, minus its file writers. `urlopen` goes
through the guarded opener of `pipeline.download.safe_fetch` (schemes, addresses, redirects,
byte cap, per-image deadline), and a PIL header check refuses decompression bombs before
OpenCV decodes anything. Rows whose failure is transient (timeout, reset, 429, 5xx) are
retried in later passes with backoff; 4xx, opt-outs and blocked fetches never are.

Stragglers: a task starts no fetch after its deadline, the smaller of `task_deadline` seconds
and `straggler_factor` x its rows x the median seconds per row of the tasks this worker ran
before (the first task of a worker has only `task_deadline`; the stragglers that hold a step
start late, when every worker has a history; tasks of deferred rows keep only `task_deadline`).
Its first `threads` rows are always started, so
every task makes progress. The rows it did not reach are deferred, and the step runs them as
smaller tasks spread over the workers (`core.steps.run_continued`), so one slow host cannot
hold the step, and the result is the same. A row fetched in the rare race with the deadline
and after a deferred one is deferred too (fetched again later): deferred rows are the last ones.

Adds `jpg` (binary), `width, height, original_width, original_height` (int32), `sha256`
(hex of `jpg`) and `_reason` (null = kept). With `exclude` (the run's earlier run folders), an
image whose sha256 one of them holds is dropped as `in_earlier_run` in the task that fetched
it, so its bytes are never stored (the earlier sha256s are loaded once per worker from their
indexes, `core.run_index`: 16 bytes per earlier image). An image whose original bytes' MD5 or
SHA-256 is on a `blocklist` goes as `blocklisted` right after the fetch, never decoded or stored.

PDQ: with `pdq: true` (the default) every image's original bytes (decoded, before the resize)
are PDQ-hashed (`pipeline.pdq`): `pdq` (64 hex digits) and `pdq_quality` (0-100) go with the
row into `kept/` and the run's index, so later lists can be checked against the release
without downloading again. With `blocklist.pdq` lists (which hash whatever `pdq` says), an
image within `blocklist.pdq_distance` bits of a listed hash goes as `blocklisted` before it is
resized or stored (one under `blocklist.pdq_min_quality` is never matched).
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import statistics
import time
from dataclasses import dataclass, field
from multiprocessing.pool import ThreadPool
from threading import Semaphore
from typing import Annotated, Any, Literal, Optional

import pyarrow as pa

from pipeline import blocklist, pdq
from pipeline.core.constraints import Above, AtLeast, Between
from pipeline.core.run_index import KeySet, earlier_files, matched_reasons
from pipeline.core.stage import DEFERRED, REASON, Resources, Stage, set_column, with_reason
from pipeline.core.steps import Step
from pipeline.download.reasons import (
    DECODE_ERROR,
    IMAGE_TOO_LARGE,
    classify_error,
    classify_message,
    is_transient,
)
from pipeline.download.safe_fetch import FetchPolicy, install_guarded_opener

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations phones home on import

SECTION = "download"


@dataclass
class DownloadSettings:
    """The download stage's settings and the one place of their defaults."""
    image_size: Annotated[int, AtLeast(1)] = 256
    processes: Annotated[int, AtLeast(1)] = 2    # kept for the contract; workers come from the engine
    threads: Annotated[int, AtLeast(1)] = 64
    timeout: Annotated[float, Above(0)] = 10.0
    retries: Annotated[int, AtLeast(0)] = 1
    max_bytes: Annotated[int, AtLeast(1)] = 20_000_000
    max_redirects: Annotated[int, AtLeast(0)] = 5
    max_pixels: Annotated[int, AtLeast(1)] = 89_478_485   # PIL's Image.MAX_IMAGE_PIXELS
    resize_mode: Literal["no", "keep_ratio", "center_crop", "border", "keep_ratio_largest"] = "center_crop"
    resize_only_if_bigger: bool = False
    encode_quality: Annotated[int, Between(1, 100)] = 95
    deadline: Optional[Annotated[float, Above(0)]] = None   # seconds per image, all hops and bytes; default `timeout`
    retry_backoff: Annotated[float, AtLeast(0)] = 1.0
    user_agent_token: Optional[str] = None
    disallowed_header_directives: list[str] = field(
        default_factory=lambda: ["noai", "noimageai", "noindex", "noimageindex"])
    part_rows: Annotated[int, AtLeast(1)] = 10_000   # rows per download task (and per image part)
    task_deadline: Optional[Annotated[float, Above(0)]] = 600.0   # seconds; then the task's unstarted rows go on
                                         # as smaller tasks (null: no fixed deadline)
    straggler_factor: Optional[Annotated[float, Above(0)]] = 1.5  # x the worker's median time for this many rows
                                         # (null: no adaptive deadline)
    pdq: bool = True    # PDQ-hash every image (its original bytes); always with `blocklist.pdq` lists
    enabled: bool = True


SETTINGS = DownloadSettings


DEFAULTS = {**{k: v for k, v in dataclasses.asdict(DownloadSettings()).items()
               if k not in ("enabled", "part_rows", "processes")}, "allow_networks": (), "exclude": (),
            "blocklist": None}
OUTPUT_SCHEMA = pa.schema([
    ("jpg", pa.binary()), ("width", pa.int32()), ("height", pa.int32()),
    ("original_width", pa.int32()), ("original_height", pa.int32()), ("sha256", pa.string()),
    ("pdq", pa.string()), ("pdq_quality", pa.int32()),
])


@dataclass
class Outcome:
    """What happened to one row: an encoded image, or a drop reason."""

    reason: str | None = None
    jpg: bytes | None = None
    width: int | None = None
    height: int | None = None
    original_width: int | None = None
    original_height: int | None = None
    pdq: str | None = None              # of the original bytes (decoded)
    pdq_quality: int | None = None

    @property
    def sha256(self) -> str | None:
        return None if self.jpg is None else hashlib.sha256(self.jpg).hexdigest()


def read_options(settings: Any, allow_networks=None) -> dict[str, Any]:
    """Settings as a dict with every option; accepts a dataclass, dict, namespace or None."""
    def get(key):
        if isinstance(settings, dict):
            return settings.get(key, DEFAULTS[key])
        return getattr(settings, key, DEFAULTS[key])

    options = {key: get(key) for key in DEFAULTS}
    if allow_networks is not None:
        options["allow_networks"] = allow_networks
    options["allow_networks"] = tuple(options["allow_networks"] or ())
    options["exclude"] = tuple(options["exclude"] or ())
    return options


def header_check(stream: io.BytesIO, max_pixels: int) -> str | None:
    """Read only the image header: refuse undecodable data and decompression bombs.

    PIL itself refuses more than 2 * Image.MAX_IMAGE_PIXELS, so larger caps act as that.
    """
    from PIL import Image

    try:
        with Image.open(stream) as image:
            width, height = image.size
    except Image.DecompressionBombError:
        return IMAGE_TOO_LARGE
    except Exception:  # pylint: disable=broad-except
        return DECODE_ERROR
    finally:
        stream.seek(0)
    return IMAGE_TOO_LARGE if width * height > max_pixels else None


class DownloadStage(Stage):
    name = "download"
    withheld_reasons = frozenset({blocklist.BLOCKLISTED})
    label = "download"
    filters = False
    inputs = ("url",)
    outputs = tuple((f.name, f.type) for f in OUTPUT_SCHEMA)
    resources = Resources(cpus=1.0)

    def __init__(self, settings: Any = None, seed: int = 0, allow_networks=None):
        super().__init__(settings, seed)
        self.options = read_options(settings, allow_networks)
        self._resizer = None
        self._seconds_per_row: list[float] = []   # of this worker's earlier tasks
        self._earlier: Optional[KeySet] = None    # sha256s of the excluded runs, once per worker

    @classmethod
    def rest_settings(cls, settings: Any) -> Any:
        """Deferred rows are already spread over the workers: their tasks keep only the fixed
        `task_deadline` (an adaptive one would cut them again into ever smaller tasks)."""
        return {**read_options(settings), "straggler_factor": None}

    def policy(self) -> FetchPolicy:
        opts = self.options
        return FetchPolicy(allow_networks=opts["allow_networks"], max_bytes=int(opts["max_bytes"]),
                           deadline_s=float(opts["deadline"] or opts["timeout"]),
                           max_redirects=int(opts["max_redirects"]))

    def setup(self) -> None:
        from img2dataset.resizer import Resizer

        opts = self.options
        self._resizer = Resizer(image_size=opts["image_size"], resize_mode=opts["resize_mode"],
                                resize_only_if_bigger=opts["resize_only_if_bigger"],
                                encode_quality=opts["encode_quality"], encode_format="jpg")
        install_guarded_opener(self.policy())

    def process(self, table: pa.Table) -> pa.Table:
        self.setup()  # cheap; reinstalls the guarded opener in case another stage replaced it
        started = time.monotonic()
        urls = table.column("url").to_pylist()
        earlier = table.column(REASON).to_pylist() if REASON in table.column_names else [None] * len(urls)
        todo = [i for i, reason in enumerate(earlier) if reason is None]
        deadline = self.deadline(len(todo))
        outcomes = self.download_rows(urls, todo, None if deadline is None else started + deadline)
        rest = min((i for i, o in outcomes.items() if o.reason == DEFERRED), default=len(urls))
        reached = sum(1 for i in todo if i < rest)
        if reached:
            self._seconds_per_row.append((time.monotonic() - started) / reached)
        if rest < len(urls) and REASON in table.column_names:   # deferred: all rows from `rest` on
            table = table.drop_columns([REASON]).append_column(
                REASON, pa.array(earlier[:rest] + [None] * (len(urls) - rest), pa.string()))
        table = attach_outcomes(table, [Outcome(DEFERRED) if i >= rest else outcomes.get(i, Outcome())
                                        for i in range(len(urls))])
        return self.drop_earlier(table)

    def drop_earlier(self, table: pa.Table) -> pa.Table:
        """Images an excluded run holds (by sha256) go as `in_earlier_run`, before storing."""
        if not self.options["exclude"]:
            return table
        if self._earlier is None:
            self._earlier = KeySet.of_files(earlier_files(self.options["exclude"]), "sha256")
        return with_reason(table, matched_reasons(self._earlier.contains(table["sha256"])))

    def deadline(self, rows: int) -> Optional[float]:
        """Seconds this task may start fetches for (see the module's docstring); None: no limit."""
        limits = [float(self.options["task_deadline"])] if self.options["task_deadline"] else []
        factor = self.options["straggler_factor"]
        if factor and self._seconds_per_row:
            limits.append(float(factor) * rows * statistics.median(self._seconds_per_row))
        return min(limits, default=None)

    def download_rows(self, urls: list, indices: list[int], stop_at: Optional[float] = None) -> dict[int, Outcome]:
        """First pass over every row (none started after `stop_at`, see the module's
        docstring), then `retries` passes over the transient failures among those reached."""
        outcomes = self._one_pass(urls, indices, stop_at)
        deferred = [i for i in indices if outcomes[i].reason == DEFERRED]
        reached = indices[:indices.index(deferred[0])] if deferred else list(indices)
        outcomes.update({i: Outcome(DEFERRED) for i in indices[len(reached):]})
        pending = [i for i in reached if is_transient(outcomes[i].reason)]
        for attempt in range(1, int(self.options["retries"]) + 1):
            if not pending:
                break
            time.sleep(float(self.options["retry_backoff"]) * 2 ** (attempt - 1))
            outcomes.update(self._one_pass(urls, pending))
            pending = [i for i in pending if is_transient(outcomes[i].reason)]
        return outcomes

    def _one_pass(self, urls: list, indices: list[int], stop_at: Optional[float] = None) -> dict[int, Outcome]:
        if not indices:
            return {}
        threads = max(1, min(int(self.options["threads"]), len(indices)))
        semaphore = Semaphore(threads * 2)  # as img2dataset: bound fetched-but-not-resized images
        always = set(indices[:threads])     # reached whatever the deadline: every task progresses

        def rows():
            for i in indices:
                semaphore.acquire()  # pylint: disable=consider-using-with
                yield i, urls[i] or ""

        def fetch(row):
            if stop_at is not None and row[0] not in always and time.monotonic() >= stop_at:
                return row[0], None, DEFERRED
            return self._fetch(row)

        outcomes = {}
        with ThreadPool(threads) as pool:
            for key, stream, error in pool.imap_unordered(fetch, rows()):
                try:
                    outcomes[key] = self._finish(stream, error)
                except Exception as err:  # pylint: disable=broad-except  # a bad row never crashes the run
                    outcomes[key] = Outcome(reason=classify_error(err, default=DECODE_ERROR))
                finally:
                    semaphore.release()
        return outcomes

    def _fetch(self, row):
        from img2dataset.downloader import download_image

        opts = self.options
        directives = {d.strip().lower() for d in opts["disallowed_header_directives"] or ()} or None
        token = opts["user_agent_token"]
        return download_image(row, timeout=opts["timeout"], disallowed_header_directives=directives,
                              user_agent_token=token.strip().lower() if token else None)

    def _finish(self, stream: io.BytesIO | None, error: str | None) -> Outcome:
        if error == DEFERRED:
            return Outcome(reason=DEFERRED)
        if error is not None or stream is None:
            return Outcome(reason=classify_message(error or ""))
        try:
            blocked = blocklist.matcher(self.options["blocklist"])
            if blocked is not None and blocked.checks_bytes and blocked.bytes_blocked(stream.getvalue()):
                return Outcome(reason=blocklist.BLOCKLISTED)   # never decoded, never stored
            refused = header_check(stream, int(self.options["max_pixels"]))
            if refused:
                return Outcome(reason=refused)
            hashed, quality = None, None
            if self.options["pdq"] or (blocked is not None and blocked.checks_pdq):
                hashed, quality = pdq.hash_image(stream.getvalue())
                if blocked is not None and blocked.image_blocked(hashed, quality):
                    return Outcome(reason=blocklist.BLOCKLISTED)   # never resized, never stored
            jpg, width, height, original_width, original_height, error = self._resizer(stream)
        finally:
            stream.close()
        if error is not None:
            return Outcome(reason=classify_message(error, default=DECODE_ERROR))
        return Outcome(None, jpg, width, height, original_width, original_height, hashed, quality)


def attach_outcomes(table: pa.Table, outcomes: list[Outcome]) -> pa.Table:
    columns = {
        "jpg": [o.jpg for o in outcomes],
        "width": [o.width for o in outcomes],
        "height": [o.height for o in outcomes],
        "original_width": [o.original_width for o in outcomes],
        "original_height": [o.original_height for o in outcomes],
        "sha256": [o.sha256 for o in outcomes],
        "pdq": [o.pdq for o in outcomes],
        "pdq_quality": [o.pdq_quality for o in outcomes],
    }
    for column in OUTPUT_SCHEMA:
        table = set_column(table, column.name, pa.array(columns[column.name], type=column.type))
    return with_reason(table, pa.array([o.reason for o in outcomes], type=pa.string()))


def build_step(settings: DownloadSettings, run) -> Step:
    """Tasks of `part_rows` rows; the stage gets its options and the run's `allow_networks`
    and `exclude`, and the hash blocklists."""
    options = {k: v for k, v in dataclasses.asdict(settings).items() if k not in ("enabled", "part_rows")}
    lists = run.blocklist if run.blocklist.any("md5", "sha256", "pdq") else None
    return Step(DownloadStage, {**options, "allow_networks": list(run.allow_networks),
                                "exclude": list(run.exclude), "blocklist": lists},
                rows_per_task=settings.part_rows)


STAGE = DownloadStage
