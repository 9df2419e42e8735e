"""Cluster entry point, the same config as `curate run`.

    ray job submit --working-dir . -- python jobs/curate.py --config jobs/configs/text.yaml --engine ray
    ray submit infra/ray/cluster.yaml jobs/curate.py -- --config curate/jobs/configs/text.yaml --engine ray
    spark-submit jobs/curate.py --config jobs/configs/text.yaml --engine spark

On Ray it joins the cluster it runs on: RAY_ADDRESS (set by `ray job submit`), else the
cluster `ray start` started on this machine (`ray submit` runs this file as ~/curate.py on the
head of a `ray up` cluster, with no RAY_ADDRESS), else it starts a local Ray. Under
spark-submit it uses the session spark-submit configured.
"""
from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isdir(os.path.join(ROOT, "pipeline")):   # not under `ray submit` (~/curate.py): the installed one
    sys.path.insert(0, ROOT)

from pipeline.cli import main as curate_main  # noqa: E402


def join_this_machines_ray() -> None:
    """Without RAY_ADDRESS, point it at the cluster `ray start` started on this machine, if any
    (Ray's own lookup, as a bare `ray.init()` does); the pipeline would start a local Ray."""
    if os.environ.get("RAY_ADDRESS"):
        return
    try:
        from ray._private.services import canonicalize_bootstrap_address
    except ImportError:   # no Ray here (spark-submit)
        return
    address = canonicalize_bootstrap_address(None)
    if address:
        os.environ["RAY_ADDRESS"] = address


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--output")
    parser.add_argument("--engine", choices=["local", "ray", "spark"])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--allow-changed-input", action="store_true",
                        help="resume although an input file changed since the run began")
    args = parser.parse_args()
    if args.engine in (None, "ray"):   # else the config's engine
        join_this_machines_ray()
    argv = ["run", args.config]
    if args.output:
        argv += ["--output", args.output]
    if args.engine:
        argv += ["--engine", args.engine]
    for item in args.set:
        argv += ["--set", item]
    if args.allow_changed_input:
        argv.append("--allow-changed-input")
    return curate_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
