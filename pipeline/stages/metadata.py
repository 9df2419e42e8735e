r"""metadata: keep pairs whose caption contains a query entry, then balance (CLIP / MetaCLIP).

Matching is MetaCLIP's substring matching, done with one Aho-Corasick automaton (ahocorasick_rs, over
a whole part's captions joined, so the search runs in Rust without a Python loop): the caption
is padded with spaces, `, . ; : ? ! \`` are wrapped in spaces, tabs and newlines become
spaces, and entry e matches when ` e ` occurs. Rows matching nothing: `no_entry`.

Balancing is global and two-phase: each part counts its matches per entry, the driver sums
the counts, then each row is kept when any of its entries keeps it, entry e keeping a row
with probability min(1, t / count[e]), drawn from (uid, e, seed). Dropped: `balanced`.

Worldwide (MetaCLIP 2, `metadata_languages`): when `entries` names folders of one list per
language (or `languages` is given), each row is matched against its language's list and
balanced with its language's t.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from itertools import chain
from typing import Annotated, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core import parts, storage
from pipeline.core.constraints import AtLeast, NonEmpty
from pipeline.core.hashing import uid_to_u64, uniform
from pipeline.core.parts import PartRef
from pipeline.core.stage import Stage, with_reason
from pipeline.core.steps import Step, StepContext
from pipeline.core.tasks import built_once
from pipeline.stages import metadata_languages as ml
from pipeline.stages.metadata_entries import load_entries

SECTION = "metadata"


@dataclass
class MetadataSettings:
    entries: Annotated[list[str], NonEmpty()] = field(default_factory=lambda: ["wordnet", "wordfreq"])
    t: Annotated[int, AtLeast(1)] = 20_000
    case_sensitive: bool = True
    wordfreq_top: Annotated[int, AtLeast(1)] = 1_000_000   # how many frequent words `wordfreq` contributes
    wordfreq_lang: str = "en"
    languages: list[str] = field(default_factory=list)   # per-language lists: [] or [all]: every one
    language_map: dict[str, str] = field(default_factory=dict)      # LID code -> list's code
    t_per_language: dict[str, int] = field(default_factory=dict)    # a language's own t
    enabled: bool = True

    def validate(self) -> None:
        from pipeline.core.constraints import Invalid

        for code, value in self.t_per_language.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise Invalid(f"t_per_language.{code}", "must be an integer of at least 1", value)
        for code, value in self.language_map.items():
            if not isinstance(value, str) or not value:
                raise Invalid(f"language_map.{code}", "must be a language code", value)


def per_language(settings: MetadataSettings) -> bool:
    """Whether the lists are per language: `entries` names folders of per-language lists, or
    `languages` is given (the built-in sources then give one list per language)."""
    folders = [ml.is_language_folder(source) for source in settings.entries]
    if not (any(folders) or settings.languages):
        return False
    other = [s for s, folder in zip(settings.entries, folders) if not folder and not ml.builtin_source(s)]
    if other:
        from pipeline.errors import UserError

        raise UserError(f"metadata.entries: with per-language lists, a source is a folder of lists, "
                        f"wordfreq or wordnet, not {other[0]}")
    return True


SETTINGS = MetadataSettings


WRAPPED, WRAPPED_PATTERN = ml.WRAPPED, ml.WRAPPED_PATTERN


def spacing(text: str) -> str:
    spaced = f" {text} "
    for punct in WRAPPED:
        spaced = spaced.replace(punct, f" {punct} ")
    return spaced.replace("\t", " ").replace("\n", " ").replace("\r", " ")


class EntryMatcher:
    """All entries in one automaton. `match(text)` gives the sorted ids of the entries found;
    `match_column(texts)` does a whole column in one pass over the joined, spaced captions."""

    def __init__(self, entries: list[str], case_sensitive: bool = True, key_of=None):
        import ahocorasick_rs

        self.case_sensitive = case_sensitive
        keys: dict[str, int] = {}
        key_entries: list[list[int]] = []
        for entry_id, entry in enumerate(entries):
            entry = entry if case_sensitive else entry.lower()
            key = key_of(entry) if key_of else f" {entry} "
            index = keys.setdefault(key, len(key_entries))
            if index == len(key_entries):
                key_entries.append([entry_id])
            else:  # entries equal after lowercasing share one key
                key_entries[index].append(entry_id)
        self.automaton = ahocorasick_rs.AhoCorasick(
            list(keys), matchkind=ahocorasick_rs.MatchKind.Standard)
        lengths = np.array([len(e) for e in key_entries], dtype=np.int64)
        self.key_offsets = np.concatenate([[0], np.cumsum(lengths)])
        self.key_entries = np.fromiter((i for e in key_entries for i in e), dtype=np.int64,
                                       count=int(lengths.sum()))
        self.one_to_one = bool((lengths == 1).all())
        self.entry_count = max(len(entries), 1)

    def _find(self, haystack: str) -> np.ndarray:
        """(key, start, end) of every match, overlapping ones included, as an (n, 3) array."""
        found = self.automaton.find_matches_as_indexes(haystack, overlapping=True)
        flat = np.fromiter(chain.from_iterable(found), dtype=np.int64, count=3 * len(found))
        return flat.reshape(-1, 3)

    def match(self, text: str | None) -> list[int]:
        if not text:
            return []
        spaced = spacing(text if self.case_sensitive else text.lower())
        keys = set(self._find(spaced)[:, 0].tolist())
        return sorted(self.key_entries[j] for k in keys
                      for j in range(self.key_offsets[k], self.key_offsets[k + 1]))

    def match_column(self, texts: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """(rows, entry ids) of every match, sorted by row then entry, without repeats."""
        return self.match_spaced(*spaced_column(texts, self.case_sensitive))

    def match_spaced(self, spaced: list[str], lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`match_column` for captions already spaced (without the outer padding)."""
        if not len(spaced):
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        # " t1 \n t2 \n ... ": no key contains a newline, so no match spans two captions
        joined = " " + " \n ".join(spaced) + " "
        starts = np.concatenate([[0], np.cumsum(lengths + 3)])
        found = self._find(joined)
        keys = found[:, 0]
        rows = np.searchsorted(starts, found[:, 1], side="right") - 1
        entry_ids, rows = self._expand(keys, rows)
        width = np.int64(self.entry_count)
        # sort + diff: faster than np.unique here; the matches come by end position, so their rows
        # are already in order and a stable (adaptive) sort is several times faster than quicksort
        pairs = np.sort(rows * width + entry_ids, kind="stable")
        pairs = pairs[np.concatenate([[True], pairs[1:] != pairs[:-1]])] if len(pairs) else pairs
        return pairs // width, pairs % width

    def _expand(self, keys: np.ndarray, rows: np.ndarray):
        if self.one_to_one:
            return self.key_entries[keys], rows
        counts = self.key_offsets[keys + 1] - self.key_offsets[keys]
        starts = np.repeat(self.key_offsets[keys], counts)
        within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        return self.key_entries[starts + within], np.repeat(rows, counts)


