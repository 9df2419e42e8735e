"""The application layer: composes sources, stages, engines, train and report into a run
(core below it never imports any of them)."""
from __future__ import annotations

import dataclasses
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow as pa

from pipeline import blocklist, datacard, stages, takedown
from pipeline.config import RunSettings
from pipeline.core import fingerprint, images, lease, parts, run_index, storage, uid_arrays
from pipeline.core.columns import ColumnPlan, plan_columns
from pipeline.core.steps import STEPS_FILE, Step, execute_step
from pipeline.core.tasks import LEDGER_SCHEMA, peak_rss_bytes
from pipeline.engines import make_engine
from pipeline.errors import UserError
from pipeline.stages.ingest import IngestStep, plan_input
from pipeline.stages.pool_embeddings import npz_path

TIMING_FILE = "timing.json"   # the run's wall time, finalize time, slots, driver memory (for `curate plan`)
UIDS_FILE = "uids.npy"        # the kept uids in DataComp's format (`core.uid_arrays`)
UID_PARTS = "_uids"           # the finalize tasks' sorted shares of it, merged into it, then removed

# Settings that change how a run is executed but never what it produces.
EXECUTION_ONLY = ("engine", "processes", "ray", "spark", "output", "source", "storage_options", "progress_interval")


def build_steps(settings, crawled: list[str] = (), planned=None) -> tuple[list[Step], ColumnPlan]:
    """Ingest, then each registered stage whose section is present, in registry order, and
    the plan of their columns (`core.columns`). The run's image transforms go to the steps
    that write images out; excluded runs' uids are dropped by ingest unless a step does."""
    steps = [stage.build_step(section, settings) for stage in stages.registered_stages()
             if (section := settings.section(stage.SECTION)) is not None]
    transforms = tuple(module.image_transform(section) for module in stages.registered_transforms()
                       if (section := settings.section(module.SECTION)) is not None)
    writers = [step for step in steps if step.writes_images]
    if transforms and not writers:
        able = " or ".join(m.SECTION for m in stages.registered_stages() if m.STAGE.writes_images)
        raise UserError(f"{transforms[0].name}: changes the images as a step writes them out; "
                        f"add a {able} section, or remove {transforms[0].name}")
    for step in writers:
        step.image_transforms = transforms
    ingest = IngestStep(settings.input, crawled,
                        [] if any(step.drops_earlier_uids for step in steps) else settings.exclude,
                        settings.blocklist, planned=planned)
    steps.insert(0, ingest)
    plan = plan_columns(steps, transforms)
    ingest.reserved = plan.added
    return steps, plan


def run_pipeline(settings: RunSettings, run_dir: str | Path, log=print,
                 allow_changed_input: bool = False) -> dict:
    """Run the pipeline into `run_dir` (resuming what an earlier attempt did there)."""
    with claimed(settings, run_dir, allow_changed_input, log) as claim:
        return execute(claim, log)


@dataclass
class Claim:
    """A run that holds its folder: checked settings, the absolute folder, the planned input."""
    settings: RunSettings
    run_dir: str
    planned: list   # the input's slices (sources.SourceSlice), every file checked


@contextmanager
def claimed(settings: RunSettings, run_dir: str | Path,
            allow_changed_input: bool = False, log=print) -> Iterator[Claim]:
    """The run, with its folder leased to this process for the block. Everything that can
    refuse the run (settings, input files, earlier runs, blocklists, another run in the
    folder, another config, a changed input) refuses before the folder changes."""
    storage.configure(settings.storage_options)
    run_dir = storage.absolute(run_dir)
    settings = in_one_process_for_memory(settings, run_dir)
    sourced = any(settings.section(module.SECTION) is not None for module in stages.registered_sources())
    planned = plan_input(settings.input, optional=sourced)
    settings = with_earlier_runs(settings, run_dir)
    settings = with_blocklists(settings)
    settings = with_uids_file(settings)
    build_steps(settings, planned=planned)   # every step's own checks (head files, transforms), read-only
    make_run_folder(run_dir)
    with lease.held(run_dir):
        check_same_config(settings, run_dir)
        takedown.refuse_rerun(run_dir)
        subset = [settings.input.uids] if settings.input.uids else []   # a changed uids.npy is a changed input
        embeddings = [npz_path(piece.path) for piece in planned] if settings.input.embeddings else []
        files = list(dict.fromkeys([piece.path for piece in planned] + subset + embeddings))
        for change in fingerprint.check_inputs(run_dir, files, allow_changed_input):
            log(f"warning: {change} (going on: --allow-changed-input)")
        yield Claim(settings, run_dir, planned)


