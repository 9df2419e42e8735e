"""Where log records go during a run: every record (ours and the libraries', INFO and up) to
the run's `run.log`; to the console only our own warnings. Library notices meant for their
developers (open_clip's "No pretrained weights loaded" when we train from scratch, ...) stay
out of the user's terminal but are kept.

Without a handler on the root logger, the first module-level `logging.warning()` a library
calls installs a console handler for everything (`WARNING:root:...`); this one prevents it.
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile
from contextlib import contextmanager
from typing import Iterator

from pipeline.core import storage

LOG_FILE = "run.log"


class OursOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.startswith("pipeline") and record.levelno >= logging.WARNING


@contextmanager
def run_log(run_dir: str) -> Iterator[None]:
    """Send log records to `<run_dir>/run.log` (uploaded at the end on an object store)."""
    local = storage.is_local(run_dir)
    if local:
        storage.makedirs(run_dir)
        path = storage.join(run_dir, LOG_FILE)
    else:
        handle, path = tempfile.mkstemp(suffix=".log")
        os.close(handle)
    to_file = logging.FileHandler(path, encoding="utf-8")
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    to_console = logging.StreamHandler(sys.stderr)
    to_console.addFilter(OursOnly())
    to_console.setFormatter(logging.Formatter("warning: %(message)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(to_file)
    root.addHandler(to_console)
    root.setLevel(min(level, logging.INFO) if level else logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(to_file)
        root.removeHandler(to_console)
        root.setLevel(level)
        to_file.close()
        if not local:
            with open(path, "rb") as stream:
                storage.write_bytes(storage.join(run_dir, LOG_FILE), stream.read())
            os.unlink(path)
