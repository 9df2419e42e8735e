from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

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

    def map(self, fn: Callable[[Any], Any], tasks: Sequence[Any],
            resources: Resources = Resources()) -> list[Any]:
        raise NotImplementedError

    def parallelism(self) -> int:
        """How many tasks run at once (for messages)."""
        return 1

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
