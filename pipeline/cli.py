"""The `curate` command line (the contract in the README's Running section)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.errors import UserError


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status. SIGTERM and SIGINT stop it in order (its
    engine's workers ended, one line on stderr) with status 143 and 130."""
    from pipeline.core.stopping import stop_on_signals

    parser = build_parser()
    args = parser.parse_args(argv)
    with stop_on_signals() as signals:   # on while a stop is reported: a second signal exits at once
        try:
            return args.handler(args) or 0
        except KeyboardInterrupt as exc:   # a stop signal (SIGTERM, SIGINT) or Ctrl-C
            return _report_stop(signals.stopped_by(exc))
        except Exception as exc:
            if signals.received is not None:
                # failed on the way out of a stop (Spark's JVM, in the same process group,
                # took the Ctrl-C too and went while its driver was still talking to it)
                return _report_stop(signals.stopped_by(None))
            if isinstance(exc, UserError):
                print(f"curate: error: {exc}", file=sys.stderr)
                return 2
            raise


def _report_stop(stop) -> int:
    """One line for a stopped command; its exit status (128 + the signal's number)."""
    print(stop.message, file=sys.stderr, flush=True)
    return stop.exit_status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="curate", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run a pipeline config (or a preset)")
    run.add_argument("config", nargs="?", help="the config (optional with --preset)")
    run.add_argument("--engine", choices=["local", "ray", "spark"])
    run.add_argument("--output")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    run.add_argument("--allow-changed-input", action="store_true",
                     help="resume although an input file changed since the run began")
    preset = run.add_argument_group("presets", "a named filter (curate presets lists them) on a pool")
    preset.add_argument("--preset", help="e.g. datacomp:basic_filter")
    preset.add_argument("--input", action="append", default=[], help="the pool (files, folders or globs)")
    preset.add_argument("--threshold", type=float, help="clip_score: keep scores at least this")
    preset.add_argument("--fraction", type=float, help="clip_score: keep this top fraction of the pool")
    preset.add_argument("--arch", choices=["b32", "l14"], help="clip_score: whose precomputed score (default l14)")
    preset.add_argument("--entities", help="text_based: ImageNet-21k WordNet ids, one per line (n02084071)")
    preset.add_argument("--centroids", help="image_based: the pool's k-means centroids (.npy/.pt)")
    preset.add_argument("--targets", help="image_based: target image embeddings (.npy/.pt)")
    run.set_defaults(handler=cmd_run)

    presets = commands.add_parser("presets", help="the named presets and what each expands to")
    presets.set_defaults(handler=cmd_presets)

    demo = commands.add_parser("demo", help="the main job, offline, on the embedded engine")
    demo.add_argument("--output", default="runs/demo")
    demo.add_argument("--rows", type=int, default=3000, help="images in the fake web")
    demo.add_argument("--steps", type=int, default=150, help="training steps of each model")
    demo.add_argument("--ablate", action="store_true",
                      help="also train without each filter in turn; the report gets an Ablation table")
    demo.set_defaults(handler=cmd_demo)

    train = commands.add_parser("train", help="train on existing shards (the config's train section)")
    train.add_argument("config")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    train.set_defaults(handler=cmd_train)

    report = commands.add_parser("report", help="(re)write RUN_DIR/report.html (partial while a run is unfinished)")
    report.add_argument("run_dir")
    report.set_defaults(handler=cmd_report)

    status = commands.add_parser("status", help="where a run stands: running, stopped or finished, local or bucket")
    status.add_argument("run_dir")
    status.add_argument("--json", action="store_true", help="as JSON (schemas/status.schema.json)")
    status.set_defaults(handler=cmd_status)

    plan = commands.add_parser("plan", help="predict a run's cost from a finished small run")
    plan.add_argument("config")
    plan.add_argument("--rows", type=int, required=True, help="input rows to plan for")
    plan.add_argument("--calibrate", required=True, metavar="RUN_DIR",
                      help="a finished run of the same stages on a sample")
    plan.add_argument("--cluster", help="nodes=8,cpus=32,gpus=1 (default: the calibration's slots)")
    plan.add_argument("--json", action="store_true")
    plan.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    plan.set_defaults(handler=cmd_plan)

    index = commands.add_parser("index", help="build a faiss index of a run's image embeddings "
                                              "(clip_score.keep_embeddings)")
    index.add_argument("run_dir")
    index.set_defaults(handler=cmd_index)

    search = commands.add_parser("search", help="a run's images nearest to a text query")
    search.add_argument("run_dir")
    search.add_argument("query")
    search.add_argument("-k", type=int, default=10, help="how many results (default 10)")
    search.add_argument("--device", default="cpu", help="where the query is embedded (default cpu)")
    search.set_defaults(handler=cmd_search)

    takedown = commands.add_parser("takedown", help="remove listed samples from finished runs' tars (releases.md)")
    takedown.add_argument("runs", nargs="+", metavar="RUN_DIR")
    takedown.add_argument("--list", action="append", required=True, dest="lists", metavar="[KIND:]FILE",
                          help="urls:, uids:, sha256:, md5: or pdq: a list file (repeatable)")
    takedown.add_argument("--pdq-distance", type=int, default=31, help="bits (of 256) for a PDQ match (default 31)")
    takedown.set_defaults(handler=cmd_takedown)

    diff = commands.add_parser("diff", help="what changed between two releases")
    diff.add_argument("run_a")
    diff.add_argument("run_b")
    diff.add_argument("--json", action="store_true")
    diff.set_defaults(handler=cmd_diff)

    metadata = commands.add_parser("metadata", help="query entries")
    meta_commands = metadata.add_subparsers(dest="metadata_command", required=True)
    build = meta_commands.add_parser("build", help="write the entry list to a JSON file")
    build.add_argument("--sources", nargs="+", default=["wordnet", "wordfreq"])
    build.add_argument("--wordfreq-top", type=int, default=1_000_000)
    build.add_argument("--output", required=True)
    build.set_defaults(handler=cmd_metadata_build)
    return parser