def spaced_column(texts, case_sensitive: bool) -> tuple[list[str], np.ndarray]:
    """MetaCLIP's spacing for a whole column, in Arrow (without the outer padding), and the
    length of each spaced caption in characters."""
    column = pc.fill_null(texts, "")
    if not case_sensitive:
        column = pc.utf8_lower(column)
    column = pc.replace_substring_regex(column, WRAPPED_PATTERN, r" \1 ")
    column = pc.replace_substring_regex(column, r"[\t\n\r]", " ")
    lengths = pc.utf8_length(column).to_numpy(zero_copy_only=False).astype(np.int64)
    return column.to_pylist(), lengths


class MetadataStage(Stage):
    name = "metadata"
    label = "balancing (metadata)"
    inputs = ("uid", "text")
    outputs = (("entry_ids", pa.list_(pa.int32())),)

    @classmethod
    def input_columns(cls, settings) -> tuple:
        return cls.inputs + ("language",) if per_language(settings) else cls.inputs


@dataclass
class MatchEntries:
    entries_path: str
    case_sensitive: bool
    entry_count: int

    def __call__(self, table: pa.Table):
        matcher = built_once(("matcher", self.entries_path, self.case_sensitive), lambda: EntryMatcher(
            storage.read_json(self.entries_path), self.case_sensitive))
        rows, flat = matcher.match_column(table["text"])
        lengths = np.bincount(rows, minlength=table.num_rows)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        entry_ids = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat.astype(np.int32)))
        table = table.append_column("entry_ids", entry_ids)
        reason = pc.if_else(pa.array(lengths == 0), pa.scalar("no_entry"), pa.scalar(None, pa.string()))
        return with_reason(table, reason), sparse_counts(flat, "counts")


