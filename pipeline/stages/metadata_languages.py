"""Worldwide metadata (MetaCLIP 2): one entry list per language, matched and balanced per language.

Lists: a folder holding one file per metadata language code, `<code>.json` (a JSON array of
strings, MetaCLIP 2's `data/metadata/<code>.json`) or `<code>.txt` (one entry a line).

Language: a row's `language` (the language stage's LID code) becomes a metadata code through
`LID_TO_METADATA` (MetaCLIP 2's `lid_langcode_to_metadata_langcode`; codes not in the table map
to themselves) extended by `metadata.language_map`. A row whose code has no list:
`no_metadata_language`.

Matching (MetaCLIP 2's rule): the caption is stripped, then spaced as in MetaCLIP (padded,
`, . ; : ? ! \\`` wrapped in spaces, tabs and newlines as spaces); an entry gets a space before
it unless its first character is "CJK or similar", and a space after it unless its last one
is. "CJK or similar": the CJK ideograph blocks, Thai, Lao, Burmese, Khmer, Tibetan, ASCII
punctuation and the fullwidth/CJK punctuation in `CJK_PUNCTUATION` -- plus, our one addition,
Japanese kana (MetaCLIP 2's ranges leave kana out, so a kana entry would need spaces that
Japanese never writes). So entries of the languages written without spaces (`NO_SPACE_LANGUAGES`)
match inside a caption; the entries of the others match whole words.

Balancing (MetaCLIP 2's `global_count` and `curate`): English keeps `t`; its tail share is
`p = t_to_p(counts_en, t)`, and each other language gets `t = p_to_t(counts_lang, p)` unless
`metadata.t_per_language` gives one (t is at least 1). Entry probability `min(1, t / count)`;
a row's keep probability is `1 - prod(1 - p_entry)` over its matched entries, compared with one
draw from (uid, seed).
"""
from __future__ import annotations

import functools
import os
import string
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core import storage
from pipeline.errors import UserError

REFERENCE_LANGUAGE = "en"

# LID code (fastText lid.176, and the older codes other identifiers give) -> metadata code.
# MetaCLIP 2 builds one list per Wikipedia edition and merges the editions whose code has a
# suffix into their prefix (zh_yue, zh_classical, zh_min_nan -> zh; be_tarask -> be;
# nds_nl -> nds); lid.176's codes are Wikipedia's otherwise.
LID_TO_METADATA: dict[str, str] = {
    "yue": "zh",          # Cantonese: Wikipedia's zh-yue, merged into zh
    "zh-cn": "zh", "zh-tw": "zh", "zh-hans": "zh", "zh-hant": "zh",
    "iw": "he", "in": "id", "ji": "yi", "jw": "jv", "mo": "ro",   # retired ISO 639 codes
    "nb": "no",           # Bokmal: Wikipedia's no
    "fil": "tl",          # Filipino: Wikipedia's tl
}

# the languages written without spaces between words (MetaCLIP 2's no_space_languages)
NO_SPACE_LANGUAGES = frozenset({"bo", "dz", "ja", "km", "lo", "my", "ryu", "th", "zh"})

# fullwidth and CJK punctuation that MetaCLIP 2 counts as punctuation (besides ASCII's)
CJK_PUNCTUATION = frozenset("，。、；：？！“”‘’（）【】《》〈〉「」『』～—")

NO_SPACE_RANGES = (
    (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0x2CEB0, 0x2EBEF), (0xF900, 0xFAFF),
    (0x2E80, 0x2EFF), (0x2F00, 0x2FDF), (0x2FF0, 0x2FFF),                  # CJK
    (0x0E00, 0x0E7F), (0x0E80, 0x0EFF), (0x1000, 0x109F), (0x1780, 0x17FF),
    (0x0F00, 0x0FFF),                                                       # Thai .. Tibetan
    (0x3040, 0x309F), (0x30A0, 0x30FF), (0x31F0, 0x31FF), (0xFF65, 0xFF9F),  # kana (ours)
)
ASCII_PUNCTUATION = frozenset(string.punctuation)


