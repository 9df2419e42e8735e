"""The `openai` captioner against a real loopback server that speaks chat completions
(`pipeline.testing.chat_server`), with injected 503s, 429s, hangs past the deadline, closed
connections and malformed answers: every row ends captioned or with a `caption_error`,
transient failures are retried and the others are not. Then a pipeline run (download ->
recaption -> shard) in rewrite mode: nothing dropped, captions and errors in kept/ and the tars."""
import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.captioners.openai_chat import OpenAIChatCaptioner
from pipeline.testing.chat_server import ChatServer, caption_of
from pipeline.testing.fakeweb import FakeWeb
from pipeline.testing.world import make_sample
from schemas import kept_schema, missing_or_mistyped
from tests.support import assert_run_invariants, read_dataset, run, tar_digests

FAULTS = {   # row -> the actions of its first requests (then ok)
    0: [],
    1: ["503"],
    2: ["429", "429"],
    3: ["hang"],
    4: ["close"],
    5: ["500", "502", "503"],
    6: ["503"] * 10,         # past the retries
    7: ["hang"] * 10,        # past the retries: the deadline each time
    8: ["malformed"],        # not retried
    9: ["no_choices"],
    10: ["empty"],
    11: ["400"],             # not retried
}


def images(n: int) -> list[bytes]:
    return [make_sample(i, seed=5).jpg for i in range(n)]


def captioner(url: str, **options) -> OpenAIChatCaptioner:
    settings = {"retries": 3, "timeout": 1.0, "backoff": 0.0, "concurrency": 4, **options}
    return OpenAIChatCaptioner(url, "tiny-vlm", "Describe: {text}", **settings)


def test_every_row_captioned_or_marked():
    jpgs = images(len(FAULTS))
    with ChatServer() as server:
        for row, actions in FAULTS.items():
            server.fail(jpgs[row], actions)
        results = captioner(server.url).caption(jpgs + [None], [f"alt {i}" for i in range(len(jpgs) + 1)])
        attempts = [server.attempts(j) for j in jpgs]
        bodies = list(server.requests)
    assert len(results) == len(jpgs) + 1
    for row in (0, 1, 2, 3, 4, 5):
        assert results[row].texts == [caption_of(jpgs[row])] and results[row].error is None, row
        assert len(results[row].seconds) == 1 and results[row].seconds[0] >= 0
    assert attempts[:6] == [1, 2, 3, 2, 2, 4]
    assert results[6].texts == [] and results[6].error == "http 503 (after 4 attempts)"
    assert results[7].error.startswith("timeout") and attempts[7] == 4
    assert results[8].error.startswith("malformed answer") and attempts[8] == 1
    assert results[9].error.startswith("malformed answer") and attempts[9] == 1
    assert results[10].error == "malformed answer: empty caption"
    assert results[11].error.startswith("http 400") and attempts[11] == 1
    assert results[12].error == "no_image" and results[12].texts == []
    body = bodies[0]
    assert body["model"] == "tiny-vlm" and body["temperature"] == 0.0
    text, image = body["messages"][0]["content"]
    assert text["text"].startswith("Describe: alt ") and image["image_url"]["url"].startswith("data:image/jpeg;base64,")


def test_requests_run_concurrently_and_captions_keep_row_order():
    jpgs = images(6)
    with ChatServer(gate_parties=4) as server:
        for jpg in jpgs[:4]:
            server.fail(jpg, ["gate"])   # each waits until 4 requests are inside at once
        results = captioner(server.url, concurrency=4, timeout=30.0).caption(jpgs, [""] * 6)
        assert server.max_in_flight >= 4
    assert [r.texts for r in results] == [[caption_of(j)] for j in jpgs]


def test_several_captions_per_row_are_seeded_requests():
    jpgs = images(2)
    with ChatServer() as server:
        results = captioner(server.url, captions=3, temperature=0.7, seed=9).caption(jpgs, ["a", "b"])
        seeds = sorted(b["seed"] for b in server.requests)
    assert [len(r.texts) for r in results] == [3, 3]
    assert seeds == [9000, 9000, 9001, 9001, 9002, 9002]


def test_the_key_goes_in_the_authorization_header():
    with ChatServer() as server:
        captioner(server.url, api_key="sk-test").caption(images(1), [""])
        captioner(server.url).caption(images(1), [""])
        assert server.authorizations == ["Bearer sk-test", None]


@pytest.mark.slow
def test_pipeline_rewrite_mode_keeps_every_row(tmp_path):
    n = 12
    with FakeWeb() as web, ChatServer(echo_prompt=True) as server:
        urls, texts = [], []
        for i in range(n):
            sample = make_sample(i, seed=3, image_size=64)
            web.add_image(f"/img/{i}.jpg", sample.jpg)
            urls.append(web.url(f"/img/{i}.jpg"))
            texts.append(f"alt text number {i}")
        server.fail("improve: alt text number 1", ["503", "503"])
        server.fail("improve: alt text number 2", ["malformed"])
        server.fail("improve: alt text number 3", ["hang"] * 5)
        pq.write_table(pa.table({"url": urls, "text": texts}), tmp_path / "pairs.parquet")
        cfg = {"input": {"path": [str(tmp_path / "pairs.parquet")], "part_rows": 4}, "output": str(tmp_path / "run"),
               "engine": "local", "processes": 2, "allow_networks": ["127.0.0.1/32"],
               "download": {"image_size": 64, "threads": 4, "timeout": 5, "part_rows": 4},
               "recaption": {"backend": "openai", "model": "tiny-vlm", "url": server.url, "mode": "rewrite",
                             "prompt": "improve: {text}", "retries": 2, "timeout": 1.0, "backoff": 0.0},
               "shard": {"samples_per_shard": 4}}
        summary = run(cfg)
        digests = tar_digests(tmp_path / "run")
        run(cfg)   # a rerun resumes: nothing redone, the same tars
        assert tar_digests(tmp_path / "run") == digests
    assert_run_invariants(tmp_path / "run")
    stage = next(s for s in summary["stages"] if s["name"] == "recaption")
    assert stage["rows_in"] == stage["rows_out"] == n and stage["dropped"] == {}
    kept_table = read_dataset(tmp_path / "run" / "kept")
    assert not missing_or_mistyped(kept_table.schema, kept_schema(["download", "recaption", "shard"]))
    kept = kept_table.to_pylist()
    by_text = {row["text"]: row for row in kept}
    assert by_text["alt text number 1"]["caption_error"] is None
    assert by_text["alt text number 2"]["caption_error"].startswith("malformed answer")
    assert by_text["alt text number 3"]["caption_error"].startswith("timeout")
    for row in kept:
        if row["caption_error"] is None:
            (caption,) = row["captions"]
            assert caption["text"].endswith(f"| improve: {row['text']}")
            assert caption["model"] == "tiny-vlm" and caption["prompt"] == "improve: {text}"
        else:
            assert row["captions"] == []
    samples = {}
    for tar_path in sorted((tmp_path / "run" / "shards").glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar:
                key, ext = member.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    assert len(samples) == n
    for sample in samples.values():
        meta = json.loads(sample["json"])
        assert sample["txt"].decode().startswith("alt text number ")
        if meta["caption_error"] is None:
            assert sample["syn.txt"].decode() == meta["captions"][0]["text"]
            assert set(meta["captions"][0]) == {"text", "model", "prompt"}
        else:
            assert "syn.txt" not in sample
