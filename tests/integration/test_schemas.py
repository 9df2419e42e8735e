"""A text run's kept/ and ledger/ follow schemas/; `curate metadata build` writes the entry list."""
import pyarrow.dataset as ds

from pipeline.app import run_pipeline
from pipeline.config import settings_from_dict
from schemas import LEDGER_V1, kept_schema, missing_or_mistyped
from tests.support import text_config, write_sample


def test_run_outputs_follow_the_schemas(tmp_path):
    sample = write_sample(tmp_path / "s.parquet", rows=300)
    config = text_config(sample, tmp_path / "run", processes=1)
    run_pipeline(settings_from_dict(config, "t.yaml"), config["output"], log=lambda *_: None)
    kept = ds.dataset(str(tmp_path / "run" / "kept")).schema
    assert missing_or_mistyped(kept, kept_schema(["language", "metadata"])) == []
    assert "width" in kept.names  # the input's own column rides along
    ledger = ds.dataset(str(tmp_path / "run" / "ledger")).schema
    assert missing_or_mistyped(ledger, LEDGER_V1) == []


def test_metadata_build_command_writes_the_entry_list(tmp_path):
    import json
    import subprocess
    import sys
    (tmp_path / "mine.txt").write_text("zebra crossing\nred panda\n")
    out = tmp_path / "entries.json"
    result = subprocess.run([sys.executable, "-m", "pipeline", "metadata", "build", "--sources", "wordfreq:100",
                             str(tmp_path / "mine.txt"), "--output", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    entries = json.loads(out.read_text())
    assert len(entries) == 102 and entries[-2:] == ["zebra crossing", "red panda"]
