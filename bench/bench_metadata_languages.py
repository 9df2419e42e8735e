"""Worldwide metadata matching (issue 23) beside the raw library, in one process.

Captions in 10 languages (words drawn Zipf-like from each language's `wordfreq` list, joined
without spaces in ja and zh), one list per language (the top 50k `wordfreq` words: 500k entries
in all). Measured in CPU seconds of this process: the metadata step's per-language `match` op
over the whole table, against
`pyahocorasick` used directly (one automaton per language, MetaCLIP 2's spacing, a Python loop
over the captions) and against today's single-list matcher (`MatchEntries`, English's
wordnet + wordfreq list) on the same captions. Both sides find the same matches (asserted).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import parse_args, report  # noqa: E402

LANGUAGES = ["en", "fr", "de", "es", "it", "pt", "nl", "ru", "ja", "zh"]
NO_SPACES = {"ja", "zh"}


def captions(rows: int, lists: dict[str, list[str]], seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    codes = rng.choice(LANGUAGES, rows)
    texts = []
    for code, words in zip(codes.tolist(), rng.integers(3, 12, rows).tolist()):
        entries = lists[code]
        picks = rng.zipf(1.3, words) % len(entries)
        texts.append(("" if code in NO_SPACES else " ").join(entries[int(i)] for i in picks))
    uids = [f"{i:032x}" for i in range(rows)]
    return pa.table({"uid": uids, "text": pa.array(texts, pa.string()), "language": pa.array(codes.tolist())})


def cpu_timed(fn):
    """CPU seconds of this process (all its threads) for fn(): per-core cost, whatever else the
    machine runs (both sides run in this one process)."""
    start = time.process_time()
    result = fn()
    return time.process_time() - start, result


def raw_matcher(lists: dict[str, list[str]]):
    import ahocorasick

    from pipeline.stages.metadata_languages import entry_key

    automata = {}
    for code, entries in lists.items():
        automaton = ahocorasick.Automaton()
        for i, entry in enumerate(entries):
            automaton.add_word(entry_key(entry), i)
        automaton.make_automaton()
        automata[code] = automaton

    def match(texts: list[str], codes: list[str]) -> int:
        found = 0
        for text, code in zip(texts, codes):
            spaced = f" {text.strip()} "
            for punct in ",.;:?!`":
                spaced = spaced.replace(punct, f" {punct} ")
            spaced = spaced.replace("\t", " ").replace("\n", " ").replace("\r", " ")
            found += len({i for _, i in automata[code].iter(spaced)})
        return found
    return match


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--entries", type=int, default=50_000, help="entries per language")
    args = parse_args(parser, smoke={"rows": 2000, "entries": 2000})
    from wordfreq import top_n_list

    from pipeline.stages import metadata_languages as ml
    from pipeline.stages.metadata import MatchEntries, MatchLanguages
    from pipeline.stages.metadata_entries import load_entries

    lists = {code: list(dict.fromkeys(w.strip() for w in top_n_list(code, args.entries) if w.strip()))
             for code in LANGUAGES}
    table = captions(args.rows, lists)
    texts, codes = table["text"].to_pylist(), table["language"].to_pylist()
    raw = raw_matcher(lists)
    with tempfile.TemporaryDirectory() as tmp:
        ml.write_lists(lists, tmp)
        op = MatchLanguages(tmp, ml.layout_of(lists).to_json(), True, {})
        op(table.slice(0, 2000))                 # builds the automata, as a worker does once
        ours_s, (out, _) = cpu_timed(lambda: op(table))
        raw_s, raw_found = cpu_timed(lambda: raw(texts, codes))
        assert raw_found == len(pa.compute.list_flatten(out["entry_ids"])), "both sides find the same matches"
        english = load_entries(["wordnet", "wordfreq"])
        path = Path(tmp) / "entries.json"
        path.write_text(__import__("json").dumps(english))
        single = MatchEntries(str(path), True, len(english))
        single(table.slice(0, 10))
        single_s, _ = cpu_timed(lambda: single(table))
    report("metadata_languages", {
        "rows": args.rows, "languages": len(lists), "entries": sum(len(v) for v in lists.values()),
        "matches": raw_found, "metadata_match_cpu_s": round(ours_s, 3), "raw_pyahocorasick_cpu_s": round(raw_s, 3),
        "ratio_vs_raw": round(raw_s / ours_s, 3), "target": 0.8,
        "single_list_match_cpu_s": round(single_s, 3), "single_list_entries": len(english),
        "ratio_vs_single_list": round(single_s / ours_s, 3)})


if __name__ == "__main__":
    main()
