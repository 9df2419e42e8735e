"""The run configuration: typed settings, loaded from YAML.

Core knows the general settings (input, output, engine, ...). The sections of sources,
stages and the trainer are handed in by the layer above (`pipeline.config`) as
`(name, settings class)` pairs: `settings_class` makes the run's settings class from them.
A stage runs when its section is present and not `enabled: false`. Settings every run has
but core does not use (such as `blocklist`) are handed in the same way, as `general`.
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Sequence

import yaml

from pipeline.core import storage
from pipeline.core.constraints import Above, AtLeast, Cidr, NonEmpty
from pipeline.core.settings_loader import build, coerce
from pipeline.errors import UserError


@dataclass
class InputSettings:
    path: list[str] = field(default_factory=list)   # files, folders or globs
    url_col: str = "url"
    text_col: str = "text"
    format: Optional[Literal["parquet", "csv", "tsv", "jsonl", "warc", "wat"]] = None   # default by suffix
    part_rows: Annotated[int, AtLeast(1)] = 100_000   # rows per part (the unit of work and resume)
    strict: bool = False                              # an input file that yields no rows is an error
    uid_col: Optional[Annotated[str, NonEmpty()]] = None   # the input's own uids (DataComp: uid), not re-hashed
    uids: Optional[Annotated[str, NonEmpty()]] = None      # a uids.npy (DataComp's): keep only the uids it holds
    embeddings: list[str] = field(default_factory=list)    # arrays of the .npz beside each parquet: pool_<name>


@dataclass
class RaySettings:
    address: Optional[str] = None        # default: RAY_ADDRESS, else start a local instance
    num_cpus: Optional[Annotated[int, AtLeast(1)]] = None
    task_retries: Annotated[int, AtLeast(0)] = 3


@dataclass
class SparkSettings:
    master: Optional[str] = None         # default: an existing session, else local[*]
    conf: dict[str, Any] = field(default_factory=dict)


@dataclass
class GeneralSettings:
    """The settings every run has; `settings_class` adds one optional field per section."""
    input: InputSettings = field(default_factory=InputSettings)
    output: Annotated[str, NonEmpty()] = "runs/run"
    engine: Literal["local", "ray", "spark"] = "local"
    seed: Annotated[int, AtLeast(0)] = 0
    processes: Optional[Annotated[int, AtLeast(1)]] = None   # local engine worker processes; default: all cores
    task_rows: Annotated[int, AtLeast(1)] = 1_000_000   # rows one task of a global step holds at most (memory)
    progress_interval: Annotated[float, Above(0)] = 30.0   # seconds between progress lines (core.progress)
    allow_networks: list[Annotated[str, Cidr()]] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)   # earlier run folders: drop what they hold
    storage_options: dict[str, Any] = field(default_factory=dict)   # for fsspec (s3fs, gcsfs)
    ray: RaySettings = field(default_factory=RaySettings)
    spark: SparkSettings = field(default_factory=SparkSettings)
    source: str = "config"               # the file the settings came from (for messages)

    def section(self, name: str) -> Any:
        """The settings of a stage that should run, or None."""
        settings = getattr(self, name, None)
        if settings is None or not getattr(settings, "enabled", True):
            return None
        return settings


def settings_class(sections: Sequence[tuple[str, type]], module: str,
                   general: Sequence[tuple[str, type]] = ()) -> type:
    """The run settings class: the general settings, plus an optional field per section
    (None: absent), plus a field per `general` pair that every run has (default: `cls()`)."""
    fields = [(name, Optional[cls], field(default=None)) for name, cls in sections]
    fields += [(name, cls, field(default_factory=cls)) for name, cls in general]
    cls = make_dataclass("RunSettings", fields, bases=(GeneralSettings,))
    cls.__module__ = module
    return cls


def load_config(path: str | os.PathLike, overrides: list[str] = (), *, settings_cls: type) -> Any:
    """Read a YAML config, apply `--set key.sub=value` overrides, validate."""
    data, base_dir = read_config(path)
    return settings_from_dict(data, str(path), overrides, base_dir=base_dir, settings_cls=settings_cls)


def read_config(path: str | os.PathLike) -> tuple[Any, Path | None]:
    """A config file's YAML (as read, unchecked) and the folder its relative paths start from."""
    source = str(path)
    try:
        text = storage.read_text(source)
    except (FileNotFoundError, IsADirectoryError):
        raise UserError(f"{source}: no such config file") from None
    except OSError as exc:
        raise UserError(f"{source}: cannot read config ({exc.strerror or exc})") from None
    try:
        data = yaml.load(text, Loader=UniqueKeyLoader)
    except DuplicateKeyError as exc:
        raise UserError(f"{source}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{source}: not valid YAML{at}: {getattr(exc, 'problem', exc)}") from None
    return data, (Path(source).parent if storage.is_local(source) else None)


class DuplicateKeyError(yaml.YAMLError):
    pass


class UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.safe_load`, but a key given twice in one mapping (at any level) is an error, not
    silently the later value. Keys brought in by a merge (`<<: *base`) may be overridden."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    if key in first:
                        raise DuplicateKeyError(f"duplicate key {key!r} at line {line} "
                                                f"(first at line {first[key]})")
                    first[key] = line
                except TypeError:   # an unhashable key: the base class says so
                    continue
        return super().construct_mapping(node, deep=deep)


def settings_from_dict(data: Any, source: str, overrides: list[str] = (),
                       base_dir: Path | None = None, *, settings_cls: type) -> Any:
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise UserError(f"{source}: expected a mapping of sections at the top level")
    data = dict(data)
    for item in overrides:
        apply_override(data, item, source)
    if isinstance(data.get("input"), str):
        data["input"] = {"path": data["input"]}
    settings = build(settings_cls, data, "", source)
    settings.source = source
    if base_dir is not None:
        settings.input.path = [_resolve(p, base_dir) for p in settings.input.path]
    return settings


def apply_override(data: dict, item: str, source: str) -> None:
    """Apply one `key.sub=value` override; the value is parsed as YAML."""
    if "=" not in item:
        raise UserError(f"--set {item}: expected key.sub=value")
    key, raw = item.split("=", 1)
    try:
        value = yaml.load(raw, Loader=UniqueKeyLoader) if raw else ""
    except yaml.YAMLError as exc:
        raise UserError(f"--set {item}: not a valid YAML value: "
                        f"{getattr(exc, 'problem', None) or exc}") from None
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
    else from the config file's folder; local paths are made absolute (workers may start
    elsewhere)."""
    path = storage.normalize(path)
    if os.path.isabs(path) or not storage.is_local(path):
        return path
    if glob.glob(path):
        return os.path.abspath(path)
    candidate = str(base_dir / path)
    return os.path.abspath(candidate) if glob.glob(candidate) else path


__all__ = ["GeneralSettings", "settings_class", "load_config", "settings_from_dict", "coerce"]
