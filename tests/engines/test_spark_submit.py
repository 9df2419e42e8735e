"""The text pipeline through `spark-submit jobs/curate.py`: the job uses the session that
spark-submit made (not a second local one) and matches the local engine."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support import ROOT, kept_uids, ledger_rows, run, text_config, write_sample

pytestmark = pytest.mark.slow  # spark-submit and the Spark engine


def test_spark_submit_matches_local(tmp_path):
    sample = write_sample(tmp_path / "s.parquet", rows=2000)
    local = text_config(sample, tmp_path / "local")
    run(local)
    config = text_config(sample, tmp_path / "submitted", engine="spark")
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(config))
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    submit = Path(sys.executable).parent / "spark-submit"
    result = subprocess.run([str(submit), "--master", "local[2]", "--conf", "spark.ui.enabled=false",
                             str(ROOT / "jobs" / "curate.py"), "--config", str(tmp_path / "job.yaml"),
                             "--engine", "spark"], env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    assert kept_uids(tmp_path / "submitted") == kept_uids(tmp_path / "local")
    assert ledger_rows(tmp_path / "submitted") == ledger_rows(tmp_path / "local")