@dataclass
class MatchLanguages:
    """Each row against its language's list; `entry_ids` are ids in the layout's one id space."""
    lists_path: str
    layout: dict
    case_sensitive: bool
    language_map: dict

    def __call__(self, table: pa.Table):
        layout = ml.LanguageLayout(self.layout["languages"], self.layout["offsets"])
        language = table["language"].cast(pa.string())
        lists = ml.list_index(language, layout, self.language_map)

        def matcher_of(code: str) -> EntryMatcher:
            return built_once(("matcher", self.lists_path, code, self.case_sensitive), lambda: EntryMatcher(
                storage.read_json(storage.join(self.lists_path, f"{code}.json")), self.case_sensitive,
                key_of=ml.entry_key))

        entry_ids = ml.match_languages(table, lists, matcher_of, layout, self.case_sensitive)
        lengths = pc.list_value_length(entry_ids).to_numpy(zero_copy_only=False).astype(np.int64)
        flat = pc.list_flatten(entry_ids).to_numpy(zero_copy_only=False).astype(np.int64)
        firsts = flat[(np.cumsum(lengths) - lengths)[lengths > 0]]
        table = table.append_column("entry_ids", entry_ids)
        reason = pc.if_else(pa.array(lengths == 0), pa.scalar("no_entry"), pa.scalar(None, pa.string()))
        reason = pc.if_else(pa.array(lists < 0), pa.scalar("no_metadata_language"), reason)
        unlisted = pc.fill_null(language.filter(pa.array(lists < 0)), "").to_numpy(zero_copy_only=False)
        codes, code_rows = np.unique(unlisted.astype(str), return_counts=True)
        return with_reason(table, reason), {**sparse_counts(flat, "counts"),
                                            "unlisted_codes": codes, "unlisted_rows": code_rows.astype(np.int64),
                                            **language_counts(lists[lists >= 0], layout, "lang_rows"),
                                            **language_counts(layout.language_of(firsts), layout,
                                                              "lang_matched")}


@dataclass
class BalanceLanguages:
    probs_path: str
    seed: int
    offsets: list

    def __call__(self, table: pa.Table):
        probs = built_once(("probs", self.probs_path),
                           lambda: np.load(io.BytesIO(storage.read_bytes(self.probs_path))))
        kept = ml.keep_rows(table["uid"].to_pylist(), table["entry_ids"].combine_chunks(), probs, self.seed)
        reason = pc.if_else(pa.array(kept), pa.scalar(None, pa.string()), pa.scalar("balanced"))
        kept_ids = table["entry_ids"].filter(pa.array(kept))
        flat = pc.list_flatten(kept_ids).to_numpy(zero_copy_only=False).astype(np.int64)
        firsts = pc.list_element(kept_ids, 0).to_numpy(zero_copy_only=False).astype(np.int64) \
            if len(kept_ids) else np.zeros(0, np.int64)
        return with_reason(table, reason), {**sparse_counts(flat, "counts_after"),
                                            **language_counts(ml.language_of(self.offsets, firsts),
                                                              ml.LanguageLayout([], self.offsets), "lang_kept")}


