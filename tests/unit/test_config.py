import pytest

from pipeline.config import load_config, settings_from_dict
from pipeline.errors import UserError


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_sections_load_into_typed_settings(tmp_path):
    settings = load_config(write(tmp_path, "input: {path: a.parquet}\nseed: 3\n"
                                           "caption_filter: {min_chars: 7}\nlanguage: {min_score: 1}\n"))
    assert settings.seed == 3
    assert settings.input.path == ["a.parquet"]
    assert settings.caption_filter.min_chars == 7 and settings.caption_filter.max_chars == 1000
    assert settings.language.min_score == 1.0 and isinstance(settings.language.min_score, float)
    assert settings.section("dedup") is None and settings.section("caption_filter") is not None


def test_disabled_section_does_not_run(tmp_path):
    settings = load_config(write(tmp_path, "dedup: {enabled: false}\n"))
    assert settings.section("dedup") is None


def test_unknown_key_names_key_and_file(tmp_path):
    path = write(tmp_path, "dedup: {keys: [url], kesy: 1}\n")
    with pytest.raises(UserError, match=r"c\.yaml: unknown key 'dedup\.kesy'"):
        load_config(path)


def test_wrong_type_names_key_and_file(tmp_path):
    with pytest.raises(UserError, match=r"c\.yaml: caption_filter\.min_chars: expected an integer"):
        load_config(write(tmp_path, "caption_filter: {min_chars: many}\n"))
    with pytest.raises(UserError, match=r"engine: must be one of"):
        load_config(write(tmp_path, "engine: dask\n"))


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(UserError, match=r"c\.yaml: not valid YAML at line \d"):
        load_config(write(tmp_path, "a: 1\nb: [\n"))
    with pytest.raises(UserError, match="no such config file"):
        load_config(tmp_path / "nope.yaml")


def test_overrides_are_typed(tmp_path):
    settings = load_config(write(tmp_path, "metadata: {t: 5}\n"),
                           ["metadata.t=7", "language.keep=[en, de]", "engine=spark"])
    assert settings.metadata.t == 7
    assert settings.language.keep == ["en", "de"]
    assert settings.engine == "spark"
    with pytest.raises(UserError, match="metadata.t: expected an integer"):
        settings_from_dict({}, "x.yaml", ["metadata.t=lots"])


def test_shipped_example_configs_load():
    from tests.support import ROOT
    paths = sorted((ROOT / "jobs" / "configs").glob("*.yaml"))
    assert {"full.yaml", "text.yaml"} <= {p.name for p in paths}, "the shipped example configs were not found"
    for path in paths:
        settings = load_config(path)
        assert settings.section("dedup") is not None, path


def test_full_example_has_every_registered_section():
    import yaml

    from pipeline.config import SECTIONS
    from pipeline.stages import REGISTRY
    from tests.support import ROOT

    full = yaml.safe_load((ROOT / "jobs" / "configs" / "full.yaml").read_text())
    assert {name for name, _ in SECTIONS} <= set(full), "full.yaml lacks a registered section"
    settings = load_config(ROOT / "jobs" / "configs" / "full.yaml")
    for stage in REGISTRY:  # each section loads into the settings class its module registers
        assert isinstance(settings.section(stage.SECTION), stage.SETTINGS)
        assert stage.SETTINGS.__module__ == stage.__name__, "a stage's settings live in its module"