def make_run_folder(run_dir: str) -> None:
    """The run folder exists and takes files (one line when it cannot)."""
    if not storage.is_local(run_dir):
        return
    path = storage.normalize(run_dir)
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{run_dir}: exists and is not a folder; choose another --output")
    try:
        storage.makedirs(run_dir)
    except OSError as exc:
        raise UserError(f"{run_dir}: cannot create the run folder ({exc.strerror or exc})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"{run_dir}: the run folder is not writable")


def execute(claim: Claim, log=print) -> dict:
    """Every step of a claimed run (`claimed`), then the summary, training and the report."""
    settings, run_dir = claim.settings, claim.run_dir
    started = time.perf_counter()
    with make_engine(settings) as engine:
        crawled = [path for module in stages.registered_sources()
                   if (section := settings.section(module.SECTION)) is not None
                   for path in module.run_source(section, settings, run_dir, engine, log)]
        steps, plan = build_steps(settings, crawled, claim.planned)
        storage.write_json({"steps": [step.name for step in steps]}, storage.join(run_dir, STEPS_FILE))
        inputs: list = []
        records = []
        for index, step in enumerate(steps):
            record = execute_step(step, engine, run_dir, index, settings.seed, inputs,
                                  settings.task_rows, settings.progress_interval)
            inputs = [dataclasses.replace(ref, hidden=plan.hidden[index])
                      for ref in parts.as_refs(record["parts"])]
            records.append(record)
            log(funnel_line(record))
            if "sources" in record:
                check_sources(record["sources"], settings.input.strict, log)
        finalizing = time.perf_counter()
        finalize(engine, run_dir, inputs, records)
        timing = {"seconds": round(time.perf_counter() - started, 3),
                  "finalize_seconds": round(time.perf_counter() - finalizing, 3),
                  "slots": engine.parallelism(), "engine": settings.engine,
                  "driver_peak_bytes": peak_rss_bytes()}
    summary = make_summary(records)
    storage.write_json(summary, storage.join(run_dir, "summary.json"))
    storage.write_json(timing, storage.join(run_dir, TIMING_FILE))
    if settings.section("train"):
        from pipeline.train import train

        result = train(settings.train, run_dir)
        summary["train"] = {k: result.get(k) for k in ("steps", "checkpoint", "samples_per_s")}
        if result.get("eval"):
            summary["train"]["top1"] = result["eval"]["top1"]
        storage.write_json(summary, storage.join(run_dir, "summary.json"))
    datacard.write_datacard(run_dir)
    write_report_quietly(run_dir, log)
    return summary


def in_one_process_for_memory(settings: RunSettings, run_dir: str) -> RunSettings:
    """`memory://` lives in one process: the local engine runs its tasks in this one."""
    if not run_dir.startswith("memory://"):
        return settings
    if settings.engine != "local":
        raise UserError(f"{run_dir}: memory:// is seen by one process only; use a local "
                        f"path or an object store with engine {settings.engine}")
    return dataclasses.replace(settings, processes=1)


def with_earlier_runs(settings: RunSettings, run_dir: str) -> RunSettings:
    """`exclude` as absolute paths (workers may start elsewhere), each checked to be a
    finished run before any work starts."""
    if not settings.exclude:
        return settings
    exclude = [storage.absolute(path) for path in settings.exclude]
    run_index.earlier_files(exclude, run_dir)
    return dataclasses.replace(settings, exclude=exclude)


def with_blocklists(settings: RunSettings) -> RunSettings:
    """The blocklist files as absolute paths, each read once here: a bad list fails the run
    before any work starts."""
    lists = settings.blocklist
    if not lists.any():
        return settings
    lists = dataclasses.replace(lists, **{kind: [storage.absolute(p) for p in getattr(lists, kind)]
                                          for kind in blocklist.KINDS})
    blocklist.check(lists)
    return dataclasses.replace(settings, blocklist=lists)


def with_uids_file(settings: RunSettings) -> RunSettings:
    """`input.uids` as an absolute path, its file checked (read in blocks) before any work."""
    if not settings.input.uids:
        return settings
    path = storage.absolute(settings.input.uids)
    uid_arrays.check_file(path)
    return dataclasses.replace(settings, input=dataclasses.replace(settings.input, uids=path))


def write_report_quietly(run_dir: str, log) -> None:
    """Every run writes report.html (a report problem never fails the run)."""
    try:
        from pipeline.report import write_report
    except ImportError:
        return
    try:
        write_report(run_dir)
    except Exception as exc:  # noqa: BLE001 - the data is written; the report is a view of it
        log(f"report: not written ({type(exc).__name__}: {exc}); rerun `curate report {run_dir}`")


def funnel_line(record: dict) -> str:
    drops = ", ".join(f"{k} {v}" for k, v in record["dropped"].items()) or "none dropped"
    return (f"{record['name']:>15}: {record['rows_in']:>10,} -> {record['rows_out']:>10,} rows"
            f"  ({drops})  {record['seconds']:.1f}s")


def check_same_config(settings: RunSettings, run_dir: str) -> None:
    """A run folder belongs to one config: resuming with another would mix results."""
    current = {k: v for k, v in dataclasses.asdict(settings).items() if k not in EXECUTION_ONLY}
    path = storage.join(run_dir, "config.json")
    previous = storage.read_marker(path)
    if previous is not None:
        current = storage.json_roundtrip(current)
        defaults = {k: v for k, v in default_settings(settings).items() if k not in EXECUTION_ONLY}
        previous = with_defaults(previous, storage.json_roundtrip(defaults))
        changed = sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))
        if changed:
            raise UserError(f"{run_dir}: holds a run of a different config (changed: "
                            f"{', '.join(changed)}); use another --output or delete it")
    else:
        storage.write_json(current, path)


