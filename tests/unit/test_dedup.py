import pyarrow as pa

from pipeline.core.hashing import uids_of
from pipeline.stages.dedup import BUCKET, KEY, ScatterByKey, drop_duplicates


def table(urls, texts, start=0):
    return pa.table({"uid": uids_of(urls, texts), "url": urls, "text": texts,
                     "_pos": list(range(start, start + len(urls)))})


def test_first_occurrence_wins_on_url_and_text():
    t = table(["a", "b", "a", "a", "b"], ["x", "y", "x", "z", "y"])
    scattered = ScatterByKey(["url", "text"], 1)(t)
    out = drop_duplicates(scattered).sort_by("_pos")
    assert out["_reason"].to_pylist() == [None, None, "duplicate", None, "duplicate"]
    assert KEY not in out.column_names and BUCKET in out.column_names  # the reduce writes by bucket


def test_url_only_key_and_buckets_split_keys_consistently():
    t = table([f"u{i % 50}" for i in range(500)], [f"t{i}" for i in range(500)])
    scattered = ScatterByKey(["url"], 4)(t)
    groups = {}
    for key, bucket in zip(scattered[KEY].to_pylist(), scattered[BUCKET].to_pylist()):
        groups.setdefault(key, set()).add(bucket)
    assert all(len(b) == 1 for b in groups.values()) and len(groups) == 50
    out = drop_duplicates(scattered)
    assert out["_reason"].null_count == 50
