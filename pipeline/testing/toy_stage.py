"""A toy stage, as a newcomer would add one: this module plus one line in
`pipeline.stages.REGISTRY` (the test inserts it there). It adds `caption_words` and drops
rows whose caption has fewer than `min_words` words as `toy_short`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.constraints import AtLeast
from pipeline.core.stage import Stage, with_reason
from pipeline.core.steps import Step

SECTION = "toy"


@dataclass
class ToySettings:
    min_words: Annotated[int, AtLeast(0)] = 3
    enabled: bool = True


SETTINGS = ToySettings


class ToyStage(Stage):
    name = "toy"
    label = "toy word count"
    inputs = ("text",)
    outputs = (("caption_words", pa.int32()),)

    def process(self, table: pa.Table) -> pa.Table:
        words = pc.list_value_length(pc.utf8_split_whitespace(pc.fill_null(table["text"], ""))).cast(pa.int32())
        table = table.append_column("caption_words", words)
        short = pc.less(words, self.settings.min_words)
        return with_reason(table, pc.if_else(short, pa.scalar("toy_short"), pa.scalar(None, pa.string())))


def build_step(settings: ToySettings, run) -> Step:
    return Step(ToyStage, settings)


STAGE = ToyStage


class UndeclaredStage(ToyStage):
    """Adds a column it does not declare: the part task refuses it."""
    name = "toy_undeclared"

    def process(self, table: pa.Table) -> pa.Table:
        return super().process(table).append_column("surprise", pa.nulls(table.num_rows, pa.string()))