def default_settings(settings: RunSettings) -> dict:
    """Every key's default, sections included (a section's dataclass built bare)."""
    defaults = {}
    for item in dataclasses.fields(settings):
        value = getattr(settings, item.name)
        if dataclasses.is_dataclass(value):
            defaults[item.name] = dataclasses.asdict(type(value)())
        elif item.default is not dataclasses.MISSING:
            defaults[item.name] = item.default
        elif item.default_factory is not dataclasses.MISSING:
            defaults[item.name] = item.default_factory()
    return defaults


def with_defaults(previous: dict, defaults: dict) -> dict:
    """A config.json written before some keys existed, read as if it had their defaults
    (so a run folder of an earlier version resumes, unless a key it knew has changed)."""
    filled = dict(previous)
    for key, default in defaults.items():
        if key not in filled:
            filled[key] = default
        elif isinstance(filled[key], dict) and isinstance(default, dict):
            filled[key] = {**default, **filled[key]}
    return filled


def check_sources(sources: list[dict], strict: bool, log) -> None:
    """An input file that yields no rows is a warning (an error with `input.strict`): a
    whole archive read as nothing must not pass unnoticed."""
    empty = [s for s in sources if not s["rows"]]
    for source in empty:
        log(f"warning: {source['path']}: yielded no rows{empty_detail(source)}")
    if empty and strict:
        more = f" (and {len(empty) - 1} more input file(s))" if len(empty) > 1 else ""
        raise UserError(f"{empty[0]['path']}: yielded no rows{empty_detail(empty[0])}{more}; "
                        f"input.strict is set")


def empty_detail(source: dict) -> str:
    """What an input file held, for the message: the reader's counts but `rows`."""
    counts = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in source.items()
                       if k not in ("path", "format", "rows") and isinstance(v, int))
    return f" ({counts})" if counts else ""


def make_summary(records: list[dict]) -> dict:
    """The funnel (DESIGN.md's contract); a step that records a `summary` (a table of its
    own) adds it to its stage as `details`."""
    stages = [{**{k: r[k] for k in ("name", "rows_in", "rows_out", "dropped", "seconds")},
               **({"details": r["summary"]} if r.get("summary") else {})} for r in records]
    sources = [s for r in records for s in r.get("sources", [])]
    return {"input_rows": stages[0]["rows_in"], "kept_rows": stages[-1]["rows_out"],
            "stages": stages, "sources": sources,
            "warnings": [f"{s['path']}: yielded no rows{empty_detail(s)}" for s in sources if not s["rows"]]}


