"""DownloadStage end to end against the loopback FakeWeb: every fault ends in its reason."""
import hashlib
import io
import time

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from PIL import Image

from pipeline.core.stage import REASON
from pipeline.stages.download import DownloadStage

SETTINGS = {"image_size": 64, "threads": 16, "timeout": 1.0, "retries": 1, "retry_backoff": 0.05,
            "max_bytes": 5_000_000, "max_redirects": 5}
LOCAL = ["127.0.0.1/32"]

# path -> expected _reason (None = kept). Each path is used by this module only.
EXPECTED = {
    "/img/ok-wide.jpg?w=300&h=200": None,
    "/img/ok-small.png?w=40&h=30": None,
    "/fault/404/s404.jpg": "http_404",
    "/fault/403/s403.jpg": "http_403",
    "/fault/410/s410.jpg": "http_410",
    "/fault/500/s500.jpg": "http_500",
    "/fault/429/s429.jpg": "http_429",
    "/fault/slow/3000/sslow.jpg": "timeout",
    "/fault/drip/40/sdrip.jpg": "timeout",
    "/fault/endless/sendless.jpg": "timeout",
    "/fault/large/60000000/slarge.jpg": "too_large",
    "/fault/large-nolength/60000000/snolength.jpg": "too_large",
    "/fault/truncated/struncated.jpg": "truncated_body",
    "/fault/corrupt/scorrupt.jpg": "decode_error",
    "/fault/html/shtml.jpg": "decode_error",
    "/fault/bomb/sbomb.png": "image_too_large",
    "/fault/bomb/sbomb.jpg": "image_too_large",
    "/fault/noai/snoai.jpg": "opt_out",
    "/fault/noimageai/snoimageai.jpg": "opt_out",
    "/fault/redirect/3/sredirect.jpg": None,
    "/fault/redirect/9/sredirect.jpg": "too_many_redirects",
    "/fault/loop/a/sloop.jpg": "too_many_redirects",
    "/fault/redirect-to/sprivate.jpg?to=http://10.0.0.1/x.jpg": "blocked_address",
    "/fault/redirect-to/sv6.jpg?to=http://[::1]/x.jpg": "blocked_address",
    "/fault/redirect-to/sfile.jpg?to=file:///etc/passwd": "blocked_scheme",
    "/fault/flaky/2/sflaky.jpg": None,
    "/fault/flaky/2/sflaky429.jpg?code=429": None,
}


def make_table(urls):
    n = len(urls)
    return pa.table({"uid": [f"u{i:03d}" for i in range(n)], "url": urls, "text": [f"caption {i}" for i in range(n)],
                     "extra": list(range(n))})


@pytest.fixture(scope="module")
def result(fakeweb, fakeweb_other):
    urls = [fakeweb.url(p) for p in EXPECTED]
    urls += [fakeweb_other.url("/img/other-host.jpg"), "file:///etc/passwd", None]
    stage = DownloadStage(SETTINGS, allow_networks=LOCAL)
    stage.setup()  # imports img2dataset (OpenCV, albumentations): not part of the timing
    start = time.monotonic()
    table = make_table(urls)
    out = stage.process(table)
    return table, out, time.monotonic() - start


def test_rows_keep_order_and_columns(result):
    table, out, _ = result
    assert out.num_rows == table.num_rows
    assert out["uid"].to_pylist() == table["uid"].to_pylist()
    assert out["extra"].to_pylist() == table["extra"].to_pylist()
    for name in ("width", "height", "original_width", "original_height"):
        assert out.schema.field(name).type == pa.int32()
    assert out.schema.field("jpg").type == pa.binary()
    assert out.schema.field("sha256").type == pa.string()


@pytest.mark.parametrize("index, path", list(enumerate(EXPECTED)))
def test_each_fault_maps_to_its_reason(result, index, path):
    assert result[1][REASON][index].as_py() == EXPECTED[path]


