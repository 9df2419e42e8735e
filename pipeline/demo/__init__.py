"""`curate demo`: the main job, offline, on the embedded local engine.

A fake web of generated images (coloured shapes) with realistic noise; a crawl of its site
and a LAION-style URL list; a curate-tiny reference model bootstrapped on a small trusted
set; every stage; then training on the curated shards and, for the same steps, on the
uncurated downloaded pool (mini-DataComp), zero-shot evaluation of both, and the report.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from pipeline import stages
from pipeline.app import run_pipeline
from pipeline.config import settings_from_dict
from pipeline.core import storage
from pipeline.demo.captions import compare_captions, recaption_section
from pipeline.run_log import run_log
from pipeline.testing.fakeweb import FakeWeb
from pipeline.testing.world import write_eval_folder
from pipeline.testing.world_web import build_demo_web

WORLD_SEED = 7          # the web's pool (the trusted bootstrap set uses world seed 0)
TRAIN_STEPS = 150
IMAGE_SIZE = 64         # curate-tiny's input size: downloads and the evaluation set
EVAL_FOLDER = "eval_set"   # in the output folder: held-out world samples every model is scored on
ABLATION_FILE = "ablation.json"
DEMO_LANGUAGES = ("en", "fr", "de", "es", "ja")   # the web's captions (world_web.TRANSLATIONS)


def demo_config(pairs: Path, seeds: list[str], output: Path, checkpoint: Path, steps: int,
                eval_data: Path) -> dict:
    return {
        "input": {"path": [str(pairs)], "url_col": "URL", "text_col": "TEXT", "part_rows": 2000},
        "output": str(output), "engine": "local", "seed": 0,
        "allow_networks": ["127.0.0.1/32"],
        "crawl": {"seeds": seeds, "max_depth": 2, "max_pages": 1000},
        "dedup": {"keys": ["url", "text"]},
        # one word: captions in languages written without spaces ("青の背景に赤の円")
        "caption_filter": {"min_chars": 5, "max_chars": 1000, "min_words": 1},
        "language": {"keep": list(DEMO_LANGUAGES), "min_score": 0.3},
        # MetaCLIP 2: a list per language (WordNet for English, frequent words for all)
        "metadata": {"entries": ["wordnet", "wordfreq:50000"], "languages": list(DEMO_LANGUAGES), "t": 400},
        "download": {"image_size": IMAGE_SIZE, "threads": 16, "timeout": 5, "retries": 1, "part_rows": 1000},
        "image_dedup": {"phash_distance": 0},   # drawn shapes: distance > 0 merges distinct scenes
        "clip_score": {"model": "curate-tiny", "pretrained": str(checkpoint), "threshold": 0.8,
                       "device": "cpu", "precision": "fp32", "batch_size": 128},
        # T-MARS: an image that writes out its caption loses its score once the text is masked
        "text_mask": {"threshold": 0.5, "max_drop": 0.3},
        "shard": {"samples_per_shard": 150},
        "train": train_section(steps, eval_data),
    }


def train_section(steps: int, eval_data: Path) -> dict:
    """The same training for the curated and the uncurated shards (mini-DataComp)."""
    return {"model": "curate-tiny", "steps": steps, "batch_size": 64, "launcher": "inline",
            "lr": 2e-3, "warmup": 10, "checkpoint_every": steps, "eval_data": str(eval_data),
            "precision": "fp32", "workers": 1}


def uncurated_config(pools: list[Path], output: Path, steps: int, eval_data: Path) -> dict:
    """The same pool (files with `url`, `text`), downloaded and sharded with no curation."""
    return {
        "input": {"path": [str(p) for p in pools], "part_rows": 2000}, "output": str(output),
        "engine": "local",
        "seed": 0, "allow_networks": ["127.0.0.1/32"],
        "download": {"image_size": IMAGE_SIZE, "threads": 16, "timeout": 5, "retries": 1, "part_rows": 1000},
        "shard": {"samples_per_shard": 150},
        "train": train_section(steps, eval_data),
    }


def clear_previous_demo(output: Path) -> None:
    """Each demo serves its fake web on a new port, so an old run cannot be resumed: start
    clean, keeping only the cached bootstrap model."""
    output.mkdir(parents=True, exist_ok=True)
    for child in output.iterdir():
        if child.name != "bootstrap":
            shutil.rmtree(child) if child.is_dir() else child.unlink()


def bootstrap_model(output: Path, log) -> Path:
    """The reference CLIP: curate-tiny trained briefly on a small trusted set (world seed 0),
    with pairs whose image writes out the caption: it reads, as web-trained CLIPs do."""
    from pipeline.testing.reading_clip import TEXT_PAIRS, ensure_reading_checkpoint

    log(f"demo: bootstrapping the curate-tiny reference model on 2,048 trusted pairs and {TEXT_PAIRS:,} "
        f"pairs that write out their caption (so that it reads)")
    return ensure_reading_checkpoint(output / "bootstrap")


def run_demo(output: Path, rows: int = 3000, steps: int = TRAIN_STEPS, log=print, ablate: bool = False) -> dict:
    output = Path(output)
    clear_previous_demo(output)
    with run_log(str(output)):   # library notices go to output/run.log, not the console
        return demo_run(output, rows, steps, log, ablate)


def demo_run(output: Path, rows: int, steps: int, log, ablate: bool = False) -> dict:
    from pipeline.report.page import write_report

    checkpoint = bootstrap_model(output, log)
    eval_data = write_eval_folder(output / EVAL_FOLDER, image_size=IMAGE_SIZE)
    with FakeWeb() as web:
        world = build_demo_web(web, rows, seed=WORLD_SEED)
        pairs = output / "input" / "pairs.parquet"
        pairs.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(world.pairs, pairs)
        log(f"demo: a fake web of {rows:,} images on {web.url('/')}: {world.pairs.num_rows:,} listed "
            f"pairs, the rest on a site to crawl")
        config = demo_config(pairs, world.seeds, output, checkpoint, steps, eval_data)
        # the run recaptions its kept pairs; the ablation variants (filters only) do not
        run_config = {**config, "recaption": recaption_section(output, log)}
        (output / "demo.yaml").write_text(yaml.safe_dump(run_config, sort_keys=False))
        summary = run_pipeline(settings_from_dict(run_config, str(output / "demo.yaml")), output, log=log)
        compare_captions(output, config["train"], log)
        write_report(output)   # the report gains the captions table
        listed = pairs.with_name("pairs_url_text.parquet")
        pq.write_table(world.pairs.rename_columns(["url", "text"]), listed)
        crawled = json.loads((output / "steps" / "crawl" / "stats.json").read_text())["files"]
        pool = uncurated_config([listed, *crawled], output / "uncurated", steps, eval_data)
        log("demo: the uncurated pool (download + shard only), for comparison")
        run_pipeline(settings_from_dict(pool, "uncurated"), output / "uncurated", log=log)
        if ablate:
            run_ablation(config, output, log)
    comparison = compare(output)
    log(f"demo: kept {summary['kept_rows']:,} of {summary['input_rows']:,} pairs")
    log(f"demo: zero-shot top-1 after {comparison['steps']} steps: curated "
        f"{comparison['curated']['top1']:.3f} vs uncurated {comparison['uncurated']['top1']:.3f}")
    log(f"demo: look at {output}/report.html, summary.json, eval.json, shards/, ledger/, train/")
    return summary


def run_ablation(config: dict, output: Path, log) -> dict:
    """The demo's pipeline once more per filter, without that filter, trained for the same
    steps on the same web: `ablation.json` (and the report's Ablation table) gives each
    variant's kept pairs and zero-shot top-1 beside the full pipeline and no curation."""
    from pipeline.report.page import write_report

    rows = [ablation_row("full pipeline", None, output)]
    for name, label, removed in ablated(config):
        variant = output / "ablate" / f"without_{name}"
        log(f"demo: ablation: the pipeline without {label}")
        without = {k: v for k, v in config.items() if k not in removed}
        run_pipeline(settings_from_dict({**without, "output": str(variant)}, f"without {name}"), variant, log=log)
        rows.append(ablation_row(f"without {label}", name, variant))
    rows.append(ablation_row("no curation", "all", output / "uncurated"))
    ablation = {"steps": config["train"]["steps"], "rows": rows}
    storage.write_json(ablation, output / ABLATION_FILE)
    write_report(output)
    return ablation


def ablated(config: dict) -> list[tuple[str, str, set[str]]]:
    """The filters `--ablate` removes one at a time: (section, label, sections removed) of each
    registered stage that keeps rows by a criterion (`Stage.filters`) and that the config has.
    A later stage that reads a column the filter adds goes with it (per-language metadata reads
    `language`; text_mask reads clip_score's embeddings), and the label says so."""
    settings = settings_from_dict(config, "ablation")
    configured = [m for m in stages.registered_stages() if m.SECTION in config]
    found = []
    for i, module in enumerate(configured):
        if not module.STAGE.filters:
            continue
        removed, adds, labels = {module.SECTION}, added_columns(module, settings), []
        for later in configured[i + 1:]:
            if adds & set(later.STAGE.input_columns(settings.section(later.SECTION))):
                removed.add(later.SECTION)
                labels.append(later.STAGE.label)
                adds |= added_columns(later, settings)
        label = " and ".join([module.STAGE.label, *labels])
        found.append((module.SECTION, label, removed))
    return found


def added_columns(module, settings) -> set[str]:
    return {name for name, _ in module.STAGE.output_fields(settings.section(module.SECTION))}


def ablation_row(variant: str, removed, run_dir: Path) -> dict:
    summary = storage.read_json(run_dir / "summary.json")
    return {"variant": variant, "removed": removed, "kept_rows": summary["kept_rows"],
            "top1": storage.read_json(run_dir / "train" / "eval.json")["top1"]}


def compare(output: Path) -> dict:
    """eval.json: both models' zero-shot top-1 on the same held-out set (mini-DataComp)."""
    curated = storage.read_json(output / "train" / "eval.json")
    uncurated = storage.read_json(output / "uncurated" / "train" / "eval.json")
    comparison = {"curated": curated, "uncurated": uncurated, "steps": curated["steps"],
                  "curated_beats_uncurated": curated["top1"] > uncurated["top1"]}
    storage.write_json(comparison, output / "eval.json")
    return comparison


__all__ = ["run_demo"]
