"""The run report: `write_report(run_dir)` (re)writes RUN_DIR/report.html."""
from pipeline.report.page import write_report

__all__ = ["write_report"]
