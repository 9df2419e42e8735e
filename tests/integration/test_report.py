"""report.html: built from real run folders, opened offline in headless Chromium."""
import json
import re
import shutil
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageStat

from pipeline.cli import main as curate
from pipeline.errors import UserError
from pipeline.report import data as report_data
from pipeline.report import write_report
from pipeline.testing.fakeweb import FakeWeb
from pipeline.testing.world import make_world, shuffled_captions
from tests.support import run, text_config, write_sample

ROWS = 60
ALL_SECTIONS = ["funnel", "sources", "throughput", "download", "languages", "clip", "entries", "kept", "dropped",
                "datacard"]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--hide-scrollbars"]



@pytest.fixture(scope="module")
def image_run(tmp_path_factory, tiny_clip_checkpoint):
    """Text stages, download (with 404s), clip_score (top_fraction) and shard over world images."""
    folder = tmp_path_factory.mktemp("report")
    world = make_world(ROWS, seed=5, image_size=64)
    captions = [s.caption for s in world]
    wrong = shuffled_captions(captions, seed=1)
    with FakeWeb() as web:
        for i, sample in enumerate(world):
            if i % 10 != 7:  # every tenth image is missing: http_404
                web.add_image(f"/w/{i}.jpg", sample.jpg)
        urls = [web.url(f"/w/{i}.jpg") for i in range(ROWS)]
        texts = [captions[i] if i % 3 else wrong[i] for i in range(ROWS)]
        pq.write_table(pa.table({"url": urls + [urls[0], urls[1]], "text": texts + [texts[0], "x"]}),
                       folder / "pairs.parquet")
        cfg = text_config(folder / "pairs.parquet", folder / "run", processes=1,
                          allow_networks=["127.0.0.1/32"],
                          language={"keep": ["en"], "min_score": 0.0},
                          metadata={"entries": ["wordnet", "wordfreq:20000"], "t": 5},
                          download={"image_size": 64, "threads": 8, "timeout": 5, "resize_mode": "border"},
                          clip_score={"model": "curate-tiny", "pretrained": str(tiny_clip_checkpoint),
                                      "device": "cpu", "precision": "fp32", "batch_size": 32,
                                      "filter": "top_fraction", "top_fraction": 0.6},
                          shard={"samples_per_shard": 16})
        run(cfg)
    return folder / "run"


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    """Text stages only: no download, no clip_score, no shards."""
    folder = tmp_path_factory.mktemp("report-text")
    cfg = text_config(write_sample(folder / "pairs.parquet", rows=300), folder / "run", processes=1)
    run(cfg)
    return folder / "run"


def chromium(args, tmp_path, timeout=90):
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium; `make test` does it)")
    profile = tmp_path / "chromium-profile"
    return subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=timeout)


def sections(html):
    return set(re.findall(r'<section id="([a-z]+)">', html))


@pytest.mark.slow
def test_report_renders_every_plot_and_image_offline(image_run, tmp_path):
    (image_run / "report.html").unlink(missing_ok=True)  # the runner writes one too
    path = Path(write_report(image_run))
    html = path.read_text()
    assert sections(html) == set(ALL_SECTIONS) | {"config"}
    assert not re.search(r'(src|href)="(?!data:)', html), "everything must be embedded"
    assert "<link" not in html and "@import" not in html and "url(" not in html
    assert "threshold" in html and "http_404" in html and "low_clip_score" in html
    images, plots = html.count("<img "), html.count('<svg class="plot"')
    assert plots == 6 and images >= 20

    dom = chromium(["--virtual-time-budget=10000", "--dump-dom", path.as_uri()], tmp_path)
    root = re.search(r"<html[^>]*>", dom.stdout)
    attrs = dict(re.findall(r'data-([a-z-]+)="(\d+)"', root.group(0) if root else ""))
    assert attrs, f"the page's check script did not run: {dom.stderr[-500:]}"
    assert int(attrs["images"]) == int(attrs["images-decoded"]) == images, attrs
    assert int(attrs["plots"]) == int(attrs["plots-drawn"]) == plots, attrs

    shot = tmp_path / "report.png"
    chromium([f"--screenshot={shot}", "--window-size=1200,4000", path.as_uri()], tmp_path)
    with Image.open(shot) as image:
        assert image.size == (1200, 4000)
        gray = image.convert("L")
        assert ImageStat.Stat(gray).stddev[0] > 20, "screenshot is blank"


@pytest.mark.slow
def test_clip_histogram_uses_scored_rows_and_top_fraction_threshold(image_run):
    scores = report_data.clip_scores(image_run)
    threshold = json.loads(next((image_run / "steps").glob("*_clip_score/threshold.json")).read_text())
    assert scores.threshold == threshold["threshold"] and scores.filter == "top_fraction"
    summary = json.loads((image_run / "summary.json").read_text())
    clip = next(s for s in summary["stages"] if s["name"] == "clip_score")
    assert len(scores.kept) == summary["kept_rows"] and len(scores.dropped) == clip["rows_in"] - clip["rows_out"]


def test_text_only_run_leaves_out_image_sections(text_run):
    (text_run / "report.html").unlink(missing_ok=True)
    assert curate(["report", str(text_run)]) == 0
    html = (text_run / "report.html").read_text()
    assert sections(html) == {"funnel", "sources", "throughput", "languages", "entries", "datacard", "config"}
    assert "<img " not in html


def test_summary_only_folder_gets_a_funnel(tmp_path):
    stages = [{"name": "ingest", "rows_in": 5, "rows_out": 5, "dropped": {}, "seconds": 0.0},
              {"name": "download", "rows_in": 5, "rows_out": 2, "dropped": {"http_404": 3}, "seconds": 1.0}]
    (tmp_path / "summary.json").write_text(json.dumps({"input_rows": 5, "kept_rows": 2, "stages": stages}))
    (tmp_path / "config.json").write_text(json.dumps({"clip_score": {"filter": "threshold", "threshold": 0.3}}))
    html = Path(write_report(tmp_path)).read_text()
    assert sections(html) == {"funnel", "throughput", "download", "config"}
    assert report_data.clip_threshold(tmp_path) == (0.3, "threshold")


def test_folder_without_summary_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(UserError, match="summary.json"):
        write_report(tmp_path)
    assert curate(["report", str(tmp_path)]) == 2
    assert "summary.json" in capsys.readouterr().err


def test_histogram_and_rank_helpers():
    edges = report_data.bin_edges([pa.array([0.1, 0.5, 0.9])], [0.3], bins=4)
    assert edges[0] == pytest.approx(0.1) and edges[-1] == pytest.approx(0.9)
    assert report_data.histogram_counts(pa.array([0.1, 0.5, 0.9]), edges) == [1, 0, 1, 1]
    ranks = report_data.log_ranks(100_000, 50)
    assert ranks[0] == 0 and ranks[-1] == 99_999 and len(ranks) <= 51 and ranks == sorted(ranks)
