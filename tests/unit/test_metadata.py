import json

import numpy as np
import pyarrow as pa
import pytest

from pipeline.core.hashing import uid_of
from pipeline.errors import UserError
from pipeline.stages.metadata import EntryMatcher, balance_keep, spacing
from pipeline.stages.metadata_entries import load_entries


def metaclip_reference(text, entries):
    """MetaCLIP's substr_matching, written out plainly."""
    spaced = spacing(text)
    return sorted(i for i, e in enumerate(entries) if f" {e} " in spaced)


ENTRIES = ["dog", "hot dog", "red", "New York", "a", "U.S.", "dog.", "ball", "cat"]
TEXTS = ["公园里的 dog, 很好", "café red; ball? ünïcödé cat",
         "A dog, a red ball.", "hot dog in New York!", "dogs and cats", "made in the U.S.",
         "the dog.", "DOG", "", "red\tball\ncat"]


@pytest.mark.parametrize("text", TEXTS)
def test_matching_equals_metaclip_substring_semantics(text):
    assert EntryMatcher(ENTRIES).match(text) == metaclip_reference(text, ENTRIES)


def test_column_matching_equals_per_text_matching():
    matcher = EntryMatcher(ENTRIES)
    rows, ids = matcher.match_column(pa.array(TEXTS + [None], pa.string()))
    per_row = [[] for _ in range(len(TEXTS) + 1)]
    for row, entry in zip(rows.tolist(), ids.tolist()):
        per_row[row].append(entry)
    assert per_row == [metaclip_reference(t, ENTRIES) for t in TEXTS] + [[]]
    lower = EntryMatcher(ENTRIES + ["DOG"], case_sensitive=False)
    rows, ids = lower.match_column(pa.array(["a Dog"]))
    assert ids.tolist() == [0, 4, 9]


def test_case_insensitive_option():
    assert EntryMatcher(ENTRIES, case_sensitive=False).match("DOG in new york") == [0, 3]
    assert EntryMatcher(ENTRIES).match("DOG in new york") == []


def test_balancing_caps_each_entry_near_t_and_is_deterministic():
    rows = 20_000
    uids = [uid_of(f"http://h/{i}", "t") for i in range(rows)]
    # entry 0 is on every row (head), entry 1 on 1% of rows (tail)
    ids = [[0, 1] if i % 100 == 0 else [0] for i in range(rows)]
    entry_ids = pa.array(ids, pa.list_(pa.int32()))
    counts = np.array([rows, rows // 100])
    kept = balance_keep(uids, entry_ids, counts, t=1000, seed=7)
    only_head = np.array([len(x) == 1 for x in ids])
    assert 850 < kept[only_head].sum() < 1150          # ~ t of the head survive
    assert kept[~only_head].all()                        # the tail entry keeps all of its rows
    assert (balance_keep(uids, entry_ids, counts, 1000, 7) == kept).all()
    assert not (balance_keep(uids, entry_ids, counts, 1000, 8) == kept).all()


def test_entries_from_wordnet_wordfreq_and_files(tmp_path):
    (tmp_path / "m.json").write_text(json.dumps(["zebra crossing", "dog"]))
    (tmp_path / "m.txt").write_text("alpha\nbeta\n\n")
    entries = load_entries(["wordnet"])
    assert len(entries) > 140_000 and "hot dog" in entries
    assert len(load_entries(["wordfreq:1000"])) == 1000
    assert load_entries([str(tmp_path / "m.json"), str(tmp_path / "m.txt"), str(tmp_path / "m.json")]) == \
        ["zebra crossing", "dog", "alpha", "beta"]
    with pytest.raises(UserError, match="nope.json: metadata entries file not found"):
        load_entries([str(tmp_path / "nope.json")])
