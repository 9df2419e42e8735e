"""Metadata-only filtering of a DataComp pool: our presets on the local engine beside DataComp's
own approach (`baselines/apply_filter.py`), on the same parquet shards, in this process.

A generated pool in DataComp's format (uid as 32 hex digits, url, text, original_width,
original_height, clip_b32/l14_similarity_score as float32) goes through
`datacomp:basic_filter` and `datacomp:clip_score --fraction 0.3` (L/14):

- ours: `load_with_preset` + `run_pipeline`, local engine, `--processes` workers: rows/s,
  rows/s per core, the pool_filter step's own seconds (steps/*/stats.json), the workers' peak
  RSS (the tasks' `peak_rss_bytes`) and the driver's above its RSS at the start (VmHWM reset);
- theirs: what apply_filter.py does, written here from its published definition: a
  multiprocessing pool of as many spawned workers, each shard read with pandas, fastText's top
  label per caption (`model.predict(text.replace("\\n", " "))`, the same lid.176.ftz our
  language stage loads), `len(text.split())`, `len(text)`, the sizes, uids parsed with
  `int(uid, 16)`; for the fraction every shard's score column concatenated on the driver and
  `-np.sort(-scores)[int(rows * fraction)]`, then a second pass over the shards; the uids
  concatenated, sorted. The workers' peak RSS is their `ru_maxrss`.

Both must keep the same uids (our uids.npy against their sorted array); the ratio is
ours/theirs in rows/s (above 1: ours is faster).

    python bench/bench_pool_filter.py [--rows 10000000] [--shard-rows 500000] [--processes 2] [--repeat 1]
    python bench/bench_pool_filter.py --quick          # 1M rows (what `make bench` runs)
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import shutil
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, parse_args, report  # noqa: E402

QUICK_ROWS = 1_000_000
FRACTION = 0.3
SCORE_COL = "clip_l14_similarity_score"
ROW_GROUP = 100_000

WORDS_IN = [1, 2, 3, 4, 5, 6, 8, 10, 14, 24]
WORDS_IN_P = [.06, .1, .14, .14, .14, .12, .12, .08, .06, .04]
ENGLISH = ("a the dog cat red blue small large house car beach photo of on in with and for sale new "
           "vintage wooden table chair woman man child playing garden city street night view mountain "
           "river lake summer winter dress shoes black white green kitchen design modern old style "
           "wedding party flowers tree bird sunset road bridge portrait art painting logo vector").split()
OTHER = {
    "fr": "le la les chien chat maison rouge petit grand plage avec pour dans une un des de voiture".split(),
    "de": "der die das Hund Katze Haus rot klein groß Strand mit für und ein eine Auto Garten".split(),
    "es": "el la los perro gato casa rojo pequeño grande playa con para una un del coche jardín".split(),
    "ru": "собака кошка дом красный маленький большой пляж с для и на в машина сад улица".split(),
    "zh": "狗 猫 房子 红色 小 大 海滩 和 在 汽车 花园 街道 夜晚 山 河".split(),
    "ja": "犬 猫 家 赤い 小さい 大きい 浜辺 と 車 庭 通り 夜 山 川 写真".split(),
}


# --- the pool -------------------------------------------------------------------------------

def caption_bank(size: int, rng: np.random.Generator) -> list[str]:
    """`size` distinct-ish captions: 70% English, the rest six other languages; 1 to 24 words
    (a few long ones), some with a newline, a few under 6 characters, a few digits."""
    names = list(OTHER)
    texts = []
    for i in range(size):
        words_in = int(rng.choice(WORDS_IN, p=WORDS_IN_P))
        vocab = ENGLISH if rng.random() < 0.7 else OTHER[names[int(rng.integers(len(names)))]]
        words = [vocab[j] for j in rng.integers(0, len(vocab), words_in)]
        sep = "" if vocab is OTHER.get("zh") or vocab is OTHER.get("ja") else " "
        text = sep.join(words)
        if i % 13 == 0:
            text += f" {int(rng.integers(1, 10_000))}"
        if i % 29 == 0:
            text = text.replace(" ", "\n", 1)
        texts.append(text)
    return texts


def hex_uids(rng: np.random.Generator, rows: int) -> pa.Array:
    """`rows` random 128-bit uids as 32 lowercase hex digits, built without a Python loop."""
    raw = rng.integers(0, 256, (rows, 16), dtype=np.uint8)
    digits = np.frombuffer(b"0123456789abcdef", np.uint8)
    chars = np.empty((rows, 32), np.uint8)
    chars[:, 0::2], chars[:, 1::2] = digits[raw >> 4], digits[raw & 15]
    offsets = np.arange(0, 32 * rows + 1, 32, dtype=np.int32)
    return pa.StringArray.from_buffers(rows, pa.py_buffer(offsets), pa.py_buffer(chars.tobytes()))


def pool_shard(rows: int, seed: int, bank: pa.Array) -> pa.Table:
    """One shard: captions drawn from the bank, sizes with small and extreme images, float32
    scores (a few NaN, natural float32 ties)."""
    rng = np.random.default_rng(seed)
    uid = hex_uids(rng, rows)
    host = pc.cast(pa.array(rng.integers(0, 997, rows)), pa.string())
    url = pc.binary_join_element_wise("https://img", host, ".example.com/", uid, ".jpg", "")
    text = bank.take(pa.array(rng.integers(0, len(bank), rows)))
    width = rng.choice([64, 150, 199, 200, 256, 400, 512, 640, 800, 1024, 1600], rows)
    aspect = rng.choice([0.2, 1 / 3, 0.5, 0.75, 1.0, 1.0, 1.5, 2.0, 3.0, 3.5], rows)
    height = np.maximum(1, np.round(width * aspect)).astype(np.int64)
    scores = np.round(rng.normal(0.28, 0.05, (2, rows)), 4).astype(np.float32)
    scores[:, rng.integers(0, rows, rows // 10_000)] = np.nan
    return pa.table({"uid": uid, "url": url, "text": text,
                     "original_width": pa.array(width, pa.int64()), "original_height": pa.array(height, pa.int64()),
                     "clip_b32_similarity_score": scores[0], "clip_l14_similarity_score": scores[1]})


def write_pool(folder: str, rows: int, shard_rows: int) -> None:
    rng = np.random.default_rng(0)
    bank = pa.array(caption_bank(200_000, rng), pa.string())
    for index, start in enumerate(range(0, rows, shard_rows)):
        table = pool_shard(min(shard_rows, rows - start), index + 1, bank)
        pq.write_table(table, Path(folder) / f"{index:08d}.parquet", row_group_size=ROW_GROUP)


# --- ours -----------------------------------------------------------------------------------

def run_ours(pool: Path, output: Path, preset: str, params: dict, processes: int) -> dict:
    import json

    from pipeline.app import run_pipeline
    from pipeline.config import load_with_preset

    settings = load_with_preset(None, preset, params, [str(pool)],
                                [f"output={output}", f"processes={processes}", "engine=local"])
    base = reset_peak()
    started = time.perf_counter()
    run_pipeline(settings, settings.output, log=lambda *_: None)
    seconds = time.perf_counter() - started
    driver_peak = status_kb("VmHWM") * 1024 - base
    summary = json.loads((output / "summary.json").read_text())
    steps = {}
    for stats_path in sorted((output / "steps").glob("*/stats.json")):
        record = json.loads(stats_path.read_text())
        peak = max((p["worker_peak_bytes"] for p in record["phases"]), default=0)
        steps[record["name"]] = {"seconds": record["seconds"], "worker_peak_bytes": peak}
    uids = np.load(output / "uids.npy")
    return {"seconds": seconds, "rows": summary["input_rows"], "kept": len(uids), "steps": steps,
            "worker_peak_bytes": max(s["worker_peak_bytes"] for s in steps.values()),
            "driver_peak_bytes": driver_peak, "uids": uids}


# --- theirs: apply_filter.py's approach, written from its definition ------------------------

def uid_pairs(uids) -> np.ndarray:
    """Each uid as (high 64 bits, low 64 bits), through Python ints as DataComp parses them."""
    return np.array([(int(u[:16], 16), int(u[16:32], 16)) for u in uids], np.dtype("u8,u8"))


def basic_filter_shard(path: str, model_path: str) -> tuple[np.ndarray, int]:
    import fasttext
    import pandas as pd

    frame = pd.read_parquet(path, columns=["uid", "text", "original_width", "original_height"])
    model = fasttext.load_model(model_path)   # per shard, as apply_filter.py loads it
    language = frame.text.apply(lambda t: model.predict(t.replace("\n", " "))[0][0].split("__label__")[1])
    words = frame.text.apply(lambda t: len(t.split()))
    chars = frame.text.apply(len)
    uids = uid_pairs(frame.uid.values)
    smaller = np.minimum(frame.original_width, frame.original_height)
    larger = np.maximum(frame.original_width, frame.original_height)
    keep = (language == "en") & (words > 2) & (chars > 5) & (smaller >= 200) & (larger / smaller <= 3.0)
    return uids[keep.to_numpy()], peak_rss()


def score_column(path: str) -> tuple:
    import pandas as pd

    return pd.read_parquet(path, columns=[SCORE_COL]), peak_rss()


def threshold_shard(path: str, threshold) -> tuple[np.ndarray, int]:
    import pandas as pd

    frame = pd.read_parquet(path, columns=["uid", SCORE_COL])
    return uid_pairs(frame[frame[SCORE_COL] >= threshold]["uid"].values), peak_rss()


def run_theirs(pool: Path, preset: str, processes: int) -> dict:
    import pandas as pd

    from pipeline.stages.language import default_model_path

    paths = sorted(str(p) for p in pool.glob("*.parquet"))
    base = reset_peak()
    started = time.perf_counter()
    peaks = []
    with multiprocessing.get_context("spawn").Pool(processes) as workers:
        if preset == "datacomp:basic_filter":
            shares = []
            shard = partial(basic_filter_shard, model_path=default_model_path())
            for uids, peak in workers.imap_unordered(shard, paths):
                shares.append(uids)
                peaks.append(peak)
        else:
            columns = []
            for column, peak in workers.imap_unordered(score_column, paths):
                columns.append(column)
                peaks.append(peak)
            scores = pd.concat(columns)[SCORE_COL].values
            rows = len(scores)
            threshold = -np.sort(-scores)[int(rows * FRACTION)]
            del columns, scores
            shares = []
            for uids, peak in workers.imap_unordered(partial(threshold_shard, threshold=threshold), paths):
                shares.append(uids)
                peaks.append(peak)
        uids = np.concatenate(shares)
        uids.sort()
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "kept": len(uids), "worker_peak_bytes": max(peaks),
            "driver_peak_bytes": status_kb("VmHWM") * 1024 - base, "uids": uids}


# --- memory ---------------------------------------------------------------------------------

def peak_rss() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def reset_peak() -> int:
    """Resets this process's VmHWM to its current RSS (Linux); returns that RSS in bytes (the
    driver's peak is reported above it: what the run itself added)."""
    Path("/proc/self/clear_refs").write_text("5")
    return status_kb("VmRSS") * 1024


