"""Worldwide metadata (issue 23, MetaCLIP 2): per-language lists, matching and balancing, checked
against an implementation of MetaCLIP 2's published definitions written out here (its
`substr_matching.get_spaced_metadata` / `spacing`, `curate.t_to_p`, `p_to_t`, `count_to_prob`,
`global_count` and `curate`'s keep probability)."""
import json
import string

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core.hashing import uid_of, uid_to_u64, uniform
from tests.support import read_dataset, read_summary, run

LISTS = {
    "en": ["dog", "cat", "beach", "car", "New York", "red", "photo"],
    "fr": ["chien", "chat", "plage", "voiture", "rouge"],
    "de": ["Hund", "Katze", "Strand", "Auto", "rot"],
    "ja": ["猫", "犬", "ねこ", "写真", "東京"],
    "zh": ["猫", "狗", "海滩", "照片", "北京"],
    "th": ["แมว", "สุนัข", "ชายหาด", "รถ"],
}
# (LID code, caption, copies): skewed so that heads exceed t in every language
CAPTIONS = [
    ("en", "a photo of a dog on the beach", 60), ("en", "my dog, sleeping", 90),
    ("en", "red car in New York", 12), ("en", "a cat.", 25), ("en", "hotdogs and cats", 5),
    ("fr", "un chien sur la plage", 40), ("fr", "le chat rouge", 9), ("fr", "une voiture", 3),
    ("de", "der Hund am Strand", 30), ("de", "eine rote Katze", 7), ("de", "das Auto ist rot", 4),
    ("ja", "かわいいねこの写真", 35), ("ja", "東京の犬と猫", 8), ("ja", "写真：富士山", 6),
    ("zh", "海滩上的狗", 30), ("zh", "北京的猫的照片", 10), ("zh", "一只小狗，很可爱", 6),
    ("th", "แมวน่ารักบนชายหาด", 25), ("th", "สุนัขกับรถ", 6),
    ("yue", "我隻猫好得意", 3),            # Cantonese: mapped to the zh list
    ("ko", "고양이 사진", 5),              # no Korean list
    ("en", "nothing here matches", 4),
]


def rows():
    out = []
    for code, text, copies in CAPTIONS:
        for i in range(copies):
            url = f"http://img.example/{code}/{len(out)}/{i}.jpg"
            out.append({"uid": uid_of(url, text), "url": url, "text": text, "language": code})
    return out


