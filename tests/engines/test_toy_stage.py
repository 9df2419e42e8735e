"""Adding a stage is one module and one registry line: a toy stage (pipeline.testing.toy_stage)
runs on every engine with the same result, its declared column in kept/, its reason in the
ledger; a stage that adds a column it did not declare is refused by the part task."""
import pyarrow.compute as pc
import pytest

from pipeline import stages
from pipeline.testing import toy_stage
from tests.support import assert_run_invariants, kept_uids, ledger_rows, read_dataset, run, text_config, write_sample


@pytest.fixture
def with_toy(monkeypatch):
    registry = list(stages.REGISTRY)
    registry.insert(registry.index(stages.caption_filter) + 1, toy_stage)   # the one registry line
    monkeypatch.setattr(stages, "REGISTRY", registry)


def toy_config(sample, output, engine):
    config = text_config(sample, output, engine=engine, toy={"min_words": 7})
    config.update(ray={"num_cpus": 2}, spark={"master": "local[2]"})
    return config


@pytest.mark.slow
def test_a_toy_stage_runs_on_every_engine(with_toy, tmp_path):
    sample = write_sample(tmp_path / "s.parquet", rows=3000)
    runs = {}
    for engine in ("local", "ray", "spark"):
        summary = run(toy_config(sample, tmp_path / engine, engine))
        assert_run_invariants(tmp_path / engine)
        names = [s["name"] for s in summary["stages"]]
        assert names.index("toy") == names.index("caption_filter") + 1
        toy = summary["stages"][names.index("toy")]
        assert toy["dropped"].get("toy_short", 0) > 0
        runs[engine] = tmp_path / engine
    kept = read_dataset(runs["local"] / "kept")
    assert "caption_words" in kept.column_names
    assert pc.min(kept["caption_words"]).as_py() >= 7 and kept.num_rows > 100
    assert kept_uids(runs["local"]) == kept_uids(runs["ray"]) == kept_uids(runs["spark"])
    assert ledger_rows(runs["local"]) == ledger_rows(runs["ray"]) == ledger_rows(runs["spark"])


def test_a_stage_adding_an_undeclared_column_is_refused(monkeypatch, tmp_path):
    monkeypatch.setattr(toy_stage, "build_step", lambda settings, run: toy_stage.Step(toy_stage.UndeclaredStage,
                                                                                       settings))
    registry = list(stages.REGISTRY) + [toy_stage]
    monkeypatch.setattr(stages, "REGISTRY", registry)
    sample = write_sample(tmp_path / "s.parquet", rows=200)
    config = toy_config(sample, tmp_path / "run", "local")
    config["processes"] = 1
    with pytest.raises(RuntimeError, match=r"added columns \['surprise'\] it did not declare"):
        run(config)
