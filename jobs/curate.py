"""Cluster entry point, the same config as `curate run`.

    ray job submit --working-dir . -- python jobs/curate.py --config jobs/configs/text.yaml --engine ray
    spark-submit jobs/curate.py --config jobs/configs/text.yaml --engine spark

On Ray it joins the cluster it runs on (RAY_ADDRESS, set by `ray job submit`); under
spark-submit it uses the session spark-submit configured.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline.cli import main as curate_main  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--output")
    parser.add_argument("--engine", choices=["local", "ray", "spark"])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--allow-changed-input", action="store_true",
                        help="resume although an input file changed since the run began")
    args = parser.parse_args()
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