WRAPPED = [",", ".", ";", ":", "?", "!", "`"]   # MetaCLIP's punctuation, spaced apart before matching
WRAPPED_PATTERN = "([" + "".join(WRAPPED) + "])"

def no_space_char(char: str) -> bool:
    """MetaCLIP 2's "CJK or similar" (with kana): no space is needed on this side of an entry."""
    if char in ASCII_PUNCTUATION or char in CJK_PUNCTUATION:
        return True
    code = ord(char)
    return any(low <= code <= high for low, high in NO_SPACE_RANGES)


def entry_key(entry: str) -> str:
    """The string an entry is searched as in the spaced caption."""
    before = "" if no_space_char(entry[0]) else " "
    after = "" if no_space_char(entry[-1]) else " "
    return f"{before}{entry}{after}"


def metadata_language(lid_code: str | None, extra: dict[str, str] | None = None) -> str | None:
    if not lid_code:
        return None
    if extra and lid_code in extra:
        return extra[lid_code]
    return LID_TO_METADATA.get(lid_code, lid_code)


def is_language_folder(source: str) -> bool:
    """A folder of per-language lists: a path ending in `/`, or a local directory (a bucket or
    URL folder needs the `/`, so planning a run asks no remote store)."""
    if builtin_source(source):
        return False
    return source.endswith("/") or (storage.is_local(source) and os.path.isdir(storage.normalize(source)))


def list_files(folders: list[str]) -> dict[str, list[str]]:
    """Language code -> its list files, over every folder, in order."""
    found: dict[str, list[str]] = {}
    for folder in folders:
        names = sorted(n for n in storage.list_names(folder) if n.endswith((".json", ".txt")))
        if not names:
            raise UserError(f"metadata.entries: {folder} holds no <language>.json or <language>.txt list")
        for name in names:
            found.setdefault(os.path.splitext(name)[0], []).append(storage.join(folder, name))
    return found


def wordfreq_languages() -> dict[str, str]:
    """Metadata code -> the `wordfreq` code of every language `wordfreq` has a list for."""
    from wordfreq import available_languages

    return {metadata_language(code): code for code in sorted(available_languages())}


def builtin_source(source: str) -> bool:
    return source == "wordnet" or source == "wordfreq" or source.startswith("wordfreq:")


def source_readers(sources: list[str], wordfreq_top: int) -> dict[str, list]:
    """Language code -> the readers (no-argument functions giving entries) of its lists, in
    the order of `sources`: folders' `<code>.json`/`<code>.txt`, `wordfreq[:N]` (each
    language `wordfreq` has), `wordnet` (English)."""
    from pipeline.stages.metadata_entries import entries_file, frequent_words, wordnet_lemmas

    readers: dict[str, list] = {}
    for source in sources:
        if source == "wordnet":
            readers.setdefault(REFERENCE_LANGUAGE, []).append(wordnet_lemmas)
        elif builtin_source(source):
            arg = source.partition(":")[2]
            top = int(arg) if arg.isdigit() else wordfreq_top
            for code, wordfreq_code in wordfreq_languages().items():
                readers.setdefault(code, []).append(lambda c=wordfreq_code, n=top: frequent_words(n, c))
        else:
            for code, paths in list_files([source]).items():
                readers.setdefault(code, []).extend(lambda p=p: entries_file(p) for p in paths)
    return readers


def load_language_entries(sources: list[str], languages: list[str],
                          wordfreq_top: int = 1_000_000) -> dict[str, list[str]]:
    """Per chosen language (`[]` or `all`: every list found), its entries, duplicates removed."""
    readers = source_readers(sources, wordfreq_top)
    chosen = sorted(readers) if not languages or "all" in languages else list(dict.fromkeys(languages))
    missing = [code for code in chosen if code not in readers]
    if missing:
        raise UserError(f"metadata.languages: no list for {', '.join(missing)} in {', '.join(sources)} "
                        f"(lists: {', '.join(sorted(readers))})")
    result = {}
    for code in chosen:
        entries: dict[str, None] = {}
        for read in readers[code]:
            for entry in read():
                entry = entry.strip()
                if entry and not any(c in entry for c in "\t\n\r"):   # never in a spaced caption
                    entries.setdefault(entry, None)
        if entries:
            result[code] = list(entries)
    if not result:
        raise UserError(f"metadata.entries: the lists in {', '.join(sources)} gave no entries")
    return result


