"""The run configuration: core's general settings (with the blocklist) plus one section per
registered module (`pipeline.stages.REGISTRY`: sources, stages, image transforms) and the
trainer. The settings class follows the registry as it is when a config is loaded."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline import stages
from pipeline.blocklist import BlocklistSettings
from pipeline.core import config as core_config
from pipeline.errors import UserError
from pipeline.train.settings import TrainSettings

_CLASSES: dict = {}


def sections() -> list[tuple[str, type]]:
    """(section, settings class) of every registered module, then the trainer's."""
    return [(module.SECTION, module.SETTINGS) for module in stages.REGISTRY] + [("train", TrainSettings)]


def run_settings_class() -> type:
    """The run settings class of the current registry (made once per registry)."""
    key = tuple(sections())
    if key not in _CLASSES:
        name = "RunSettings" if not _CLASSES else f"RunSettings{len(_CLASSES)}"
        cls = core_config.settings_class(list(key), __name__, general=[("blocklist", BlocklistSettings)])
        cls.__name__ = cls.__qualname__ = name
        globals()[name] = cls   # pickled by reference: findable under its name
        _CLASSES[key] = cls
    return _CLASSES[key]


RunSettings = run_settings_class()
SECTIONS = sections()


def load_config(path, overrides: list[str] = ()) -> Any:
    """Read a YAML config, apply `--set key.sub=value` overrides, validate."""
    return core_config.load_config(path, overrides, settings_cls=run_settings_class())


def load_with_preset(path: str | None, preset: str, params: dict, inputs: list[str],
                     overrides: list[str] = ()) -> Any:
    """A config (or none: `inputs` then name the pool) with a preset's sections
    (`pipeline.presets`), `--input` paths, then `--set` overrides."""
    from pipeline import presets

    data, base_dir, source = ({}, None, "--preset") if path is None else (*core_config.read_config(path), str(path))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{source}: expected a mapping of sections at the top level")
    data = presets.apply(data, preset, params, source)
    if inputs:
        data["input"]["path"] = [str(Path(p).resolve()) if "://" not in p else p for p in inputs]
    if not data["input"].get("path"):
        raise UserError(f"--preset {preset}: name the pool with --input (or a config's input.path)")
    return settings_from_dict(data, source, overrides, base_dir=base_dir)


def settings_from_dict(data: Any, source: str, overrides: list[str] = (),
                       base_dir: Path | None = None) -> Any:
    return core_config.settings_from_dict(data, source, overrides, base_dir, settings_cls=run_settings_class())


__all__ = ["RunSettings", "SECTIONS", "load_config", "load_with_preset", "settings_from_dict"]
