from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from pipeline.core import storage
from pipeline.core.stage import Resources


@dataclass
class WithStorage:
    """A task function that first gives its worker the driver's storage settings (endpoint,
    credentials, `storage_options`): workers share no file system or home folder with it."""
    fn: Callable[[Any], Any]
    settings: dict

    def __call__(self, task: Any) -> Any:
        storage.apply(self.settings)
        return self.fn(task)


class Engine:
    name = "base"

    @staticmethod
    def prepared(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """`fn` as the engine ships it to a worker process."""
        return WithStorage(fn, storage.worker_settings())

    def map(self, fn: Callable[[Any], Any], tasks: Sequence[Any], resources: Resources = Resources(),
            on_result: Optional[Callable[[int, Any], None]] = None) -> list[Any]:
        """`[fn(t) for t in tasks]`, in order. `on_result(index, result)` is called once per
        task as it finishes, in the order they finish (one call at a time, possibly from
        another thread than the caller's), so the driver can report progress."""
        raise NotImplementedError

    def parallelism(self) -> int:
        """How many tasks run at once (for messages)."""
        return 1

    def close(self) -> None:
        """Release the engine once its work is done (waits for nothing left running)."""

    def stop(self) -> None:
        """End at once the work this engine started (worker processes, tasks, jobs) without
        waiting for it, then release what `close` releases. Used when a run ends by an
        exception: a stop signal (`pipeline.core.stopping.Stopped`), a failed task."""
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, traceback):
        """`close` after the block; `stop` when it raised. A failure to stop is logged, never
        raised: it must not hide the exception that ended the block."""
        if exc_type is None:
            self.close()
            return
        try:
            self.stop()
        except Exception as error:  # pylint: disable=broad-except
            logging.getLogger(__name__).info("engine %s: stopping failed: %r", self.name, error)