@dataclass
class LanguageLayout:
    """The per-language lists as one id space: language i's entries are ids
    offsets[i] .. offsets[i + 1] (the `entry_ids` column and the counts use these ids)."""
    languages: list[str]
    offsets: list[int]

    @property
    def size(self) -> int:
        return self.offsets[-1]

    def span(self, language: str) -> tuple[int, int]:
        i = self.languages.index(language)
        return self.offsets[i], self.offsets[i + 1]

    def language_of(self, entry_ids: np.ndarray) -> np.ndarray:
        return language_of(self.offsets, entry_ids)

    def to_json(self) -> dict:
        return {"languages": self.languages, "offsets": self.offsets}


def language_of(offsets: list[int], entry_ids: np.ndarray) -> np.ndarray:
    """The index (in the layout's `languages`) of each global entry id's language."""
    return np.searchsorted(np.asarray(offsets), entry_ids, side="right") - 1


def layout_of(lists: dict[str, list[str]]) -> LanguageLayout:
    languages = list(lists)
    sizes = [len(lists[code]) for code in languages]
    return LanguageLayout(languages, [0] + np.cumsum(sizes).astype(int).tolist())


@functools.cache
def strip_pattern() -> str:
    """A regex (RE2) for what Python's `str.strip()` removes: `isspace()` characters at either end."""
    spaces = "".join(f"\\x{{{ord(c):x}}}" for c in map(chr, range(0x3001)) if c.isspace())
    return f"^[{spaces}]+|[{spaces}]+$"


def spaced_texts(texts, case_sensitive: bool) -> tuple[list[str], np.ndarray]:
    """MetaCLIP 2's caption spacing (of the stripped caption) without the outer padding (the
    matcher adds it), and each spaced caption's length in characters."""
    column = pc.replace_substring_regex(pc.fill_null(texts, ""), strip_pattern(), "")
    if not case_sensitive:
        column = pc.utf8_lower(column)
    column = pc.replace_substring_regex(column, WRAPPED_PATTERN, r" \1 ")
    column = pc.replace_substring_regex(column, r"[\t\n\r]", " ")
    return column.to_pylist(), pc.utf8_length(column).to_numpy(zero_copy_only=False).astype(np.int64)


def list_index(language: pa.ChunkedArray | pa.Array, layout: LanguageLayout,
               extra: dict[str, str] | None = None) -> np.ndarray:
    """Per row, the index in `layout.languages` of its language's list, -1 where none (the
    mapping runs once per distinct LID code, not per row)."""
    encoded = pc.dictionary_encode(language.combine_chunks() if isinstance(language, pa.ChunkedArray)
                                   else language)
    index = {code: i for i, code in enumerate(layout.languages)}
    mapped = np.array([index.get(metadata_language(code, extra), -1)
                       for code in encoded.dictionary.to_pylist()] + [-1], dtype=np.int64)
    positions = pc.fill_null(encoded.indices, len(encoded.dictionary))
    return mapped[positions.to_numpy(zero_copy_only=False).astype(np.int64)]


def match_languages(table: pa.Table, lists: np.ndarray, matcher_of, layout: LanguageLayout,
                    case_sensitive: bool) -> pa.ListArray:
    """Per row, the global ids of the entries it matches, in order (a list array); `lists` is
    each row's `list_index`, `matcher_of(code)` the language's (cached) matcher. The rows are
    matched grouped by language, then put back in their order with one `take`."""
    order = np.argsort(lists, kind="stable")
    bounds = np.searchsorted(lists[order], np.arange(-1, len(layout.languages) + 1))
    lengths, ids = [np.zeros(bounds[1], np.int64)], [np.zeros(0, np.int64)]   # rows without a list
    for i, code in enumerate(layout.languages):
        rows = order[bounds[i + 1]:bounds[i + 2]]
        if not len(rows):
            continue
        spaced, spaced_lengths = spaced_texts(table["text"].take(pa.array(rows)), case_sensitive)
        found_rows, found = matcher_of(code).match_spaced(spaced, spaced_lengths)
        lengths.append(np.bincount(found_rows, minlength=len(rows)))
        ids.append(found + layout.offsets[i])
    offsets = np.concatenate([[0], np.cumsum(np.concatenate(lengths))]).astype(np.int32)
    grouped = pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.concatenate(ids).astype(np.int32)))
    back = np.empty(len(order), dtype=np.int64)
    back[order] = np.arange(len(order))
    return grouped.take(pa.array(back))


