"""Named presets: DataComp's baselines (`baselines/apply_filter.py`) as ordinary config sections.

`curate run --preset datacomp:basic_filter --input POOL --output RUN` runs the sections a
preset expands to; `curate presets` lists every preset with what it expands to. A preset
takes the pool's own uids (`input.uid_col: uid`) and sets only the sections it names: a config
given beside it adds the rest (download, shard, engine) and may not set those sections too.

Each baseline, as DataComp defines it, and the sections it becomes:
- `no_filter`: every row.
- `basic_filter`: fastText's top language is English, more than 2 words (`str.split`), more
  than 5 characters (`len`), smaller side at least 200 px, aspect ratio at most 3.
- `text_based`: English, and a word (`str.split`) whose first WordNet synset's offset is in
  the given ImageNet-21k synset list (`--entities`, lines such as `n02084071`).
- `clip_score`: the precomputed B/32 or L/14 score (`--arch`) at least `--threshold`, or in
  the top `--fraction` of the pool (ties at the cut kept).
- `laion2b`: English and the B/32 score at least 0.28 (DataComp detects the language with
  gcld3, this preset with fastText: see the README).
- `image_based`: English, more than 1 fastText token, more than 5 characters, and the image's
  L/14 embedding nearest a pool centroid (`--centroids`) that is nearest to one of the target
  embeddings (`--targets`, DataComp: ImageNet-1k's).
- `image_based_intersect_clip_score`: both of the above.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from pipeline.errors import UserError

ENGLISH = {"keep": ["en"], "min_score": 0.0}                       # fastText's top label, any score
NO_LIMIT = 1 << 31                                                 # characters: no upper bound
BASIC_CAPTION = {"min_chars": 6, "max_chars": NO_LIMIT, "min_words": 3, "drop_junk": False, "strip": False,
                 "word_split": "whitespace"}                       # len(text) > 5, len(text.split()) > 2
IMAGE_BASED_CAPTION = {"min_chars": 6, "max_chars": NO_LIMIT, "min_words": 2, "drop_junk": False,
                       "strip": False, "word_split": "fasttext"}   # len(fasttext.tokenize(text)) > 1
SCORE_COLUMNS = {"b32": "clip_b32_similarity_score", "l14": "clip_l14_similarity_score"}
PARAMS = ("threshold", "fraction", "arch", "entities", "centroids", "targets")


@dataclass(frozen=True)
class Preset:
    name: str
    summary: str
    params: tuple        # the parameters it takes (PARAMS)
    required: tuple      # of those, the ones it needs
    sections: Callable[[dict], dict]


def _score_cut(params: dict) -> dict:
    threshold, fraction = params.get("threshold"), params.get("fraction")
    if (threshold is None) == (fraction is None):
        raise UserError("--preset datacomp:clip_score: give --threshold or --fraction (one of them)")
    arch = params.get("arch") or "l14"
    if arch not in SCORE_COLUMNS:
        raise UserError(f"--arch {arch}: expected b32 or l14")
    cut = {"min_score": float(threshold)} if threshold is not None else {"top_fraction": float(fraction)}
    return {"score_col": SCORE_COLUMNS[arch], **cut}


def _image_based(params: dict) -> dict:
    return {"input": {"embeddings": ["l14_img"]}, "caption_filter": dict(IMAGE_BASED_CAPTION),
            "language": dict(ENGLISH),
            "image_based": {"centroids": params["centroids"], "targets": [params["targets"]],
                            "embedding": "l14_img"}}


def _intersect(params: dict) -> dict:
    return {**_image_based(params), "pool_filter": _score_cut(params)}


PRESETS = {p.name: p for p in [
    Preset("datacomp:no_filter", "every row of the pool", (), (), lambda p: {}),
    Preset("datacomp:basic_filter", "English, > 2 words, > 5 characters, smaller side >= 200 px, aspect <= 3",
           (), (), lambda p: {"caption_filter": dict(BASIC_CAPTION), "language": dict(ENGLISH),
                              "pool_filter": {"min_side": 200, "max_aspect": 3.0}}),
    Preset("datacomp:text_based", "English and a word whose first WordNet synset is an ImageNet-21k class",
           ("entities",), ("entities",),
           lambda p: {"language": dict(ENGLISH), "pool_filter": {"entities": p["entities"]}}),
    Preset("datacomp:clip_score", "precomputed CLIP score >= threshold, or its top fraction",
           ("threshold", "fraction", "arch"), (), lambda p: {"pool_filter": _score_cut(p)}),
    Preset("datacomp:laion2b", "English and B/32 score >= 0.28 (fastText for gcld3)", (), (),
           lambda p: {"language": dict(ENGLISH),
                      "pool_filter": {"score_col": SCORE_COLUMNS["b32"], "min_score": 0.28}}),
    Preset("datacomp:image_based", "basic caption rules and L/14 image clusters nearest the targets",
           ("centroids", "targets"), ("centroids", "targets"), _image_based),
    Preset("datacomp:image_based_intersect_clip_score", "image_based and clip_score together",
           ("centroids", "targets", "threshold", "fraction", "arch"), ("centroids", "targets"), _intersect),
]}


def expand(name: str, params: dict) -> dict:
    """The config sections preset `name` expands to with `params` (those given: not None)."""
    preset = PRESETS.get(name) or PRESETS.get(f"datacomp:{name}")
    if preset is None:
        raise UserError(f"--preset {name}: no such preset (curate presets lists them)")
    given = {k: v for k, v in params.items() if v is not None}
    unknown = sorted(set(given) - set(preset.params))
    if unknown:
        raise UserError(f"--preset {preset.name}: does not take --{unknown[0]}")
    missing = [k for k in preset.required if k not in given]
    if missing:
        raise UserError(f"--preset {preset.name}: needs --{missing[0]}")
    sections = preset.sections(given)
    sections["input"] = {"uid_col": "uid", **sections.get("input", {})}
    return sections


def apply(config: dict, name: str, params: dict, source: str) -> dict:
    """`config` (a mapping of sections) with preset `name`'s sections; the preset's input keys
    join the config's input. A section set both ways is an error."""
    sections = expand(name, params)
    clash = sorted(k for k in sections if k != "input" and k in config)
    if clash:
        raise UserError(f"{source}: sets {clash[0]}, which --preset {name} defines; remove it from the config")
    merged = {**config, **{k: v for k, v in sections.items() if k != "input"}}
    given_input = config.get("input") or {}
    if isinstance(given_input, (str, list)):
        given_input = {"path": given_input}
    merged["input"] = {**given_input, **sections["input"]}
    return merged


def describe() -> str:
    """What `curate presets` prints: each preset, its parameters and its sections as YAML."""
    import yaml

    example = {"threshold": 0.3, "arch": "l14", "entities": "imagenet21k_wordnet_ids.txt",
               "centroids": "centroids.npy", "targets": "in1k_l14_embeddings.npy"}
    blocks = []
    for preset in PRESETS.values():
        params = {k: example[k] for k in preset.params if k in example}
        flags = " ".join(f"--{k} {v}" for k, v in params.items())
        body = yaml.safe_dump(expand(preset.name, params), sort_keys=False, default_flow_style=None).rstrip()
        blocks.append(f"{preset.name}: {preset.summary}\n  takes: {flags or '-'}\n  "
                      + body.replace("\n", "\n  "))
    return "\n\n".join(blocks)
