from __future__ import annotations

from typing import Any, Callable, Sequence

from pipeline.core.stage import Resources


class Engine:
    name = "base"

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