# ---- MetaCLIP 2, written out from its published definitions ---------------------------------
CJK_PUNCT = set("，。、；：？！“”‘’（）【】《》〈〉「」『』～—")
RANGES = [(0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
          (0x2B820, 0x2CEAF), (0x2CEB0, 0x2EBEF), (0xF900, 0xFAFF), (0x2E80, 0x2EFF), (0x2F00, 0x2FDF),
          (0x2FF0, 0x2FFF), (0x0E00, 0x0E7F), (0x0E80, 0x0EFF), (0x1000, 0x109F), (0x1780, 0x17FF),
          (0x0F00, 0x0FFF)]
KANA = [(0x3040, 0x309F), (0x30A0, 0x30FF), (0x31F0, 0x31FF), (0xFF65, 0xFF9F)]   # the stage's addition


def cjk_or_similar(ch):
    return ch in string.punctuation or ch in CJK_PUNCT or any(a <= ord(ch) <= b for a, b in RANGES + KANA)


def spaced_entry(entry):
    return ("" if cjk_or_similar(entry[0]) else " ") + entry + ("" if cjk_or_similar(entry[-1]) else " ")


def spaced_text(text):
    text = f" {text.strip()} "
    for p in ",.;:?!`":
        text = text.replace(p, f" {p} ")
    return text.replace("\t", " ").replace("\n", " ").replace("\r", " ")


def ref_match(text, entries):
    spaced = spaced_text(text)
    return [i for i, e in enumerate(entries) if spaced_entry(e) in spaced]


def ref_t_to_p(counts, t):
    return float(counts[counts < t].sum() / counts.sum())


def ref_p_to_t(counts, p):
    ordered = np.sort(counts)
    portion = np.cumsum(ordered) / ordered.sum()
    return ordered[np.abs(portion - p).argmin()]


def ref_count_to_prob(counts, t):
    c = np.array(counts, dtype=np.float64)
    c[c < t] = t
    return t / c


def reference(data, t_en, given=None):
    """Per language t and entry probabilities, and per row the keep probability."""
    lang_of = {"yue": "zh"}
    matched, counts = [], {code: np.zeros(len(e), dtype=np.int64) for code, e in LISTS.items()}
    for row in data:
        code = lang_of.get(row["language"], row["language"])
        ids = ref_match(row["text"], LISTS[code]) if code in LISTS else None
        matched.append((code, ids))
        if ids:
            counts[code][ids] += 1
    p = ref_t_to_p(counts["en"], t_en)
    ts, probs = {}, {}
    for code, c in counts.items():
        if c.sum() == 0:
            continue
        ts[code] = (given or {}).get(code, t_en if code == "en" else max(1, int(ref_p_to_t(c, p))))
        probs[code] = ref_count_to_prob(c, ts[code])
    keep = [1.0 - np.prod(1.0 - probs[code][ids]) if ids else None for code, ids in matched]
    return ts, probs, keep, matched


# ---- the stage ------------------------------------------------------------------------------
@pytest.fixture
def world(tmp_path):
    folder = tmp_path / "lists"
    folder.mkdir()
    for code, entries in LISTS.items():
        if code == "de":
            (folder / "de.txt").write_text("\n".join(entries) + "\n")
        else:
            (folder / f"{code}.json").write_text(json.dumps(entries, ensure_ascii=False))
    data = rows()
    path = tmp_path / "in" / "captions.parquet"
    path.parent.mkdir()
    pq.write_table(pa.Table.from_pylist(data), path, row_group_size=37)
    return folder, path, data


def curate(tmp_path, folder, path, name, t, part_rows=10_000, seed=0, task_rows=1_000_000, engine="local",
           ray=None, spark=None, **extra):
    metadata = {"entries": [str(folder)], "t": t, **extra}
    config = {"input": {"path": [str(path)], "part_rows": part_rows}, "output": str(tmp_path / name),
              "seed": seed, "processes": 1, "task_rows": task_rows, "engine": engine, "metadata": metadata}
    config.update({k: v for k, v in (("ray", ray), ("spark", spark)) if v})
    run(config)
    return tmp_path / name


def step_dir(run_dir):
    return next((run_dir / "steps").glob("*_metadata"))


@pytest.mark.parametrize("t_en", [20, 40])
def test_thresholds_probabilities_and_kept_rows_equal_metaclip2(tmp_path, world, t_en):
    folder, path, data = world
    run_dir = curate(tmp_path, folder, path, f"run{t_en}", t_en)
    ts, probs, keep, matched = reference(data, t_en)
    found = json.loads((step_dir(run_dir) / "language_thresholds.json").read_text())
    assert {code: v["t"] for code, v in found.items()} == ts
    assert ts["en"] == t_en and any(ts[c] != t_en for c in ts)
    layout = json.loads((step_dir(run_dir) / "languages.json").read_text())
    stored = np.load(step_dir(run_dir) / "entry_probs.npy")
    for code, p in probs.items():
        low = layout["offsets"][layout["languages"].index(code)]
        np.testing.assert_allclose(stored[low:low + len(p)], p, rtol=1e-12)
    draws = uniform(uid_to_u64([r["uid"] for r in data]), 0x6D657461636C6970, 0)
    expected = {r["uid"] for r, k, d in zip(data, keep, draws) if k is not None and d < k}
    kept = read_dataset(run_dir / "kept")
    assert set(kept["uid"].to_pylist()) == expected and 0 < len(expected) < len(data)
    # entry ids of the kept rows are the matched ones, in the one id space of the layout
    by_uid = {r["uid"]: m for r, m in zip(data, matched)}
    for uid, ids in zip(kept["uid"].to_pylist(), kept["entry_ids"].to_pylist()):
        code, local = by_uid[uid]
        low = layout["offsets"][layout["languages"].index(code)]
        assert ids == [low + i for i in local]
    drops = {s["name"]: s["dropped"] for s in read_summary(run_dir)["stages"]}["metadata"]
    assert drops["no_metadata_language"] == 5 and drops["no_entry"] == 4 + 5  # ko; "nothing", hotdogs
    for code in LISTS:   # the per-language table (also in the step's stats.json record)
        mine = [(r["uid"], ids) for r, (c, ids) in zip(data, matched) if c == code]
        assert (found[code]["rows"], found[code]["matched_rows"], found[code]["kept_rows"]) == \
            (len(mine), sum(1 for _, ids in mine if ids), sum(1 for uid, _ in mine if uid in expected))
    record = json.loads((step_dir(run_dir) / "stats.json").read_text())
    assert record["summary"]["languages"] == found
    assert record["summary"]["unlisted_languages"] == {"ko": 5}
    stage = next(s for s in read_summary(run_dir)["stages"] if s["name"] == "metadata")
    assert stage["details"]["languages"] == found   # summary.json carries the per-language numbers
    from pipeline.report.languages import CURVES, languages_section

    html = languages_section(str(run_dir))
    largest = sorted(found, key=lambda code: (-found[code]["rows"], code))
    for code in largest:
        assert f'<td class="text">{code}</td><td>{found[code]["rows"]:,}</td>' in html
    charted = [code for code in largest if f"{code}: entry counts" in html]
    assert charted == largest[:CURVES]
    assert 'id="languages"' in (run_dir / "report.html").read_text()


def test_languages_without_spaces_match_inside_captions(world):
    _, _, data = world
    for code, text in [("ja", "かわいいねこの写真"), ("ja", "東京の犬と猫"), ("zh", "海滩上的狗"),
                       ("zh", "一只小狗，很可爱"), ("th", "แมวน่ารักบนชายหาด"), ("th", "สุนัขกับรถ")]:
        assert ref_match(text, LISTS[code]), (code, text)
    from pipeline.stages import metadata_languages as ml
    from pipeline.stages.metadata import EntryMatcher

    for code in ("ja", "zh", "th", "en"):
        texts = [r["text"] for r in data if r["language"] == code]
        matcher = EntryMatcher(LISTS[code], key_of=ml.entry_key)
        found_rows, ids = matcher.match_spaced(*ml.spaced_texts(pa.array(texts), True))
        got = [sorted(ids[found_rows == i].tolist()) for i in range(len(texts))]
        assert got == [ref_match(t, LISTS[code]) for t in texts]
    assert ml.metadata_language("yue") == "zh" and ml.metadata_language("xx", {"xx": "fr"}) == "fr"


def test_one_part_and_many_parts_keep_the_same_rows(tmp_path, world):
    folder, path, _ = world
    one = read_dataset(curate(tmp_path, folder, path, "one", 30) / "kept")
    many = read_dataset(curate(tmp_path, folder, path, "many", 30, part_rows=37, task_rows=80) / "kept")
    assert sorted(one["uid"].to_pylist()) == sorted(many["uid"].to_pylist())
    tables = [json.loads((step_dir(tmp_path / name) / "language_thresholds.json").read_text())
              for name in ("one", "many")]
    assert tables[0] == tables[1]
    record = json.loads((step_dir(tmp_path / "many") / "stats.json").read_text())
    assert record["parts_in"] > 5 and all(phase["tasks"] > 5 for phase in record["phases"])
    record = json.loads((step_dir(tmp_path / "one") / "stats.json").read_text())
    assert record["parts_in"] == 1
    other = read_dataset(curate(tmp_path, folder, path, "seed", 30, seed=3) / "kept")
    assert sorted(one["uid"].to_pylist()) != sorted(other["uid"].to_pylist())


def test_given_t_and_chosen_languages(tmp_path, world):
    folder, path, data = world
    run_dir = curate(tmp_path, folder, path, "given", 20, t_per_language={"fr": 2}, languages=["en", "fr"])
    found = json.loads((step_dir(run_dir) / "language_thresholds.json").read_text())
    assert set(found) == {"en", "fr"} and found["fr"]["t"] == 2 and found["en"]["t"] == 20
    drops = {s["name"]: s["dropped"] for s in read_summary(run_dir)["stages"]}["metadata"]
    assert drops["no_metadata_language"] == sum(1 for r in data if r["language"] not in ("en", "fr"))
    record = json.loads((step_dir(run_dir) / "stats.json").read_text())
    assert record["summary"]["unlisted_languages"] == {"ja": 49, "zh": 46, "de": 41, "th": 31, "ko": 5, "yue": 3}


def test_builtin_per_language_sources_and_errors(tmp_path, world):
    from pipeline.config import settings_from_dict
    from pipeline.errors import UserError
    from pipeline.stages import metadata_languages as ml

    folder, path, data = world
    lists = ml.load_language_entries(["wordfreq:300", "wordnet", str(folder)], ["en", "ja", "th"], 1000)
    assert set(lists) == {"en", "ja", "th"} and lists["th"] == LISTS["th"]
    assert len(lists["ja"]) == 300 + len(set(LISTS["ja"]) - set(lists["ja"][:300]))
    assert "hot dog" in lists["en"] and lists["en"][:3] == ["the", "to", "and"]
    assert ml.load_language_entries([str(folder)], ["all"]) == LISTS
    run_dir = curate(tmp_path, "wordfreq:300", path, "wf", 20, languages=["en", "fr", "de"])
    found = json.loads((step_dir(run_dir) / "language_thresholds.json").read_text())
    assert set(found) == {"en", "fr", "de"} and found["en"]["t"] == 20
    with pytest.raises(UserError, match="no list for ko"):
        ml.load_language_entries([str(folder)], ["en", "ko"])
    with pytest.raises(UserError, match="a source is a folder of lists, wordfreq or wordnet, not "):
        curate(tmp_path, folder, path, "mixed", 20, entries=[str(folder), str(tmp_path / "x.txt")])
    for bad, message in [({"t_per_language": {"fr": 0}}, "t_per_language.fr: must be an integer"),
                         ({"language_map": {"xx": ""}}, "language_map.xx: must be a language code")]:
        with pytest.raises(UserError, match=message):
            settings_from_dict({"input": {"path": [str(path)]}, "output": str(tmp_path / "o"),
                                "metadata": {"entries": [str(folder)], **bad}}, "t.yaml")


def test_p_to_t_and_t_to_p_equal_the_reference():
    from pipeline.stages import metadata_languages as ml

    rng = np.random.default_rng(0)
    for _ in range(50):
        counts = rng.zipf(1.6, size=200) * (rng.random(200) < 0.8)
        for p in (0.0, 0.01, 0.1, 0.37, 0.9, 1.0):
            assert ml.p_to_t(counts, p) == ref_p_to_t(counts, p)
        for t in (1, 2, 5, 50, 10**6):
            assert ml.t_to_p(counts, t) == ref_t_to_p(counts, t)
            np.testing.assert_allclose(ml.entry_probabilities(counts, t), ref_count_to_prob(counts, t))


def test_list_index_and_row_order():
    from pipeline.stages import metadata_languages as ml

    layout = ml.layout_of({"en": ["a"], "ja": ["b"], "zh": ["c", "d"]})
    language = pa.chunked_array([["en", None, "yue"], ["ko", "ja", "xx", "zh"]])
    assert ml.list_index(language, layout).tolist() == [0, -1, 2, -1, 1, -1, 2]
    assert ml.list_index(language, layout, {"xx": "ja", "yue": "en"}).tolist() == [0, -1, 0, -1, 1, 1, 2]
    spaces = "".join(c for c in map(chr, range(0x110000)) if c.isspace())
    texts = [f"{spaces}a dog{spaces}", spaces, "", None, "\u3000猫\x1c", f"x{spaces}y"]
    spaced, lengths = ml.spaced_texts(pa.array(texts, pa.string()), True)
    expected = [spaced_text(t or "")[1:-1] for t in texts]   # without the outer padding
    assert spaced == expected and lengths.tolist() == [len(t) for t in expected]


def test_rows_in_many_languages_keep_their_order():
    from pipeline.stages import metadata_languages as ml
    from pipeline.stages.metadata import EntryMatcher

    layout = ml.layout_of(LISTS)
    rng = np.random.default_rng(1)
    picked = [CAPTIONS[i] for i in rng.integers(0, len(CAPTIONS), 300)]
    table = pa.table({"text": [text for _, text, _ in picked], "language": [code for code, _, _ in picked]})
    lists = ml.list_index(table["language"], layout)
    got = ml.match_languages(table, lists, lambda code: EntryMatcher(LISTS[code], key_of=ml.entry_key),
                             layout, True).to_pylist()
    lang_of = {"yue": "zh"}
    for (code, text, _), ids in zip(picked, got):
        code = lang_of.get(code, code)
        low = layout.offsets[layout.languages.index(code)] if code in LISTS else 0
        assert ids == ([low + i for i in ref_match(text, LISTS[code])] if code in LISTS else [])
