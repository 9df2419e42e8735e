"""caption_filter: drop captions that cannot describe an image.

Reasons, checked in this order: `empty_text` (null or whitespace), `filename_text` (a file
name such as IMG_1234.jpg), `placeholder_text` (image, untitled, ...), `too_short`,
`too_long`, `too_few_words`.

Characters are Unicode code points, counted after removing surrounding whitespace (with
`strip: false`, of the caption as given, as DataComp's `len(text)`). Words are counted as
`word_split` says: `whitespace`, runs between the characters Python's `str.split()` splits on
(DataComp's basic filter, `len(text.split())`); `fasttext`, the tokens of fastText's
tokenizer (`fasttext.tokenize`: split on space, tab, newline, CR, VT, FF and NUL, each newline
one more token `</s>`; DataComp's image-based filter).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.constraints import AtLeast, Invalid
from pipeline.core.stage import Stage, first_reason, with_reason
from pipeline.core.steps import Step

FILENAME = r"(?i)^\S*\.(jpe?g|png|gif|webp|bmp|tiff?|heic|svg|avif)$"
PLACEHOLDERS = [
    "image", "images", "img", "photo", "photos", "picture", "pic", "untitled", "untitled image",
    "no image", "image not found", "thumbnail", "thumb", "placeholder", "logo", "icon", "banner",
    "spacer", "blank", "null", "none", "undefined", "nan", "alt", "alt text", "default",
    "loading", "avatar", "click here", "image description", "photo description",
]
PYTHON_SPACE = "\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"   # str.isspace
FASTTEXT_SPACE = " \t\n\r\x0b\x0c\x00"   # fastText's Dictionary::readWord


SECTION = "caption_filter"


@dataclass
class CaptionFilterSettings:
    min_chars: Annotated[int, AtLeast(0)] = 5
    max_chars: Annotated[int, AtLeast(1)] = 1000
    min_words: Annotated[int, AtLeast(0)] = 2
    drop_junk: bool = True
    strip: bool = True                                   # count characters without surrounding whitespace
    word_split: Literal["whitespace", "fasttext"] = "whitespace"
    enabled: bool = True

    def validate(self) -> None:
        if self.min_chars > self.max_chars:
            raise Invalid("min_chars", f"must be at most max_chars ({self.max_chars})", self.min_chars)


SETTINGS = CaptionFilterSettings


class CaptionFilterStage(Stage):
    name = "caption_filter"
    label = "caption filter"
    inputs = ("text",)
    outputs = ()

    def process(self, table: pa.Table) -> pa.Table:
        s = self.settings
        text = pc.utf8_trim_whitespace(table["text"]) if s.strip else table["text"]
        chars = pc.utf8_length(text)
        words = count_words(text, s.word_split)
        checks = [
            (pc.or_kleene(pc.is_null(text), pc.equal(chars, 0)), "empty_text"),
        ]
        if s.drop_junk:
            lowered = pc.utf8_lower(pc.replace_substring_regex(text, r"[\s_\-.:]+", " "))
            lowered = pc.utf8_trim(lowered, " ")
            checks += [
                (pc.match_substring_regex(text, FILENAME), "filename_text"),
                (pc.is_in(lowered, value_set=pa.array(PLACEHOLDERS)), "placeholder_text"),
            ]
        checks += [
            (pc.less(chars, s.min_chars), "too_short"),
            (pc.greater(chars, s.max_chars), "too_long"),
            (pc.less(words, s.min_words), "too_few_words"),
        ]
        return with_reason(table, first_reason(checks, table.num_rows))


def count_words(text, word_split: str):
    """Words of each caption as `word_split` counts them (see the module's docstring)."""
    if word_split == "fasttext":
        return pc.add(pc.count_substring_regex(text, f"[^{FASTTEXT_SPACE}]+"), pc.count_substring(text, "\n"))
    return pc.count_substring_regex(text, f"[^{PYTHON_SPACE}]+")


def build_step(settings: CaptionFilterSettings, run) -> Step:
    return Step(CaptionFilterStage, settings)


STAGE = CaptionFilterStage
