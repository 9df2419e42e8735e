"""Shared by the benchmarks: corpora, timing, and how results are printed and saved."""
from __future__ import annotations

import json
import os
import random
import time
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
SMOKE_RESULTS = "CURATE_BENCH_RESULTS"   # run_all --smoke: results go there, not to bench/results
RESULTS = Path(os.environ.get(SMOKE_RESULTS) or ROOT / "bench" / "results")
LAION_SAMPLE = ROOT.parent / "shared" / "data" / "laion_sample_1000.parquet"


def captions_source() -> str:
    """Which captions `real_captions` gives (results say it: the ratios depend on it)."""
    return "laion_sample_1000" if LAION_SAMPLE.exists() else "generated (no LAION sample beside the checkout)"


def real_captions() -> list[str]:
    """Real alt-text when the LAION sample is around, else the generated sample's captions."""
    if LAION_SAMPLE.exists():
        import pyarrow.parquet as pq

        return [t for t in pq.read_table(LAION_SAMPLE)["TEXT"].to_pylist() if t]
    from pipeline.testing.text_sample import text_sample

    return [t for t in text_sample(5000)["text"].to_pylist() if t]


def caption_table(rows: int, seed: int = 0) -> pa.Table:
    """`rows` pairs: real captions (shuffled, with word-level variation) plus the generator's noise."""
    from pipeline.testing.text_sample import text_sample

    rng = random.Random(seed)
    base = real_captions()
    noisy = text_sample(min(rows, 200_000), seed)
    urls = [f"https://img{i % 97}.example.com/{i:09d}.jpg" for i in range(rows)]
    texts = []
    for i in range(rows):
        if i % 4 == 3:
            texts.append(noisy["text"][i % noisy.num_rows].as_py())
        else:
            words = rng.choice(base).split()
            rng.shuffle(words)
            texts.append(" ".join(words))
    return pa.table({"url": urls, "text": pa.array(texts, pa.string())})


def stage_settings(section: str, values: dict | None = None):
    """A section's settings built as a run builds them (`pipeline.config`'s sections and
    `settings_loader`: its defaults, types and checks), so a setting added to a stage
    reaches the benchmark as it reaches a run."""
    from pipeline.config import sections
    from pipeline.core.settings_loader import build

    return build(dict(sections())[section], values or {}, section, "bench")


def parse_args(parser, argv=None, smoke: dict | None = None):
    """`parser`'s arguments plus `--smoke`: a tiny run (`smoke`: argument -> value) that only
    shows the benchmark still works (`run_all.py --smoke`, run by `make test`)."""
    parser.add_argument("--smoke", action="store_true", help="a tiny run: the benchmark still works")
    args = parser.parse_args(argv)
    if args.smoke:
        for name, value in (smoke or {}).items():
            setattr(args, name, value)
    return args


def smoke_mode() -> bool:
    """In a smoke run (results to a scratch folder): write nothing outside it (no docs)."""
    return bool(os.environ.get(SMOKE_RESULTS))


def timed(fn, repeat: int = 1):
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def report(name: str, results: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=1))
    print(f"== {name}")
    for key, value in results.items():
        print(f"  {key}: {value}")


def cores() -> int:
    return os.cpu_count() or 1


@contextmanager
def server_process(serve, *args):
    """Run `serve(*args, port_pipe, stop)` in a spawned process, so the server takes no GIL
    from the side being measured; yields the port it sends back, stops it at the end."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    stop = ctx.Event()
    server = ctx.Process(target=serve, args=(*args, send, stop), daemon=True)
    server.start()
    try:
        yield receive.recv()
    finally:
        stop.set()
        server.join(timeout=10)