def language_counts(index: np.ndarray, layout: "ml.LanguageLayout", name: str) -> dict[str, np.ndarray]:
    """`sparse_counts` of language indexes (a few hundred at most: bincount, no sort)."""
    counts = np.bincount(index, minlength=len(layout.offsets) - 1).astype(np.int64)
    return {f"{name}_ids": np.arange(len(counts), dtype=np.int64), name: counts}


def balance_keep(uids: list[str], entry_ids: pa.ListArray, counts: np.ndarray, t: int,
                 seed: int) -> np.ndarray:
    """Per row: kept by any of its entries, entry e keeping with probability min(1, t/count[e])."""
    rows = len(uids)
    lengths = pc.list_value_length(entry_ids).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = pc.list_flatten(entry_ids).to_numpy(zero_copy_only=False).astype(np.int64)
    if rows == 0 or flat.size == 0:
        return np.zeros(rows, dtype=bool)
    keys = np.repeat(uid_to_u64(uids), lengths)
    prob = np.minimum(1.0, t / np.maximum(counts[flat], 1))
    kept_draws = uniform(keys, flat.astype(np.uint64), seed) < prob
    row_of_draw = np.repeat(np.arange(rows), lengths)
    kept = np.zeros(rows, dtype=bool)
    np.logical_or.at(kept, row_of_draw[kept_draws], True)
    return kept


@dataclass
class BalanceEntries:
    counts_path: str
    t: int
    seed: int

    def __call__(self, table: pa.Table):
        counts = built_once(("counts", self.counts_path),
                            lambda: np.load(io.BytesIO(storage.read_bytes(self.counts_path))))
        kept = balance_keep(table["uid"].to_pylist(), table["entry_ids"].combine_chunks(),
                            counts, self.t, self.seed)
        reason = pc.if_else(pa.array(kept), pa.scalar(None, pa.string()), pa.scalar("balanced"))
        kept_ids = pc.list_flatten(table["entry_ids"].filter(pa.array(kept)))
        flat = kept_ids.to_numpy(zero_copy_only=False).astype(np.int64)
        return with_reason(table, reason), sparse_counts(flat, "counts_after")


def sparse_counts(entry_ids: np.ndarray, name: str) -> dict[str, np.ndarray]:
    """How often each entry occurs, as `<name>_ids` and `<name>` (only entries that occur:
    a task's extras grow with its rows, not with the 500k entries)."""
    ids, counts = np.unique(entry_ids, return_counts=True)
    return {f"{name}_ids": ids.astype(np.int64), name: counts.astype(np.int64)}


