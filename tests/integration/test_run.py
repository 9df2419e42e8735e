"""The text pipeline end to end on the local engine: contract, conservation, errors, resume."""
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute
import pyarrow.parquet as pq
import pytest
import yaml

from tests.support import (
    assert_run_invariants,
    kept_uids,
    ledger_rows,
    read_dataset,
    read_summary,
    run,
    run_and_kill,
    text_config,
    write_sample,
)

CURATE = [sys.executable, "-m", "pipeline"]


def test_text_pipeline_contract(tmp_path):
    sample = write_sample(tmp_path / "in" / "sample.parquet", rows=4000)
    summary = run(text_config(sample, tmp_path / "run"))
    assert [s["name"] for s in summary["stages"]] == \
        ["ingest", "dedup", "caption_filter", "language", "metadata"]
    assert_run_invariants(tmp_path / "run")
    drops = {s["name"]: s["dropped"] for s in summary["stages"]}
    assert drops["ingest"]["invalid_url"] > 0 and drops["dedup"]["duplicate"] > 0
    assert {"filename_text", "placeholder_text", "empty_text"} <= set(drops["caption_filter"])
    assert drops["language"]["wrong_language"] > 0 and drops["metadata"]["balanced"] > 0
    kept = read_dataset(tmp_path / "run" / "kept")
    for column in ("uid", "url", "text", "width", "language", "language_score", "entry_ids"):
        assert column in kept.column_names
    assert not any(c.startswith("_") for c in kept.column_names)
    assert set(kept["language"].to_pylist()) == {"en"}
    counts = pq.read_table(next((tmp_path / "run" / "steps").glob("*_metadata/entry_counts.parquet")))
    dog = counts.filter(pa.compute.equal(counts["entry"], "dog"))
    assert dog["count_before"][0].as_py() > 50  # the popular entry exceeds t ...
    assert dog["count_after"][0].as_py() < dog["count_before"][0].as_py()  # ... and is cut down


def test_same_seed_same_result_other_seed_differs(tmp_path):
    sample = write_sample(tmp_path / "sample.parquet", rows=3000)
    run(text_config(sample, tmp_path / "a"))
    run(text_config(sample, tmp_path / "b", processes=1))
    run(text_config(sample, tmp_path / "c", seed=1))
    assert kept_uids(tmp_path / "a") == kept_uids(tmp_path / "b")
    assert kept_uids(tmp_path / "a") != kept_uids(tmp_path / "c")


def test_cli_bad_inputs_exit_nonzero_with_one_line(tmp_path):
    good = write_sample(tmp_path / "s.parquet", rows=50)
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 nonsense")
    cases = {
        "missing": ({"input": {"path": str(tmp_path / "nothere.parquet")}}, "nothere.parquet: no such file"),
        "unreadable": ({"input": {"path": str(tmp_path / "broken.parquet")}}, "broken.parquet: not a readable parquet"),
        "column": ({"input": {"path": str(good), "url_col": "URL"}}, "s.parquet: missing column 'URL'"),
        "unknown_key": ({"input": {"path": str(good)}, "dedupe": {}}, "unknown key 'dedupe'"),
        "wrong_type": ({"input": {"path": str(good)}, "metadata": {"t": "big"}}, "metadata.t: expected an integer"),
    }
    for name, (config, message) in cases.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**config, "output": str(tmp_path / name)}))
        result = subprocess.run(CURATE + ["run", str(path)], capture_output=True, text=True)
        assert result.returncode == 2, (name, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (name, result.stderr)
        assert "Traceback" not in result.stderr


def test_rerun_with_another_config_is_refused(tmp_path):
    sample = write_sample(tmp_path / "s.parquet", rows=200)
    config = text_config(sample, tmp_path / "run")
    run(config)
    config["metadata"]["t"] = 5
    try:
        run(config)
    except Exception as exc:
        assert "different config" in str(exc) and "metadata" in str(exc)
    else:
        raise AssertionError("a changed config must not reuse the run folder")


def test_a_run_folder_of_an_earlier_version_resumes(tmp_path):
    """config.json written before some keys existed reads as if it had their defaults: the
    same config resumes it (nothing redone), a changed one is still refused."""
    import json

    sample = write_sample(tmp_path / "s.parquet", rows=200)
    config = text_config(sample, tmp_path / "run")
    first = run(config)
    saved = tmp_path / "run" / "config.json"
    older = json.loads(saved.read_text())
    del older["exclude"], older["input"]["strict"], older["dedup"]["enabled"]   # keys added later
    saved.write_text(json.dumps(older))
    marker = tmp_path / "run" / "steps" / "01_dedup" / "_SUCCESS"
    mtime = marker.stat().st_mtime_ns
    assert run(config) == first and marker.stat().st_mtime_ns == mtime
    config["metadata"]["t"] = 5   # not the default the old file is read with
    try:
        run(config)
    except Exception as exc:
        assert "different config" in str(exc) and "metadata" in str(exc)
    else:
        raise AssertionError("a changed config must not reuse the run folder")


@pytest.mark.slow
def test_sigkill_then_rerun_gives_identical_output(tmp_path):
    sample = write_sample(tmp_path / "s.parquet", rows=60_000, row_group=2000)
    config = text_config(sample, tmp_path / "killed", input={"path": [str(sample)], "part_rows": 2000})
    (tmp_path / "killed.yaml").write_text(yaml.safe_dump(config))
    clean = dict(config, output=str(tmp_path / "clean"))
    run(clean)

    done_dir = tmp_path / "killed" / "steps" / "03_language" / "map" / "done"
    finished = {p: p.stat().st_mtime_ns for p in run_and_kill(tmp_path / "killed.yaml", done_dir, 3)}
    assert finished, "the run should have been killed part-way through the language step"
    assert not (tmp_path / "killed" / "summary.json").exists()

    result = subprocess.run(CURATE + ["run", str(tmp_path / "killed.yaml")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert all(p.stat().st_mtime_ns == t for p, t in finished.items()), "finished parts were redone"
    assert kept_uids(tmp_path / "killed") == kept_uids(tmp_path / "clean")
    assert ledger_rows(tmp_path / "killed") == ledger_rows(tmp_path / "clean")
    assert_run_invariants(tmp_path / "killed")
    ours, theirs = read_summary(tmp_path / "killed"), read_summary(tmp_path / "clean")
    assert [(s["rows_in"], s["rows_out"], s["dropped"]) for s in ours["stages"]] == \
        [(s["rows_in"], s["rows_out"], s["dropped"]) for s in theirs["stages"]]
    assert not list(Path(tmp_path / "killed").rglob("*.tmp")), "no temporary files left behind"