def test_refused_before_any_connection(result, fakeweb_other):
    reasons = result[1][REASON].to_pylist()[len(EXPECTED):]
    assert reasons == ["blocked_address", "blocked_scheme", "blocked_scheme"]
    assert fakeweb_other.connections == 0


def test_kept_images_are_resized_and_hashed(result):
    out = result[1].filter(pc.is_null(result[1][REASON])).to_pylist()
    assert len(out) == sum(reason is None for reason in EXPECTED.values())
    for row in out:
        image = Image.open(io.BytesIO(row["jpg"]))
        assert image.format == "JPEG" and image.size == (64, 64) == (row["width"], row["height"])
        assert row["sha256"] == hashlib.sha256(row["jpg"]).hexdigest()
    wide, small = out[0], out[1]
    assert (wide["original_width"], wide["original_height"]) == (300, 200)
    assert (small["original_width"], small["original_height"]) == (40, 30)


def test_dropped_rows_have_no_image(result):
    dropped = result[1].filter(pc.is_valid(result[1][REASON])).to_pylist()
    assert all(row["jpg"] is None and row["sha256"] is None and row["width"] is None for row in dropped)


def test_retries_only_transient_failures(result, fakeweb):
    assert fakeweb.count("/fault/flaky/2/sflaky.jpg") == 2
    assert fakeweb.count("/fault/flaky/2/sflaky429.jpg") == 2
    assert fakeweb.count("/fault/500/s500.jpg") == 2
    assert fakeweb.count("/fault/429/s429.jpg") == 2
    for never_retried in ("/fault/404/s404.jpg", "/fault/403/s403.jpg", "/fault/410/s410.jpg",
                          "/fault/noai/snoai.jpg", "/fault/redirect-to/sprivate.jpg", "/fault/corrupt/scorrupt.jpg"):
        assert fakeweb.count(never_retried) == 1, never_retried


def test_hanging_bodies_end_near_the_deadline(result, fakeweb):
    # two passes (timeouts are retried) of a 1 s deadline, plus backoff and start-up
    assert fakeweb.count("/fault/endless/sendless.jpg") == 2
    assert result[2] < 6.0


def test_no_retry_pass_when_retries_is_zero(fakeweb):
    stage = DownloadStage({**SETTINGS, "retries": 0}, allow_networks=LOCAL)
    out = stage.process(make_table([fakeweb.url("/fault/flaky/2/once.jpg")]))
    assert out[REASON].to_pylist() == ["http_500"]
    assert fakeweb.count("/fault/flaky/2/once.jpg") == 1


def test_rows_dropped_earlier_are_not_fetched(fakeweb):
    table = make_table([fakeweb.url("/img/earlier-dropped.jpg"), fakeweb.url("/img/earlier-kept.jpg")])
    table = table.append_column(REASON, pa.array(["duplicate", None], pa.string()))
    out = DownloadStage(SETTINGS, allow_networks=LOCAL).process(table)
    assert out[REASON].to_pylist() == ["duplicate", None]
    assert fakeweb.count("/img/earlier-dropped.jpg") == 0


def test_resize_mode_and_settings_object(fakeweb):
    class Settings:  # any object with the fields works (the config's dataclass, a namespace)
        image_size = 64
        resize_mode = "keep_ratio"
        threads = 2
        timeout = 2.0
        retries = 0
        max_bytes = 1_000_000

    table = make_table([fakeweb.url("/img/ratio.jpg?w=300&h=200")])
    out = DownloadStage(Settings(), allow_networks=LOCAL).process(table)
    assert (out["width"][0].as_py(), out["height"][0].as_py()) == (96, 64)


def test_loopback_blocked_by_default(fakeweb):
    out = DownloadStage(SETTINGS).process(make_table([fakeweb.url("/img/default-blocked.jpg")]))
    assert out[REASON].to_pylist() == ["blocked_address"]
    assert fakeweb.count("/img/default-blocked.jpg") == 0