class MetadataStep(Step):
    """`match` and `balance` each run over groups of parts (up to `task_rows` rows a task),
    keeping the parts; the driver only sums the tasks' sparse entry counts."""

    def __init__(self, settings):
        super().__init__(MetadataStage, settings)

    def run(self, ctx: StepContext, inputs: list[PartRef]) -> list[PartRef]:
        s = self.settings
        if per_language(s):
            return self.run_languages(ctx, inputs)
        entries_path = ctx.path("entries.json")
        entries = storage.read_marker(entries_path)
        if entries is None:
            entries = load_entries(s.entries, s.wordfreq_top, s.wordfreq_lang)
            storage.write_json(entries, entries_path)
        match = MatchEntries(entries_path, s.case_sensitive, len(entries))
        matched = ctx.run_grouped("match", inputs, match)
        before = sum_extras(ctx.extras("match"), "counts", len(entries))
        counts_path = ctx.path("counts_before.npy")
        with storage.committing(counts_path) as tmp, open(tmp, "wb") as stream:
            np.save(stream, before)
        balanced = ctx.run_grouped("balance", matched, BalanceEntries(counts_path, s.t, ctx.seed))
        after = sum_extras(ctx.extras("balance"), "counts_after", len(entries))
        write_entry_counts(ctx.path("entry_counts.parquet"), entries, before, after)
        return balanced

    def run_languages(self, ctx: StepContext, inputs: list[PartRef]) -> list[PartRef]:
        s = self.settings
        lists_path, layout_path = ctx.path("entries"), ctx.path("languages.json")
        layout_json = storage.read_marker(layout_path)
        if layout_json is None:
            lists = ml.load_language_entries(s.entries, s.languages, s.wordfreq_top)
            ml.write_lists(lists, lists_path)
            layout_json = ml.layout_of(lists).to_json()
            storage.write_json(layout_json, layout_path)
        layout = ml.LanguageLayout(layout_json["languages"], layout_json["offsets"])
        match = MatchLanguages(lists_path, layout.to_json(), s.case_sensitive, dict(s.language_map))
        matched = ctx.run_grouped("match", inputs, match)
        before = sum_extras(ctx.extras("match"), "counts", layout.size)
        thresholds = ml.language_thresholds(before, layout, s.t, dict(s.t_per_language))
        probs_path = ctx.path("entry_probs.npy")
        with storage.committing(probs_path) as tmp, open(tmp, "wb") as stream:
            np.save(stream, ml.probabilities(before, layout, thresholds))
        balanced = ctx.run_grouped("balance", matched, BalanceLanguages(probs_path, ctx.seed, layout.offsets))
        after = sum_extras(ctx.extras("balance"), "counts_after", layout.size)
        count = len(layout.languages)
        rows_in, with_match = (sum_extras(ctx.extras("match"), name, count) for name in ("lang_rows", "lang_matched"))
        kept = sum_extras(ctx.extras("balance"), "lang_kept", count)
        table = {}
        for i, code in enumerate(layout.languages):
            low, high = layout.span(code)
            found = thresholds.get(code, {"t": None, "tail_share": None, "matches": 0})
            table[code] = {"rows": int(rows_in[i]), "matched_rows": int(with_match[i]), "kept_rows": int(kept[i]),
                           **found, "kept_matches": int(after[low:high].sum())}
        storage.write_json(table, ctx.path("language_thresholds.json"))
        unlisted: dict[str, int] = {}
        for task in ctx.extras("match"):
            for code, rows in zip(task["unlisted_codes"].tolist(), task["unlisted_rows"].tolist()):
                unlisted[code or "(none)"] = unlisted.get(code or "(none)", 0) + int(rows)
        ctx.record["summary"] = {"languages": table,
                                 "unlisted_languages": dict(sorted(unlisted.items(), key=lambda kv: -kv[1]))}
        entries = [e for code in layout.languages
                   for e in storage.read_json(storage.join(lists_path, f"{code}.json"))]
        write_entry_counts(ctx.path("entry_counts.parquet"), entries, before, after,
                           language_of_ids(layout))
        return balanced


def language_of_ids(layout: "ml.LanguageLayout") -> np.ndarray:
    sizes = np.diff(layout.offsets)
    return np.repeat(np.array(layout.languages, dtype=object), sizes)


def sum_extras(extras: Iterable[dict], name: str, size: int) -> np.ndarray:
    """The sum of every task's sparse counts `name` in a phase (a dense array of `size`)."""
    total = np.zeros(size, dtype=np.int64)
    for task in extras:
        np.add.at(total, task[f"{name}_ids"], task[name])
    return total


def write_entry_counts(path: str, entries: list[str], before: np.ndarray, after: np.ndarray,
                       languages: np.ndarray | None = None) -> None:
    """Per matched entry: how many rows matched it before and after balancing (and, with
    per-language lists, the entry's language)."""
    ids = np.flatnonzero(before)
    columns = {"entry_id": pa.array(ids, pa.int32()),
               "entry": pa.array([entries[i] for i in ids], pa.string()),
               "count_before": pa.array(before[ids]), "count_after": pa.array(after[ids])}
    if languages is not None:
        columns["language"] = pa.array(languages[ids].tolist(), pa.string())
    table = pa.table(columns)
    parts.write_parquet(table, path)


def build_step(settings: MetadataSettings, run) -> MetadataStep:
    return MetadataStep(settings)


STAGE = MetadataStage
