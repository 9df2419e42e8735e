"""The demo's synthetic captions (issue 26): a small captioner trained offline on the trusted
world samples (as the reference CLIP is bootstrapped) recaptions the kept pairs, and curate-tiny
trains for the same steps on the same shards three ways: original captions only (the run's own
training), synthetic captions only, and the mix; `captions.json` gives each one's zero-shot
top-1 on the held-out set.

    config["recaption"] = recaption_section(output)          # before the run
    compare_captions(output, config["train"], log)           # after it (its train/ is "original")
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from pipeline.core import storage

CAPTIONS_FILE = "captions.json"
MIXES = {"synthetic": {"original": 0.0, "synthetic": 1.0}, "mix": {"original": 0.2, "synthetic": 0.8}}
CAPTIONER = {"samples": 1024, "steps": 200, "batch_size": 32, "image_size": 64, "threads": 1}


def recaption_section(output: Path, log=print) -> dict:
    """The recaption section: the world captioner (trained once, cached beside the demo's
    bootstrap model), on CPU, greedy."""
    from pipeline.testing.tiny_captioner import ensure_world_captioner

    log("demo: the captioner: a tiny BLIP trained on the trusted pairs (cached)")
    folder = ensure_world_captioner(Path(output) / "bootstrap", **CAPTIONER)
    return {"backend": "transformers", "model": str(folder), "device": "cpu", "precision": "fp32",
            "batch_size": 64, "max_new_tokens": 12}


def compare_captions(output: Path, train_section: dict, log=print) -> dict:
    """Train on `<output>/shards` with synthetic captions only and with the mix, for the
    steps of `train_section` (the run's own training is the original-captions one), and
    write `captions.json`: each variant's zero-shot top-1."""
    from pipeline.config import settings_from_dict
    from pipeline.train import train
    from pipeline.train.settings import CaptionMix

    output = Path(output)
    base = settings_from_dict({"input": "unused.parquet", "output": str(output), "train": train_section},
                              "demo captions").train
    results = {"steps": base.steps, "original": storage.read_json(output / "train" / "eval.json")["top1"]}
    for name, mix in MIXES.items():
        log(f"demo: training on {name} captions for the same {base.steps} steps")
        settings = dataclasses.replace(base, output=str(output / "captions" / name), caption_mix=CaptionMix(**mix))
        result = train(settings, output)
        results[name] = result["eval"]["top1"]
        results[f"{name}_realized"] = result.get("caption_mix")
    storage.write_json(results, output / CAPTIONS_FILE)
    log(f"demo: zero-shot top-1 after {base.steps} steps: original captions {results['original']:.3f}, "
        f"synthetic {results['synthetic']:.3f}, mix {results['mix']:.3f}")
    return results
