"""One config on the local, Ray and Spark engines: identical kept uids, ledger and summary counts."""
import pytest

from tests.support import assert_run_invariants, kept_uids, ledger_rows, read_summary, run, text_config, write_sample

pytestmark = pytest.mark.slow  # the Ray and Spark engines


def counts(run_dir):
    return [(s["name"], s["rows_in"], s["rows_out"], s["dropped"]) for s in read_summary(run_dir)["stages"]]


def test_local_ray_spark_give_the_same_result(tmp_path):
    sample = write_sample(tmp_path / "s.parquet", rows=5000)
    runs = {}
    for engine in ("local", "ray", "spark"):
        config = text_config(sample, tmp_path / engine, engine=engine)
        config["ray"] = {"num_cpus": 2}
        config["spark"] = {"master": "local[2]"}
        run(config)
        assert_run_invariants(tmp_path / engine)
        runs[engine] = tmp_path / engine
    assert kept_uids(runs["local"]) == kept_uids(runs["ray"]) == kept_uids(runs["spark"])
    assert len(kept_uids(runs["local"])) > 500
    assert counts(runs["local"]) == counts(runs["ray"]) == counts(runs["spark"])
    assert ledger_rows(runs["local"]) == ledger_rows(runs["ray"]) == ledger_rows(runs["spark"])