def status_kb(field: str) -> int:
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field))
    return int(line.split()[1])


# --- main -----------------------------------------------------------------------------------

PRESETS = {"datacomp:basic_filter": {}, "datacomp:clip_score": {"fraction": FRACTION, "arch": "l14"}}


def compare(pool: Path, work: Path, preset: str, params: dict, processes: int, rows: int,
            repeat: int = 1) -> dict:
    """Each side `repeat` times, alternating (the machine's load shifts); the fastest of each."""
    name = preset.split(":")[1]
    ours = theirs = None
    for attempt in range(repeat):
        output = work / f"ours_{name}_{attempt}"
        run = run_ours(pool, output, preset, params, processes)
        shutil.rmtree(output, ignore_errors=True)
        ours = run if ours is None or run["seconds"] < ours["seconds"] else ours
        run = run_theirs(pool, preset, processes)
        theirs = run if theirs is None or run["seconds"] < theirs["seconds"] else theirs
    same = bool(np.array_equal(ours["uids"], theirs["uids"]))
    if not same:
        raise SystemExit(f"{preset}: kept uids differ (ours {ours['kept']}, theirs {theirs['kept']})")
    mib = 2 ** 20
    ours_rate, theirs_rate = ours["rows"] / ours["seconds"], rows / theirs["seconds"]
    return {
        "rows": rows, "kept": ours["kept"], "same_uids": same, "processes": processes, "best_of": repeat,
        "ours_s": round(ours["seconds"], 2), "ours_rows_per_s": round(ours_rate),
        "ours_rows_per_s_per_core": round(ours_rate / processes),
        "ours_pool_filter_step_s": ours["steps"].get("pool_filter", {}).get("seconds"),
        "ours_steps_s": {k: v["seconds"] for k, v in ours["steps"].items()},
        "ours_worker_peak_mib": round(ours["worker_peak_bytes"] / mib),
        "ours_driver_peak_above_start_mib": round(ours["driver_peak_bytes"] / mib),
        "theirs_s": round(theirs["seconds"], 2), "theirs_rows_per_s": round(theirs_rate),
        "theirs_rows_per_s_per_core": round(theirs_rate / processes),
        "theirs_worker_peak_mib": round(theirs["worker_peak_bytes"] / mib),
        "theirs_driver_peak_above_start_mib": round(theirs["driver_peak_bytes"] / mib),
        "ratio_ours_over_theirs": round(ours_rate / theirs_rate, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_ROWS:,} rows")
    parser.add_argument("--shard-rows", type=int, default=500_000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1, help="runs of each side, alternating; the fastest")
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    args = parse_args(parser, smoke={"rows": 20_000, "shard_rows": 5_000, "quick": False})
    rows = QUICK_ROWS if args.quick else args.rows
    results = {"rows": rows, "shard_rows": args.shard_rows, "processes": args.processes,
               "machine": f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the start"}
    work = Path(tempfile.mkdtemp(prefix="pool_filter_", dir=ROOT / "bench"))
    try:
        pool = work / "pool"
        pool.mkdir()
        started = time.perf_counter()
        generator = multiprocessing.get_context("spawn").Process(target=write_pool,
                                                                 args=(str(pool), rows, args.shard_rows))
        generator.start()   # in a child, so the driver's memory is the runs' own
        generator.join()
        if generator.exitcode:
            raise SystemExit("generating the pool failed")
        results["generate_s"] = round(time.perf_counter() - started, 1)
        results["pool_bytes"] = sum(p.stat().st_size for p in pool.glob("*.parquet"))
        for preset in args.presets:
            results[preset] = compare(pool, work, preset, PRESETS[preset], args.processes, rows, args.repeat)
        results["load_average_end"] = round(os.getloadavg()[0], 2)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report("pool_filter_quick" if args.quick else "pool_filter", results)
    print_table(results, args.presets)


def print_table(results: dict, presets: list) -> None:
    print(f"\n{'preset':<24}{'side':<8}{'seconds':>9}{'rows/s':>11}{'/core':>10}{'worker MiB':>12}{'driver +MiB':>12}")
    for preset in presets:
        r = results[preset]
        for side in ("ours", "theirs"):
            print(f"{preset:<24}{side:<8}{r[f'{side}_s']:>9}{r[f'{side}_rows_per_s']:>11,}"
                  f"{r[f'{side}_rows_per_s_per_core']:>10,}{r[f'{side}_worker_peak_mib']:>12}"
                  f"{r[f'{side}_driver_peak_above_start_mib']:>12}")
        print(f"{'':<24}ratio ours/theirs {r['ratio_ours_over_theirs']}, pool_filter step "
              f"{r['ours_pool_filter_step_s']} s, same uids: {r['same_uids']}, kept {r['kept']:,}")


if __name__ == "__main__":
    main()
