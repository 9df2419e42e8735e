"""Library notices go to the run's run.log, not the console; our own warnings reach both."""
import subprocess
import sys

SCRIPT = """
import logging, sys
from pipeline.clip.model import load_clip
from pipeline.run_log import run_log

with run_log(sys.argv[1]):
    load_clip("curate-tiny", None, device="cpu")   # open_clip: "No pretrained weights loaded"
    logging.getLogger("pipeline.stages.shard").warning("3 shard(s): fewer than 8")
"""


def test_library_notices_go_to_the_log_file_and_ours_to_the_console(tmp_path):
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "run")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "No pretrained weights" not in result.stderr and "WARNING:root" not in result.stderr
    assert "warning: 3 shard(s): fewer than 8" in result.stderr
    log = (tmp_path / "run" / "run.log").read_text()
    assert "No pretrained weights loaded for model 'curate-tiny'" in log
    assert "pipeline.stages.shard: 3 shard(s): fewer than 8" in log
