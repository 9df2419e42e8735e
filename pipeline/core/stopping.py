"""Stopping a run: the driver's stop signals, and workers that die with their driver.

On SIGTERM or SIGINT, `stop_on_signals()` (the `curate` command runs every command in it)
raises `Stopped` in the main thread, wherever it is. On the way out every `with engine:`
stops that engine's work at once (`Engine.stop`: the local engine terminates its pool, Ray
cancels its tasks, Spark its jobs), and `curate` prints one line and exits with 128 + the
signal's number (143 for SIGTERM, 130 for SIGINT). A second signal while stopping exits at
once. Every part a worker commits is atomic (a temporary renamed into place), so a stopped run
resumes where it stopped when the same command runs again.

A driver killed outright (SIGKILL, out of memory) runs no code: its local workers notice by
themselves (`exit_with_parent`) and end within `PARENT_POLL_S`.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterator

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
PARENT_POLL_S = 0.25          # how often a worker checks that its driver is alive
ORPHANED_EXIT_STATUS = 70     # a worker's exit status once its driver is gone (nobody reads it)
_PR_SET_PDEATHSIG = 1


class Stopped(KeyboardInterrupt):
    """The run was stopped by signal `signum`. A KeyboardInterrupt, so everything that lets
    Ctrl-C through (handlers of `Exception`) lets any stop signal through."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_status(self) -> int:
        """The shell's convention for a process ended by a signal: 128 + its number."""
        return 128 + self.signum

    @property
    def message(self) -> str:
        """The one line `curate` prints."""
        return f"curate: stopped by {signal.Signals(self.signum).name} (rerun the same command to resume)"


@contextmanager
def stop_on_signals() -> Iterator["_StopHandler"]:
    """Within the block, SIGTERM and SIGINT raise `Stopped` in the main thread; a second one
    ends the process at once (`os._exit`) with the same status. Yields the handler: its
    `received` is the first stop signal (None before one), its `stopped_by` the `Stopped` to
    report. The previous handlers come back after the block. Outside the main thread (where
    Python allows no signal handlers) the handler is installed nowhere."""
    if threading.current_thread() is not threading.main_thread():
        yield _StopHandler()
        return
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    handler = _StopHandler()
    for signum in STOP_SIGNALS:
        signal.signal(signum, handler)
    try:
        yield handler
    finally:
        for signum, earlier in previous.items():
            if earlier is not None:   # None: set outside Python, cannot be put back
                signal.signal(signum, earlier)


class _StopHandler:
    """The stop signals' handler: the first signal raises `Stopped`; a later one exits at once."""

    def __init__(self):
        self.received: int | None = None

    def __call__(self, signum: int, frame) -> None:
        if self.received is not None:
            os.write(2, f"curate: stopped again by {signal.Signals(signum).name}; exiting without "
                        f"waiting (rerun the same command to resume)\n".encode())
            os._exit(128 + self.received)
        self.received = signum
        raise Stopped(signum)

    def stopped_by(self, interrupt: KeyboardInterrupt | None) -> Stopped:
        """`interrupt` (None: an error on the way out of a stop) as the `Stopped` of the
        signal that caused it. Libraries that wait in native code turn the handler's
        exception into a plain KeyboardInterrupt (`ray.get` does), so the signal is the one
        this handler saw, else SIGINT (a Ctrl-C that another handler turned into a
        KeyboardInterrupt)."""
        if isinstance(interrupt, Stopped):
            return interrupt
        return Stopped(self.received if self.received is not None else signal.SIGINT)


@contextmanager
def keeping_stop_handlers() -> Iterator[None]:
    """Put `stop_on_signals`' handler back after the block where the block replaced it:
    `ray.init` installs `sys.exit` for SIGTERM, a SparkContext its own handler for SIGINT."""
    ours = {signum: handler for signum in STOP_SIGNALS
            if isinstance(handler := signal.getsignal(signum), _StopHandler)}
    try:
        yield
    finally:
        if threading.current_thread() is threading.main_thread():
            for signum, handler in ours.items():
                signal.signal(signum, handler)


def exit_with_parent(parent_pid: int, parent_thread_lasts: bool = False,
                     poll_s: float = PARENT_POLL_S) -> threading.Thread:
    """Make this process end once `parent_pid` is no longer its parent (the driver died, even
    by SIGKILL): a daemon thread polls `os.getppid()` every `poll_s` and calls `os._exit`,
    which stops every thread of the process where it is (downloads included) and commits
    nothing more.

    `parent_thread_lasts`: the parent's thread that started this process lives as long as the
    parent needs this process (its main thread). Then, on Linux, the kernel also kills this
    process the moment that thread ends (PR_SET_PDEATHSIG, which fires on the creating
    thread's end, not the process's), with no Python thread needing the GIL to notice."""
    if parent_thread_lasts:
        _kill_when_parent_thread_ends(parent_pid)
    watchdog = threading.Thread(target=_watch_parent, args=(parent_pid, poll_s),
                                name="exit-with-parent", daemon=True)
    watchdog.start()
    return watchdog


def _watch_parent(parent_pid: int, poll_s: float) -> None:
    while os.getppid() == parent_pid:
        time.sleep(poll_s)
    os._exit(ORPHANED_EXIT_STATUS)


def _kill_when_parent_thread_ends(parent_pid: int) -> None:
    """PR_SET_PDEATHSIG with SIGKILL (Linux); nothing where prctl is missing."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:   # the parent died before prctl took effect
        os._exit(ORPHANED_EXIT_STATUS)
