"""Settings are checked against the constraints their dataclasses declare, when the config is
loaded: one line naming the file, the dotted key, the value and what is allowed."""
import re
import subprocess
import sys

import pytest
import yaml

from pipeline.config import SECTIONS, load_config, settings_from_dict
from pipeline.core.config import UniqueKeyLoader
from pipeline.errors import UserError

SOURCE = "jobs/x.yaml"


def nested(key: str, value) -> dict:
    """{"a": {"b": value}} for "a.b"."""
    data = value
    for part in reversed(key.split(".")):
        data = {part: data}
    return data


def error_of(data: dict, source: str = SOURCE) -> str:
    with pytest.raises(UserError) as info:
        settings_from_dict(data, source)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_the_message_names_file_key_value_and_what_is_allowed():
    assert error_of({"shard": {"samples_per_shard": -5}}) == \
        "jobs/x.yaml: shard.samples_per_shard: must be at least 1, got -5"
    assert error_of({"dedup": {"keys": []}}) == "jobs/x.yaml: dedup.keys: must not be empty, got []"
    assert error_of({"allow_networks": ["10.0.0.0/8", "10.0.0.0/33"]}) == \
        "jobs/x.yaml: allow_networks[1]: must be a network in CIDR form, e.g. 10.0.0.0/8 or fd00::/8, got '10.0.0.0/33'"
    assert error_of({"language": {"min_score": 1.5}}) == \
        "jobs/x.yaml: language.min_score: must be between 0 and 1, got 1.5"
    assert error_of({"semantic_dedup": {"eps": 1}}) == "jobs/x.yaml: semantic_dedup.eps: must be in [0, 1), got 1.0"
    assert error_of({"download": {"timeout": 0}}) == "jobs/x.yaml: download.timeout: must be greater than 0, got 0.0"
    assert error_of({"engine": "rey"}) == \
        "jobs/x.yaml: engine: must be one of 'local', 'ray', 'spark', got str 'rey'"
    assert error_of({"caption_filter": {"min_chars": 50, "max_chars": 20}}) == \
        "jobs/x.yaml: caption_filter.min_chars: must be at most max_chars (20), got 50"


# (key, a value just outside what is allowed, the boundary value that is allowed)
BOUNDARIES = [
    ("shard.samples_per_shard", 0, 1),            # AtLeast(1)
    ("seed", -1, 0),                              # AtLeast(0)
    ("shard.start_index", -1, 0),                 # AtLeast(0) inside a union with 'auto'
    ("download.timeout", 0, 0.001),               # Above(0)
    ("face_blur.scale_factor", 1, 1.001),         # Above(1)
    ("language.min_score", 1.0001, 1),            # Between(0, 1)
    ("language.min_score", -0.0001, 0),
    ("clip_score.threshold", -1.0001, -1),        # Between(-1, 1)
    ("clip_score.threshold", 1.0001, 1),
    ("clip_score.top_fraction", 0, 1),            # (0, 1]
    ("semantic_dedup.eps", 1, 0),                 # [0, 1)
    ("image_dedup.phash_distance", 64, 63),       # Between(0, 63)
    ("download.encode_quality", 101, 100),        # Between(1, 100)
    ("dedup.keys", [], ["url"]),                  # NonEmpty
    ("allow_networks", ["10.0.0.0/33"], ["10.1.2.3/8", "::1/128", "127.0.0.1"]),   # Cidr (host bits allowed)
    ("clip_score.device", "gpu", "cuda:1"),       # Matches
    ("engine", "rey", "ray"),                     # Literal
    ("download.resize_mode", "crop", "border"),   # Literal
    ("processes", 0, None),                       # Optional[AtLeast(1)]: null is the default
    ("processes", 0, 1),
    ("download.task_deadline", 0, None),
    ("caption_filter.max_chars", 4, 5),           # validate(): min_chars (5) <= max_chars
]


@pytest.mark.parametrize("key,bad,good", BOUNDARIES)
def test_each_constraint_kind_refuses_the_bad_value_and_takes_the_boundary(key, bad, good):
    message = error_of(nested(key, bad))
    assert re.match(rf"^{re.escape(SOURCE)}: [\w.\[\]]+: (must|expected) ", message), message
    settings = settings_from_dict(nested(key, good), SOURCE)
    value = settings
    for part in key.split("."):
        value = getattr(value, part)
    assert value == good


def test_heads_thresholds_are_finite_and_one_of_the_two():
    head = {"name": "nsfw", "path": "h.pt"}
    assert error_of({"heads": {"heads": [{**head, "drop_above": float("inf")}]}}) == \
        "jobs/x.yaml: heads.heads[0].drop_above: must be a finite number, got inf"
    assert "heads.heads[0].drop_below: must not be set with drop_above" in \
        error_of({"heads": {"heads": [{**head, "drop_above": 0.5, "drop_below": 0.1}]}})
    assert error_of({"heads": {"heads": []}}) == "jobs/x.yaml: heads.heads: must not be empty, got []"
    loaded = settings_from_dict({"heads": {"heads": [{**head, "drop_above": 0.5}]}}, SOURCE)
    assert loaded.heads.heads[0].drop_above == 0.5


