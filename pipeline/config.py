"""The run configuration: core's general settings plus a section for the crawl source, each
registered stage (`pipeline.stages.STAGES`), face_blur (settings the shard step applies: it
has no step of its own) and the trainer."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.core import config as core_config
from pipeline.stages import STAGES
from pipeline.stages import crawl_step, face_blur
from pipeline.train.settings import TrainSettings

SECTIONS = ([(crawl_step.SECTION, crawl_step.SETTINGS)]
            + [(stage.SECTION, stage.SETTINGS) for stage in STAGES]
            + [(face_blur.SECTION, face_blur.SETTINGS)]
            + [("train", TrainSettings)])
RunSettings = core_config.settings_class(SECTIONS, __name__)


def load_config(path, overrides: list[str] = ()) -> Any:
    """Read a YAML config, apply `--set key.sub=value` overrides, validate."""
    return core_config.load_config(path, overrides, settings_cls=RunSettings)


def settings_from_dict(data: Any, source: str, overrides: list[str] = (),
                       base_dir: Path | None = None) -> Any:
    return core_config.settings_from_dict(data, source, overrides, base_dir, settings_cls=RunSettings)


__all__ = ["RunSettings", "SECTIONS", "load_config", "settings_from_dict"]
