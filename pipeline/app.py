"""The application layer: composes sources, stages, engines, train and report into a run
(core below it never imports any of them)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core import images, parts, storage
from pipeline.config import RunSettings
from pipeline.stages import STAGES
from pipeline.stages.ingest import IngestStep
from pipeline.core.steps import Step, execute_step
from pipeline.core.tasks import LEDGER_SCHEMA
from pipeline.engines import make_engine
from pipeline.errors import UserError

# Settings that change how a run is executed but never what it produces.
EXECUTION_ONLY = ("engine", "processes", "ray", "spark", "output", "source")


def build_steps(settings, crawled: list[str] = ()) -> list[Step]:
    """Ingest, then each registered stage whose section is present, in registry order."""
    steps: list[Step] = [IngestStep(settings.input, crawled)]
    for stage in STAGES:
        section = settings.section(stage.SECTION)
        if section is not None:
            steps.append(stage.build_step(section, settings))
    return steps


def run_pipeline(settings: RunSettings, run_dir: str | Path, log=print) -> dict:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    check_same_config(settings, run_dir)
    crawled = []
    if settings.section("crawl"):
        from pipeline.stages.crawl_step import run_crawl

        crawled.append(run_crawl(settings.crawl, settings.allow_networks, run_dir, log))
    steps = build_steps(settings, crawled)
    with make_engine(settings) as engine:
        inputs: list = []
        records = []
        for index, step in enumerate(steps):
            record = execute_step(step, engine, run_dir, index, settings.seed, inputs,
                                  settings.task_rows)
            inputs = record["parts"]
            records.append(record)
            log(funnel_line(record))
        finalize(engine, run_dir, inputs, records)
    summary = make_summary(records)
    storage.write_json(summary, run_dir / "summary.json")
    if settings.section("train"):
        from pipeline.train import train

        result = train(settings.train, run_dir)
        summary["train"] = {k: result.get(k) for k in ("steps", "checkpoint", "samples_per_s")}
        if result.get("eval"):
            summary["train"]["top1"] = result["eval"]["top1"]
        storage.write_json(summary, run_dir / "summary.json")
    write_report_quietly(run_dir, log)
    return summary


def write_report_quietly(run_dir: Path, log) -> None:
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


def check_same_config(settings: RunSettings, run_dir: Path) -> None:
    """A run folder belongs to one config: resuming with another would mix results."""
    current = {k: v for k, v in dataclasses.asdict(settings).items() if k not in EXECUTION_ONLY}
    path = run_dir / "config.json"
    if path.exists():
        previous = storage.read_json(path)
        if previous != storage.json_roundtrip(current):
            changed = sorted(k for k in set(previous) | set(current)
                             if previous.get(k) != storage.json_roundtrip(current).get(k))
            raise UserError(f"{run_dir}: holds a run of a different config (changed: "
                            f"{', '.join(changed)}); use another --output or delete it")
    else:
        storage.write_json(current, path)


def make_summary(records: list[dict]) -> dict:
    stages = [{k: r[k] for k in ("name", "rows_in", "rows_out", "dropped", "seconds")}
              for r in records]
    return {"input_rows": stages[0]["rows_in"], "kept_rows": stages[-1]["rows_out"],
            "stages": stages}


def finalize(engine, run_dir: Path, final_parts: list, records: list[dict]) -> None:
    """Write `kept/` and `ledger/`, each committed whole (built under a temporary name)."""
    for name in ("kept", "ledger"):
        storage.remove_stale_temporaries(run_dir / name)
    with storage.committing(run_dir / "kept") as kept_tmp, storage.committing(run_dir / "ledger") as ledger_tmp:
        kept_tmp.mkdir()
        ledger_tmp.mkdir()
        write_kept_and_ledger(engine, kept_tmp, ledger_tmp, final_parts, records)


def write_kept_and_ledger(engine, kept_tmp: Path, ledger_tmp: Path, final_parts: list,
                          records: list[dict]) -> None:
    final_parts = parts.as_refs(final_parts)
    schema = unified_schema(final_parts)
    jobs = [(p, str(kept_tmp / f"part-{i:05d}.parquet"), str(ledger_tmp / f"kept-{i:05d}.parquet"),
             schema) for i, p in enumerate(final_parts)]
    engine.map(finalize_part, jobs)
    for record in records:
        for path in record["dropped_files"]:
            if pq.read_metadata(path).num_rows:
                step, phase = Path(path).parts[-4], Path(path).parts[-3]
                storage.link_or_copy(path, ledger_tmp / f"{step}-{phase}-{Path(path).name}")


def unified_schema(refs: list) -> pa.Schema:
    """The kept rows' columns; `jpg` when their images are referenced (no shard step took them)."""
    schemas = [parts.read_schema(r) for r in refs]
    if any(images.IMAGE_FILE in s.names for s in schemas):
        schemas.append(pa.schema([(images.IMAGE, pa.binary())]))
    merged = parts.unify_schemas(schemas)
    return pa.schema([f for f in merged if not f.name.startswith(parts.INTERNAL_PREFIX)])


def finalize_part(job) -> int:
    ref, kept_path, ledger_path, schema = job
    table = parts.public_columns(images.attach_images(parts.read_ref(ref)))
    table = table.select([n for n in schema.names if n in table.column_names])
    table = parts.conform(table, schema)
    parts.write_parquet(table, kept_path)
    ledger = pa.table({"uid": table["uid"], "url": table["url"],
                       "stage": pa.array(["kept"] * table.num_rows, pa.string()),
                       "reason": pa.array(["kept"] * table.num_rows, pa.string())},
                      schema=LEDGER_SCHEMA)
    parts.write_parquet(ledger, ledger_path)
    return table.num_rows
