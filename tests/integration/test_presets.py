"""DataComp's baselines as presets (issue 22, items 2 and 3): each preset's kept uids equal an
implementation of DataComp's rule written here from `baselines/apply_filter.py`, metadata
filters run before (and instead of) any download, and preset mistakes are one line."""
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.app import run_pipeline
from pipeline.config import load_with_preset
from pipeline.stages.language import default_model_path
from tests.integration.test_datacomp_pool import datacomp_split
from tests.support import read_dataset

WORDS = ["dog", "dogs", "red", "car", "on", "the", "beach", "photo", "of", "a", "small", "house", "geese",
         "running", "xyzzy", "le", "chien", "sur", "la", "plage", "der", "Hund", "am", "Strand", "el", "perro"]
SPACES = [" ", " ", " ", "  ", "\n", "\t", "\u00a0", "\u3000", "\x1c"]
ENTITIES = ["n02084071", "n01855672", "n04285008"]   # dog, goose, sports car (the rest: no match)


def pool_table(rows: int, seed: int = 0) -> pa.Table:
    """A DataComp-style pool whose captions, sizes and scores cross every rule's edge: few
    words, odd whitespace, languages, sides at 199/200, aspect exactly 3, tied and NaN scores."""
    rng = random.Random(seed)
    texts, widths, heights = [], [], []
    for i in range(rows):
        words = [rng.choice(WORDS) for _ in range(rng.choice([1, 2, 3, 3, 4, 6]))]
        text = words[0] + "".join(rng.choice(SPACES) + w for w in words[1:])
        texts.append((" " if i % 17 == 0 else "") + text + ("\n" if i % 11 == 0 else ""))
        side = rng.choice([64, 150, 199, 200, 201, 400, 600, 1024])
        widths.append(side)
        zero = 0 if i % 97 == 0 else side
        heights.append(rng.choice([side, side * 3, side * 3 + 1, side // 3, max(1, side // 2), zero]))
    scores = np.array([rng.uniform(0.1, 0.4) for _ in range(rows)], np.float32)
    scores[::7] = np.float32(0.3)                 # ties at a cut, and at the threshold
    scores[3::50] = np.nextafter(np.float32(0.3), np.float32(0))   # just below 0.3 in float32
    scores[5::60] = np.nan
    return pa.table({
        "uid": [f"{rng.getrandbits(128):032x}" for _ in range(rows)],
        "url": [f"http://127.0.0.1:9/{i}.jpg" for i in range(rows)],
        "text": texts,
        "original_width": pa.array(widths, pa.int64()),
        "original_height": pa.array(heights, pa.int64()),
        "clip_b32_similarity_score": pa.array(scores),
        "clip_l14_similarity_score": pa.array(np.roll(scores, 3)),
    })


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    folder = tmp_path_factory.mktemp("presets")
    table = pool_table(1200)
    (folder / "pool").mkdir()
    for i, start in enumerate(range(0, table.num_rows, 400)):   # three shards, as a pool is published
        pq.write_table(table.slice(start, 400), folder / "pool" / f"{i:08d}.parquet", row_group_size=100)
    (folder / "entities.txt").write_text("\n".join(ENTITIES) + "\n")
    return folder, table


# --- DataComp's rules, as apply_filter.py writes them (pandas and numpy on the whole pool) ----

def english(texts) -> np.ndarray:
    import fasttext

    model = fasttext.load_model(default_model_path())
    return np.array([model.predict(t.replace("\n", " "))[0][0].split("__label__")[1] == "en" for t in texts])


def basic_filter(df) -> set:
    en = english(df.text)
    words = df.text.apply(lambda x: len(x.split()))
    chars = df.text.apply(len)
    smaller = np.minimum(df.original_width, df.original_height)
    aspect = np.maximum(df.original_width, df.original_height) / smaller
    return set(df.uid[en & (words > 2) & (chars > 5) & (smaller >= 200) & (aspect <= 3.0)])


def clip_score(df, key: str, threshold=None, fraction=None) -> set:
    if threshold is None:
        n = int(len(df) * fraction)
        threshold = -np.sort(-df[key].values)[n]
    return set(df.uid[df[key] >= threshold])


def text_based(df) -> set:
    from pipeline.wordnet import reader

    ids = {int(x[1:]) for x in ENTITIES}

    def has_entity(text):
        for word in text.split():
            synsets = reader().synsets(word)
            if synsets and synsets[0].offset() in ids:
                return True
        return False

    return set(df.uid[english(df.text) & df.text.apply(has_entity)])


def fasttext_tokens(text: str) -> int:
    """len(fasttext.tokenize(text)): fastText's Dictionary::readWord, written out (words split
    on space, tab, newline, CR, VT, FF, NUL; each newline one more token, `</s>`)."""
    count, word = 0, False
    for char in text:
        if char in " \t\n\r\x0b\x0c\x00":
            count += word + (char == "\n")
            word = False
        else:
            word = True
    return count + word


def image_based(df, l14: np.ndarray, centroids: np.ndarray, targets: np.ndarray) -> set:
    def nearest(x):
        return np.argmax(x.astype(np.float32) @ centroids.astype(np.float32).T, axis=1)

    target_ids = set(np.unique(nearest(targets)).tolist())
    in_target = np.array([c in target_ids for c in nearest(l14)])
    captions = english(df.text) & (df.text.apply(fasttext_tokens) > 1) & (df.text.apply(len) > 5)
    return set(df.uid[captions & in_target])


def kept_with(folder: Path, name: str, preset: str, **params) -> set:
    settings = load_with_preset(None, preset, params, [str(folder / "pool")],
                                [f"output={folder / name}", "processes=2", "input.part_rows=150"])
    run_pipeline(settings, settings.output, log=lambda *_: None)
    kept = read_dataset(folder / name / "kept")["uid"].to_pylist()
    assert np.array_equal(np.load(folder / name / "uids.npy"), datacomp_split(kept))
    return set(kept)


@pytest.mark.parametrize("preset, params, rule", [
    ("datacomp:no_filter", {}, lambda df: set(df.uid)),
    ("datacomp:basic_filter", {}, basic_filter),
    ("datacomp:clip_score", {"threshold": 0.3, "arch": "b32"},
     lambda df: clip_score(df, "clip_b32_similarity_score", threshold=np.float32(0.3))),
    ("datacomp:clip_score", {"fraction": 0.25}, lambda df: clip_score(df, "clip_l14_similarity_score", fraction=0.25)),
    ("datacomp:laion2b", {}, lambda df: set(df.uid[english(df.text)]) & clip_score(
        df, "clip_b32_similarity_score", threshold=np.float32(0.28))),
])
def test_preset_keeps_what_datacomp_keeps(pool, preset, params, rule):
    folder, table = pool
    name = preset.split(":")[1] + "".join(f"_{k}{v}" for k, v in params.items())
    expected = rule(table.to_pandas())
    assert 0 < len(expected) < table.num_rows or preset.endswith("no_filter")
    assert kept_with(folder, name, preset, **params) == expected


def test_text_based_keeps_captions_naming_an_imagenet_class(pool):
    folder, table = pool
    expected = text_based(table.to_pandas())
    assert 0 < len(expected) < table.num_rows
    assert kept_with(folder, "text_based", "datacomp:text_based", entities=str(folder / "entities.txt")) == expected


def test_fraction_cut_is_exact_with_ties_nan_and_many_parts(tmp_path):
    """The radix select over 40 parts finds DataComp's threshold: a tie at the cut keeps all
    its rows, NaNs sort last, and the cut's value is written down."""
    rows = 4000
    rng = np.random.default_rng(3)
    scores = rng.choice(np.float32([0.1, 0.2, 0.25, 0.3, 0.31, np.nan]), rows).astype(np.float32)
    scores[:1500] = rng.uniform(-1, 1, 1500).astype(np.float32)
    table = pool_table(rows).set_column(5, "clip_b32_similarity_score", pa.array(scores))
    (tmp_path / "pool").mkdir()
    pq.write_table(table, tmp_path / "pool" / "p.parquet")
    for fraction in (0.01, 0.5, 0.9):
        name = f"f{fraction}"
        kept = kept_with(tmp_path, name, "datacomp:clip_score", fraction=fraction, arch="b32")
        assert kept == clip_score(table.to_pandas(), "clip_b32_similarity_score", fraction=fraction)
        written = yaml.safe_load((tmp_path / name / "steps" / "01_pool_filter" / "threshold.json").read_text())
        n = int(rows * fraction)
        assert written["rows"] == rows
        expected = -np.sort(-scores)[n]
        assert (written["threshold"] is None and np.isnan(expected)) or written["threshold"] == float(expected)


def test_metadata_only_run_makes_no_request_and_download_fetches_only_the_survivors(tmp_path):
    from pipeline.testing.fakeweb import FakeWeb
    from pipeline.testing.world import make_world

    rows = 60
    table = pool_table(rows, seed=1)
    with FakeWeb() as web:
        for i, sample in enumerate(make_world(rows, seed=2, image_size=64)):
            web.add_image(f"/{i}.jpg", sample.jpg)
        table = table.set_column(1, "url", pa.array([web.url(f"/{i}.jpg") for i in range(rows)]))
        (tmp_path / "pool").mkdir()
        pq.write_table(table, tmp_path / "pool" / "p.parquet")
        kept = kept_with(tmp_path, "metadata_only", "datacomp:clip_score", threshold=0.25)
        assert web.total_requests == 0, "a run without a download section makes no request"

        config = tmp_path / "download.yaml"
        config.write_text(yaml.safe_dump({"output": str(tmp_path / "downloaded"), "processes": 2,
                                          "allow_networks": ["127.0.0.1/32"],
                                          "download": {"image_size": 32, "threads": 2, "timeout": 5}}))
        result = subprocess.run([sys.executable, "-m", "pipeline", "run", str(config), "--preset",
                                 "datacomp:clip_score", "--threshold", "0.25", "--input", str(tmp_path / "pool")],
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-2000:]
        fetched = {i for i in range(rows) if web.count(f"/{i}.jpg")}
        assert web.total_requests == len(kept) > 0
    uids = table["uid"].to_pylist()
    assert {uids[i] for i in fetched} == kept, "exactly the rows the metadata kept were fetched"


def test_preset_mistakes_are_one_line(pool, tmp_path):
    folder, _ = pool
    clash = tmp_path / "clash.yaml"
    clash.write_text(yaml.safe_dump({"output": str(tmp_path / "x"), "pool_filter": {"min_side": 10}}))
    cases = [
        (["--preset", "datacomp:nothing", "--input", "p", "--output", "o"], "no such preset"),
        (["--preset", "datacomp:clip_score", "--input", "p", "--output", "o"], "--threshold or --fraction"),
        (["--preset", "datacomp:text_based", "--input", "p", "--output", "o"], "needs --entities"),
        (["--preset", "datacomp:basic_filter", "--threshold", "0.3", "--input", "p", "--output", "o"],
         "does not take --threshold"),
        (["--preset", "datacomp:basic_filter", "--input", "p"], "give --output"),
        ([str(clash), "--threshold", "0.3"], "option of --preset"),
        ([str(clash), "--preset", "datacomp:basic_filter", "--input", str(folder / "pool")], "defines"),
        (["--preset", "datacomp:text_based", "--entities", str(tmp_path / "none.txt"), "--input",
          str(folder / "pool"), "--output", str(tmp_path / "t")], "entity list not found"),
    ]
    for args, message in cases:
        result = subprocess.run([sys.executable, "-m", "pipeline", "run", *args], capture_output=True, text=True,
                                timeout=120, cwd=tmp_path)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and message in lines[0], (args, result.stderr[-1500:])
    assert not (tmp_path / "t").exists(), "a refused preset run makes no run folder"


def test_presets_command_lists_every_preset_with_its_sections():
    from pipeline.presets import PRESETS

    result = subprocess.run([sys.executable, "-m", "pipeline", "presets"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for name in PRESETS:
        assert f"\n{name}: " in "\n" + result.stdout
    assert "min_side: 200" in result.stdout and "word_split: fasttext" in result.stdout


@pytest.fixture(scope="module")
def clustered_pool(pool):
    """The pool's L/14 image embeddings (npz beside each shard) near 12 centroids, and
    targets near 4 of them."""
    folder, table = pool
    rng = np.random.default_rng(11)
    centroids = rng.standard_normal((12, 64)).astype(np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    l14 = (centroids[rng.integers(0, 12, table.num_rows)] + 0.05 * rng.standard_normal((table.num_rows, 64)))
    l14 = l14.astype(np.float16)
    for i, start in enumerate(range(0, table.num_rows, 400)):
        np.savez(folder / "pool" / f"{i:08d}.npz", l14_img=l14[start:start + 400])
    targets = (centroids[[0, 3, 5, 8]] + 0.05 * rng.standard_normal((4, 64))).astype(np.float32)
    np.save(folder / "centroids.npy", centroids)
    np.save(folder / "targets.npy", targets)
    return folder, table, l14, centroids, targets


def test_image_based_presets_keep_what_datacomp_keeps(clustered_pool):
    folder, table, l14, centroids, targets = clustered_pool
    df = table.to_pandas()
    files = {"centroids": str(folder / "centroids.npy"), "targets": str(folder / "targets.npy")}
    expected = image_based(df, l14, centroids, targets)
    assert 0 < len(expected) < table.num_rows
    assert kept_with(folder, "image_based", "datacomp:image_based", **files) == expected
    both = expected & clip_score(df, "clip_l14_similarity_score", fraction=0.4)
    assert 0 < len(both) < len(expected)
    assert kept_with(folder, "image_based_clip", "datacomp:image_based_intersect_clip_score", fraction=0.4,
                     **files) == both


@pytest.mark.slow   # the Ray and Spark engines
def test_every_preset_rule_writes_the_same_uids_on_every_engine(clustered_pool, tmp_path):
    """Every rule the presets use at once (captions as fastText tokens, language, sizes, the
    exact top fraction, WordNet entities, image clusters) gives one uids.npy everywhere."""
    folder, table, l14, centroids, targets = clustered_pool
    (folder / "entities.txt").write_text("\n".join(ENTITIES) + "\n")
    files = {"centroids": str(folder / "centroids.npy"), "targets": str(folder / "targets.npy")}
    rules = ["pool_filter.min_side=150", "pool_filter.max_aspect=3.0",
             f"pool_filter.entities={folder / 'entities.txt'}"]
    written = {}
    for engine in ("local", "ray", "spark"):
        settings = load_with_preset(None, "datacomp:image_based_intersect_clip_score", {"fraction": 0.6, **files},
                                    [str(folder / "pool")],
                                    [f"output={tmp_path / engine}", f"engine={engine}", "processes=2",
                                     "input.part_rows=150", "ray.num_cpus=2", "spark.master=local[2]", *rules])
        run_pipeline(settings, settings.output, log=lambda *_: None)
        written[engine] = np.load(tmp_path / engine / "uids.npy")
    assert len(written["local"]) > 0
    assert np.array_equal(written["local"], written["ray"]) and np.array_equal(written["local"], written["spark"])


def test_a_changed_npz_is_a_changed_input(clustered_pool, tmp_path):
    """Resuming after a pool's embeddings changed refuses, as for its parquet."""
    folder, table, l14, centroids, targets = clustered_pool
    files = {"centroids": str(folder / "centroids.npy"), "targets": str(folder / "targets.npy")}
    kept_with(folder, "npz_changed", "datacomp:image_based", **files)
    npz = folder / "pool" / "00000001.npz"
    original = npz.read_bytes()
    try:
        np.savez(npz, l14_img=l14[400:800][::-1])
        settings = load_with_preset(None, "datacomp:image_based", files, [str(folder / "pool")],
                                    [f"output={folder / 'npz_changed'}", "processes=2", "input.part_rows=150"])
        with pytest.raises(Exception, match="00000001.npz"):
            run_pipeline(settings, settings.output, log=lambda *_: None)
    finally:
        npz.write_bytes(original)
