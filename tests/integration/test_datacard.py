"""Every run writes `datacard.json` (valid against schemas/datacard.schema.json) that agrees
with its summary and kept rows, and a Data card section in its report; `curate diff` says
what changed between two releases."""
import json

import jsonschema
import pyarrow.compute as pc
import pytest

from pipeline.cli import main
from tests.support import ROOT, read_dataset, read_summary, run, text_config, write_sample

SCHEMA = json.loads((ROOT / "schemas" / "datacard.schema.json").read_text())


def assert_valid(card: dict) -> None:
    jsonschema.validate(card, SCHEMA)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """A text-only release, and a second one of the same input plus new rows, excluding it."""
    folder = tmp_path_factory.mktemp("datacard")
    first = write_sample(folder / "in" / "a.parquet", rows=600, seed=0)
    write_sample(folder / "in" / "b.parquet", rows=300, seed=1)
    run(text_config(first, folder / "a", processes=1))
    run(text_config(folder / "in", folder / "b", processes=1, exclude=[str(folder / "a")]))
    return folder / "a", folder / "b"


@pytest.mark.slow
def test_every_run_writes_a_datacard(two_runs):
    run_a, run_b = two_runs
    for run_dir in two_runs:
        card = json.loads((run_dir / "datacard.json").read_text())
        assert_valid(card)
        summary = read_summary(run_dir)
        assert card["rows"] == {"input": summary["input_rows"], "kept": summary["kept_rows"]}
        assert [s["name"] for s in card["stages"]] == [s["name"] for s in summary["stages"]]
        assert sum(card["drops"].values()) == summary["input_rows"] - summary["kept_rows"]
        kept = read_dataset(run_dir / "kept")
        assert sum(card["languages"].values()) == kept.num_rows
        assert card["languages"] == {v["values"]: v["counts"] for v in pc.value_counts(kept["language"]).to_pylist()}
        metadata = card["metadata"]
        assert 0 < metadata["kept_entries"] <= metadata["matched_entries"]
        assert 0 < metadata["matches_after"] <= metadata["matches_before"]
        counts = [e["count"] for e in metadata["top_entries"]]
        assert len(counts) == 10 and counts == sorted(counts, reverse=True)
        assert sum(s["rows"] for s in card["sources"]) == summary["input_rows"]
        assert card["shards"] == {"count": 0, "samples": 0, "tars": {}}   # text only
        html = (run_dir / "report.html").read_text()
        assert 'id="datacard"' in html and "Data card" in html
    card_b = json.loads((run_b / "datacard.json").read_text())
    assert card_b["exclusions"]["runs"] == [str(run_a)]
    # every copy of each of A's kept rows (the sample repeats some)
    assert card_b["exclusions"]["in_earlier_run"] >= read_summary(run_a)["kept_rows"] > 0


@pytest.mark.slow
def test_diff_counts_rows_added_and_removed_by_reason(two_runs, capsys):
    run_a, run_b = two_runs
    assert main(["diff", str(run_a), str(run_b), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    kept_a, kept_b = read_summary(run_a)["kept_rows"], read_summary(run_b)["kept_rows"]
    assert result["kept"] == {"a": kept_a, "b": kept_b}
    assert result["removed"] == kept_a and result["added"] == kept_b   # B keeps none of A's rows
    assert result["removed_by_reason"] == {"dedup/in_earlier_run": kept_a}
    assert main(["diff", str(run_a), str(run_b)]) == 0
    text = capsys.readouterr().out
    assert f"rows removed in B: {kept_a:,}" in text and f"dedup/in_earlier_run: {kept_a:,}" in text
    assert "tars: 0 added, 0 removed, 0 changed, 0 unchanged" in text


@pytest.mark.slow
def test_takedown_of_a_text_only_run(two_runs, tmp_path):
    """A run without shards: the kept rows, ledger, summary and data card still account."""
    import shutil

    from tests.support import assert_run_invariants

    run_dir = tmp_path / "a"
    shutil.copytree(two_runs[0], run_dir)
    uids = read_dataset(run_dir / "kept")["uid"].to_pylist()[:3]
    (tmp_path / "uids.txt").write_text("\n".join(uids) + "\n")
    assert main(["takedown", str(run_dir), "--list", f"uids:{tmp_path / 'uids.txt'}"]) == 0
    summary = assert_run_invariants(run_dir)
    assert summary["stages"][-1]["dropped"] == {"taken_down": 3}
    card = json.loads((run_dir / "datacard.json").read_text())
    assert_valid(card)
    assert card["safety"]["taken_down"] == 3 and card["rows"]["kept"] == summary["kept_rows"]
    assert card["safety"]["takedowns"][0]["tars_changed"] == []