def finalize(engine, run_dir: str, final_parts: list, records: list[dict]) -> None:
    """Write `kept/`, `ledger/` and `index/` (what a later run excludes), each committed
    whole (a folder renamed into place, or on an object store marked `_SUCCESS` once every
    file is written), then `uids.npy` from the tasks' sorted shares."""
    shares = storage.join(run_dir, UID_PARTS)
    with storage.committing_folder(storage.join(run_dir, "kept")) as kept, \
            storage.committing_folder(storage.join(run_dir, "ledger")) as ledger, \
            storage.committing_folder(storage.join(run_dir, run_index.INDEX)) as index:
        counts = write_kept_and_ledger(engine, kept, ledger, index, final_parts, records, shares)
    write_uids(run_dir, [uid_share(shares, i) for i in range(len(counts))], counts)
    if storage.is_local(shares):
        storage.remove(shares)
    else:
        for i in range(len(counts)):
            storage.remove(uid_share(shares, i))


def uid_share(folder: str, part: int) -> str:
    return storage.join(folder, f"part-{part:05d}.u8u8")


def write_uids(run_dir: str, shares: list[str], counts: list[int]) -> int:
    """`uids.npy`: the shares merged (k-way) and written in order, committed whole; the driver
    holds blocks of the shares (`uid_arrays.MERGE_ROWS`), never every uid."""
    with storage.committing(storage.join(run_dir, UIDS_FILE)) as tmp, \
            uid_arrays.local_files(shares) as local:
        return uid_arrays.merge_parts(local, counts, str(tmp))


def write_kept_and_ledger(engine, kept: storage.Folder, ledger: storage.Folder, index: storage.Folder,
                          final_parts: list, records: list[dict], shares: str) -> list[int]:
    """Returns how many uids each task's share of `uids.npy` holds."""
    final_parts = parts.as_refs(final_parts)
    schema = unified_schema(final_parts)
    jobs = [(p, storage.join(kept.path, f"part-{i:05d}.parquet"),
             storage.join(ledger.path, f"kept-{i:05d}.parquet"),
             storage.join(index.path, f"part-{i:05d}.parquet"), schema, uid_share(shares, i))
            for i, p in enumerate(final_parts)]
    counts = []
    for kept_size, ledger_size, index_size, uids in engine.map(finalize_part, jobs):
        kept.files.update([kept_size])
        ledger.files.update([ledger_size])
        index.files.update([index_size])
        counts.append(uids)
    for record in records:
        for path in record["dropped_files"]:
            pieces = path.split("/")
            target = f"{pieces[-4]}-{pieces[-3]}-{pieces[-1]}"   # <step>-<phase>-part-N.parquet
            storage.link_or_copy(path, storage.join(ledger.path, target))
            ledger.files[target] = storage.size(path)
    return counts


def unified_schema(refs: list) -> pa.Schema:
    """The kept rows' columns; `jpg` when their images are referenced (no step wrote them out)."""
    schemas = [parts.read_schema(r) for r in refs]
    if any(images.IMAGE_FILE in s.names for s in schemas):
        schemas.append(pa.schema([(images.IMAGE, pa.binary())]))
    merged = parts.unify_schemas(schemas)
    return pa.schema([f for f in merged if not f.name.startswith(parts.INTERNAL_PREFIX)])


def finalize_part(job) -> tuple:
    """Write one kept part, its ledger rows, its index rows and its sorted share of uids.npy;
    returns each parquet file's (name, size) and how many uids the share holds."""
    ref, kept_path, ledger_path, index_path, schema, share_path = job
    table = images.attach_images(parts.read_ref(ref))
    index = run_index.index_table(table)
    table = parts.public_columns(table)
    table = table.select([n for n in schema.names if n in table.column_names])
    table = parts.conform(table, schema)
    parts.write_parquet(index, index_path)
    parts.write_parquet(table, kept_path)
    ledger = pa.table({"uid": table["uid"], "url": table["url"],
                       "stage": pa.array(["kept"] * table.num_rows, pa.string()),
                       "reason": pa.array(["kept"] * table.num_rows, pa.string()),
                       "detail": pa.nulls(table.num_rows, pa.string())},
                      schema=LEDGER_SCHEMA)
    parts.write_parquet(ledger, ledger_path)
    uids = uid_arrays.write_part(table["uid"], share_path)
    return (*((storage.name(path), storage.size(path)) for path in (kept_path, ledger_path, index_path)), uids)