def cmd_run(args) -> int:
    from pipeline.app import claimed, execute
    from pipeline.run_log import run_log

    settings = _run_settings(args)
    with claimed(settings, settings.output, args.allow_changed_input, log=_log) as claim:
        with run_log(claim.run_dir):   # opened once the run holds its folder: a refused run leaves it as it was
            summary = execute(claim, log=_log)
    _log(f"kept {summary['kept_rows']:,} of {summary['input_rows']:,} rows -> {settings.output}")
    return 0


def _run_settings(args):
    from pipeline.config import load_config, load_with_preset
    from pipeline.presets import PARAMS

    overrides = list(args.set)
    if args.engine:
        overrides.append(f"engine={args.engine}")
    if args.output:
        overrides.append(f"output={args.output}")
    params = {name: getattr(args, name) for name in PARAMS}
    for name in ("entities", "centroids", "targets"):   # files named on the command line: from here
        if params[name] is not None and "://" not in params[name]:
            params[name] = str(Path(params[name]).resolve())
    if args.preset:
        if args.config is None and not args.output:
            raise UserError(f"--preset {args.preset}: give --output (or a config)")
        return load_with_preset(args.config, args.preset, params, args.input, overrides)
    given = [f"--{name}" for name, value in params.items() if value is not None] + (["--input"] if args.input else [])
    if given:
        raise UserError(f"{given[0]} is an option of --preset")
    if args.config is None:
        raise UserError("run: give a config (or --preset)")
    return load_config(args.config, overrides)


def cmd_presets(args) -> int:
    from pipeline.presets import describe

    print(describe())
    return 0


def cmd_demo(args) -> int:
    from pipeline.demo import run_demo

    run_demo(Path(args.output), rows=args.rows, steps=args.steps, log=_log, ablate=args.ablate)
    return 0


def cmd_train(args) -> int:
    from pipeline.config import load_config
    from pipeline.core import storage
    from pipeline.train import train

    settings = load_config(args.config, list(args.set))
    if settings.train is None:
        raise UserError(f"{args.config}: no train section")
    storage.configure(settings.storage_options)
    result = train(settings.train, settings.output)
    _log(f"trained {result['steps']} steps -> {result['checkpoint']}")
    return 0


def cmd_plan(args) -> int:
    import json

    from pipeline.config import load_config
    from pipeline.core import storage
    from pipeline.plan import format_plan, load_calibration, parse_cluster, plan

    settings = load_config(args.config, list(args.set))
    storage.configure(settings.storage_options)
    if args.rows < 1:
        raise UserError("--rows: must be at least 1")
    cluster = parse_cluster(args.cluster) if args.cluster else None
    result = plan(settings, args.rows, load_calibration(args.calibrate), cluster)
    print(json.dumps(result, indent=1) if args.json else format_plan(result))
    return 0


def cmd_report(args) -> int:
    from pipeline.report import write_report

    _log(f"wrote {write_report(args.run_dir)}")
    return 0


def cmd_status(args) -> int:
    import json

    from pipeline.status import format_status, run_status

    status = run_status(args.run_dir)
    print(json.dumps(status, indent=1) if args.json else format_status(status), flush=True)
    return 0


def cmd_index(args) -> int:
    from pipeline.clip.index import build_index

    infos = build_index(args.run_dir)
    _log(f"indexed {infos['rows']:,} image embeddings ({infos['dim']} dims, {infos['index_key']}, "
         f"{infos['metric']}) -> {args.run_dir}/embeddings/index/knn.index")
    return 0


def cmd_search(args) -> int:
    from pipeline.clip.index import search

    hits = search(args.run_dir, args.query, args.k, device=args.device)
    print("uid\turl\tcaption\tsimilarity")
    for hit in hits:
        caption = " ".join(str(hit.caption or "").split())   # one line per hit
        print(f"{hit.uid}\t{hit.url}\t{caption}\t{hit.similarity:.4f}")
    return 0


def cmd_takedown(args) -> int:
    from pipeline.takedown import parse_list, takedown

    takedown(args.runs, [parse_list(v) for v in args.lists], args.pdq_distance, log=_log)
    return 0


def cmd_diff(args) -> int:
    import json

    from pipeline.release_diff import diff_runs, format_diff

    result = diff_runs(args.run_a, args.run_b)
    print(json.dumps(result, indent=1) if args.json else format_diff(result), flush=True)
    return 0


def cmd_metadata_build(args) -> int:
    from pipeline.core import storage
    from pipeline.stages.metadata_entries import load_entries

    entries = load_entries(args.sources, args.wordfreq_top)
    storage.write_json(entries, args.output)
    _log(f"wrote {len(entries):,} entries to {args.output}")
    return 0


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