# The list: each of these ran (losing every row, exit 0) or failed in a worker.
BAD = [
    ("shard.samples_per_shard", 0), ("shard.samples_per_shard", -1), ("input.part_rows", 0),
    ("task_rows", 0), ("dedup.keys", []), ("allow_networks", ["10.0.0.0/33"]), ("allow_networks", ["bogus"]),
    ("allow_networks", ["not-a-net"]), ("download.threads", 0), ("download.timeout", 0),
    ("download.max_bytes", 0), ("download.part_rows", 0), ("download.retries", -1),
    ("language.min_score", 1.5), ("metadata.t", 0), ("metadata.entries", []), ("processes", 0), ("seed", -1),
    ("engine", "rey"), ("input.format", "xls"), ("output", ""), ("ray.task_retries", -1),
    ("caption_filter.min_chars", -1), ("crawl.seeds", []), ("crawl.max_depth", -1), ("crawl.concurrency", 0),
    ("crawl.timeout", 0), ("semantic_dedup.sample_rows", 0), ("semantic_dedup.clusters", -1),
    ("face_blur.quality", 0), ("face_blur.margin", 1.5), ("clip_score.batch_size", 0),
    ("clip_score.threshold", 2), ("clip_score.decode_workers", 0), ("train.steps", 0),
    ("train.checkpoint_every", 0), ("train.lr", 0), ("train.workers", -1), ("train.seed", -1),
]


def yaml_config(tmp_path, key, value):
    path = tmp_path / "x.yaml"
    data = {"input": {"path": ["in.parquet"]}, "output": str(tmp_path / "run")}
    for section, content in nested(key, value).items():
        data[section] = {**data[section], **content} if isinstance(content, dict) and section in data else content
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("key,value", BAD)
def test_a_bad_value_is_one_line_from_the_file_and_from_set(tmp_path, key, value):
    pattern = rf"^{{}}: {re.escape(key)}(\[0\])?: (must|expected) [^\n]+, got [^\n]+$"
    path = yaml_config(tmp_path, key, value)
    with pytest.raises(UserError, match=pattern.format(re.escape(str(path)))):
        load_config(path)
    ok = yaml_config(tmp_path, "seed", 0)
    with pytest.raises(UserError, match=pattern.format(re.escape(str(ok)))):
        load_config(ok, [f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"])


def test_every_section_with_its_defaults_loads():
    sections = {name: {} for name, _ in SECTIONS}
    sections["crawl"] = {"seeds": ["https://example.org/"]}     # a crawl needs seeds
    sections["heads"] = {"heads": [{"name": "nsfw", "path": "h.pt"}]}   # heads need a head
    sections["recaption"] = {"model": "captioner/"}                     # a captioner needs a model
    settings = settings_from_dict(sections, SOURCE)
    for name, cls in SECTIONS:
        assert isinstance(getattr(settings, name), cls)


def test_duplicate_yaml_keys_are_refused_at_any_level(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("input: {path: a.parquet}\ndownload:\n  threads: 4\nseed: 1\ndownload:\n  threads: 8\n")
    with pytest.raises(UserError, match=rf"^{re.escape(str(path))}: duplicate key 'download' at line 5 "
                                        r"\(first at line 2\)$"):
        load_config(path)
    path.write_text("input: {path: a.parquet}\ndownload:\n  threads: 4\n  timeout: 3\n  threads: 8\n")
    with pytest.raises(UserError, match=r"x\.yaml: duplicate key 'threads' at line 5 \(first at line 3\)$"):
        load_config(path)
    path.write_text("dedup: {keys: [url], keys: [text]}\n")
    with pytest.raises(UserError, match=r"x\.yaml: duplicate key 'keys' at line 1 \(first at line 1\)$"):
        load_config(path)
    with pytest.raises(UserError, match=r"^--set download=\{a: 1, a: 2\}: not a valid YAML value: duplicate key 'a'"):
        settings_from_dict({}, SOURCE, ["download={a: 1, a: 2}"])


def test_merge_keys_may_still_be_overridden():
    data = yaml.load("base: &b {threads: 4, timeout: 3}\ndownload: {<<: *b, threads: 8}\n", Loader=UniqueKeyLoader)
    assert data["download"] == {"threads": 8, "timeout": 3}


def test_cli_refuses_a_bad_config_before_creating_the_output(tmp_path):
    from tests.support import ROOT

    run_dir = tmp_path / "run"
    configs = {"range.yaml": f"input: {{path: in.parquet}}\noutput: {run_dir}\nshard: {{samples_per_shard: 0}}\n",
               "dup.yaml": f"input: {{path: in.parquet}}\noutput: {run_dir}\nseed: 1\nseed: 2\n"}
    expected = {"range.yaml": "shard.samples_per_shard: must be at least 1, got 0",
                "dup.yaml": "duplicate key 'seed' at line 4 (first at line 3)"}
    for name, text in configs.items():
        (tmp_path / name).write_text(text)
        result = subprocess.run([sys.executable, "-m", "pipeline", "run", str(tmp_path / name)],
                                capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("curate: error:"), result.stderr
        assert lines[0].endswith(f"{name}: {expected[name]}"), lines[0]
        assert "Traceback" not in result.stderr + result.stdout
        assert not run_dir.exists()
    result = subprocess.run([sys.executable, "-m", "pipeline", "run", str(tmp_path / "range.yaml"),
                             "--set", "shard.samples_per_shard=5", "--set", "allow_networks=[bogus]"],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 2 and not run_dir.exists()
    assert result.stderr.strip().splitlines() == [
        f"curate: error: {tmp_path / 'range.yaml'}: allow_networks[0]: must be a network in CIDR form, "
        "e.g. 10.0.0.0/8 or fd00::/8, got 'bogus'"]