def t_to_p(counts: np.ndarray, t: float) -> float:
    """MetaCLIP 2's tail share: the part of all matches that falls on entries counted below t."""
    counts = np.asarray(counts, dtype=np.float64)
    return float(counts[counts < t].sum() / counts.sum())


def p_to_t(counts: np.ndarray, p: float) -> int:
    """MetaCLIP 2's threshold for a tail share p: the count, among the entries sorted by
    count (zeros included), at which the cumulative share is nearest p (the first such)."""
    ordered = np.sort(np.asarray(counts, dtype=np.int64))
    share = np.cumsum(ordered) / ordered.sum()
    return int(ordered[int(np.argmin(np.abs(share - p)))])


def entry_probabilities(counts: np.ndarray, t: float) -> np.ndarray:
    """min(1, t / count): 1 for the entries counted at most t (and those never matched)."""
    counts = np.asarray(counts, dtype=np.float64)
    return t / np.maximum(counts, t)


def language_thresholds(counts: np.ndarray, layout: LanguageLayout, t: int,
                        given: dict[str, int]) -> dict[str, dict]:
    """Per language with matches: its t, the tail share p, its matched rows' entry count."""
    reference = None
    if REFERENCE_LANGUAGE in layout.languages:
        low, high = layout.span(REFERENCE_LANGUAGE)
        if counts[low:high].sum() > 0:
            reference = t_to_p(counts[low:high], t)
    found = {}
    for code in layout.languages:
        low, high = layout.span(code)
        part = counts[low:high]
        if part.sum() == 0:
            continue
        if code in given:
            lang_t = int(given[code])
        elif code == REFERENCE_LANGUAGE or reference is None:
            lang_t = int(t)      # no English matches: every language keeps `t`
        else:
            lang_t = max(1, p_to_t(part, reference))
        found[code] = {"t": lang_t, "tail_share": t_to_p(part, lang_t), "matches": int(part.sum())}
    return found


def probabilities(counts: np.ndarray, layout: LanguageLayout, thresholds: dict[str, dict]) -> np.ndarray:
    probs = np.ones(layout.size, dtype=np.float64)
    for code, found in thresholds.items():
        low, high = layout.span(code)
        probs[low:high] = entry_probabilities(counts[low:high], found["t"])
    return probs


ROW_SALT = 0x6D657461636C6970   # "metaclip": one draw per row, apart from the per-entry draws


def keep_rows(uids: list[str], entry_ids: pa.ListArray, probs: np.ndarray, seed: int) -> np.ndarray:
    """Per row: kept when its draw from (uid, seed) is below 1 - prod(1 - p_entry)."""
    from pipeline.core.hashing import uid_to_u64, uniform

    rows = len(uids)
    lengths = pc.list_value_length(entry_ids).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = pc.list_flatten(entry_ids).to_numpy(zero_copy_only=False).astype(np.int64)
    if rows == 0 or flat.size == 0:
        return np.zeros(rows, dtype=bool)
    miss = np.ones(rows)
    np.multiply.at(miss, np.repeat(np.arange(rows), lengths), 1.0 - probs[flat])
    keep_prob = 1.0 - miss   # 0 for a row without entries
    draws = uniform(uid_to_u64(uids), ROW_SALT, seed)
    return draws < keep_prob


def write_lists(lists: dict[str, list[str]], folder: str) -> None:
    for code, entries in lists.items():
        storage.write_json(entries, storage.join(folder, f"{code}.json"))

