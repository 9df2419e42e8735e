"""decontaminate: drop pool rows whose image is a near duplicate of an evaluation image.

The user names evaluation sets (`sets`: a folder of images, a WebDataset tar or a parquet
file of image bytes, each with a name). A pool row goes as `eval_duplicate`, the set's
name in the ledger's `detail`, when its image's perceptual hash is within
`phash_distance` bits of the image or a 5-10% crop of an evaluation image, with phash plus
dhash within `hash_distance` bits (`pipeline.decontam.matching`), or its CLIP image embedding has cosine similarity at
least `embedding_threshold` to one. The defaults come from a measured precision/recall
curve (docs/stages.md). Two phases, linear in parts:

    eval   one task per set:   its images' variant hashes and embeddings, from the cache
                               (`cache`, keyed by content and model) or computed once
    match  per group of parts: each row against every set's index (banded hash lookup,
                               block matrix products), `eval_duplicate` + the set's name

The pool side hashes each image once (phash and dhash); it reuses clip_score's
`image_embedding` when the embedding model is clip_score's (the default: `model` unset),
else embeds the images with its own `model`. Without a model the embeddings are skipped.
"""
from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from typing import Annotated, Literal, Optional

import numpy as np
import pyarrow as pa

from pipeline.clip.embeddings import IMAGE_EMBEDDING, embedding_rows
from pipeline.core.constraints import AtLeast, Between, NonEmpty
from pipeline.core.parts import PartRef
from pipeline.core.stage import DETAIL, REASON, Resources, Stage, set_column, with_reason
from pipeline.core.steps import Step, StepContext
from pipeline.core.tasks import built_once, load_extras
from pipeline.decontam import evalsets
from pipeline.decontam.index import EvalIndex, ModelSpec, build_index, default_cache, embed_images
from pipeline.decontam.matching import pool_hashes
from pipeline.errors import UserError

SECTION = "decontaminate"


@dataclass
class EvalSetSettings:
    name: Annotated[str, NonEmpty()]
    path: Annotated[str, NonEmpty()]                 # folder, .tar (WebDataset) or .parquet
    format: Optional[Literal["folder", "tar", "parquet"]] = None   # default: by the path
    image_col: str = "jpg"                           # parquet: the image bytes (or {bytes, path})
    key_col: Optional[str] = None                    # parquet: the images' keys (default: row number)


@dataclass
class DecontaminateSettings:
    sets: list[EvalSetSettings] = field(default_factory=list)
    phash_distance: Annotated[int, Between(0, 32)] = 8   # phash bits to the image or one of its crops
    hash_distance: Annotated[int, Between(0, 128)] = 16  # phash + dhash bits to that same crop
    crop_variants: bool = True                           # also hash 5-10% crops of each eval image
    embeddings: bool = True                              # also match CLIP image embeddings (needs a model)
    embedding_threshold: Annotated[float, Between(-1, 1)] = 0.96   # cosine similarity
    model: Optional[str] = None        # default: clip_score's model (its embeddings are reused)
    pretrained: Optional[str] = None
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    batch_size: Annotated[int, AtLeast(1)] = 256
    cache: Optional[str] = None        # eval sets' hashes/embeddings; default ~/.cache/curate/decontaminate
    examples: Annotated[int, AtLeast(0)] = 8   # example pairs kept for the report
    enabled: bool = True


SETTINGS = DecontaminateSettings

EVAL_DUPLICATE = "eval_duplicate"
METHODS = ("", "phash", "embedding")
THUMB = 160


class DecontaminateStage(Stage):
    """`process` matches one table against the sets (index built in `setup`); the step
    builds the index once in its `eval` phase."""
    name = "decontaminate"
    label = "eval decontamination"
    inputs = ("uid", "jpg")
    inputs_from = "download"
    reads_images = True

    def __init__(self, settings, seed: int = 0):
        super().__init__(settings, seed)
        self.resources = Resources(stateful=True)
        self.index: Optional[EvalIndex] = None

    def setup(self) -> None:
        spec = own_model(self.settings)
        arrays = [build_index(*evalsets.read(s.path, s.format, s.image_col, s.key_col), self.settings.crop_variants,
                              spec, cache_dir(self.settings))[0] for s in self.settings.sets]
        self.index = EvalIndex(arrays, self.settings.phash_distance, self.settings.hash_distance)

    def process(self, table: pa.Table) -> pa.Table:
        if self.index is None:
            self.setup()
        op = MatchEval("", [s.name for s in self.settings.sets], self.settings, own_model(self.settings), False)
        return op.mark(table, self.index)[0]


def own_model(settings: DecontaminateSettings) -> Optional[ModelSpec]:
    if not settings.embeddings or not settings.model:
        return None
    return ModelSpec(settings.model, settings.pretrained, settings.device, settings.precision, settings.batch_size)


def cache_dir(settings: DecontaminateSettings) -> Optional[str]:
    if settings.cache is None:
        return default_cache()
    return settings.cache if settings.cache.strip().lower() not in ("", "none", "off") else None


@dataclass
class ReadEvalSet:
    """Reader of `eval`: one set's keys and image bytes."""
    set: EvalSetSettings

    def __call__(self) -> pa.Table:
        keys, data = evalsets.read(self.set.path, self.set.format, self.set.image_col, self.set.key_col)
        return pa.table({"key": pa.array(keys, pa.string()), "_image": pa.array(data, pa.binary())})


@dataclass
class IndexEvalSet:
    """Op of `eval`: the set's index as the task's extras (cached); its keys as data."""
    variants: bool
    spec: Optional[ModelSpec]
    cache: Optional[str]

    def __call__(self, table: pa.Table):
        arrays, hits = build_index(table["key"].to_pylist(), table["_image"].to_pylist(), self.variants,
                                   self.spec, self.cache)
        arrays["cache_hits"] = np.array([hits.get("hashes", False), hits.get("embeddings", False)])
        return table.select(["key"]), arrays


@dataclass
class MatchEval:
    """Op of `match`: `eval_duplicate` (the set's name as `_detail`) for rows that copy an
    evaluation image; extras: rows removed per set, and the example pairs."""
    eval_dir: str
    names: list
    settings: DecontaminateSettings
    spec: Optional[ModelSpec]   # embed the pool's images with it (None: read clip_score's, or none)
    reuse: bool                 # the embeddings are clip_score's `image_embedding`

    def __call__(self, table: pa.Table):
        index = built_once(("decontaminate", self.eval_dir), self.load)
        return self.mark(table, index)

    def load(self) -> EvalIndex:
        return EvalIndex([load_extras(self.eval_dir, i) for i in range(len(self.names))],
                         self.settings.phash_distance, self.settings.hash_distance)

    def mark(self, table: pa.Table, index: EvalIndex):
        hashes, has_hashes = pool_hashes(table["jpg"].to_pylist())
        x = None
        if self.reuse and IMAGE_EMBEDDING in table.column_names:
            x = embedding_rows(table[IMAGE_EMBEDDING])[0]
        elif self.spec is not None and index.embeddings is not None:
            x = embed_images(self.spec, table["jpg"].to_pylist())
        found = index.match(hashes, has_hashes, x, self.settings.embedding_threshold)
        owner = found["owner"]
        hit = owner >= 0
        earlier = (table[REASON].is_valid().to_numpy(zero_copy_only=False) if REASON in table.column_names
                   else np.zeros(table.num_rows, bool))
        new = hit & ~earlier
        sets = np.where(hit, index.set_of[np.maximum(owner, 0)], -1)
        names = np.array(list(self.names) + [None], dtype=object)
        table = with_reason(table, pa.array(np.where(hit, EVAL_DUPLICATE, None).tolist(), pa.string()))
        table = set_column(table, DETAIL, pa.array(names[np.where(new, sets, -1)].tolist(), pa.string()))
        rows = np.flatnonzero(new)
        uids = np.array(table["uid"].to_pylist(), dtype=object)[rows]
        order = np.argsort(uids.astype(str), kind="stable")[:self.settings.examples]
        extras = {"removed": np.bincount(sets[new], minlength=len(self.names)).astype(np.int64)}
        if len(order):
            picked = rows[order]
            extras.update(uid=uids[order].astype(str), set=sets[picked], row=index.row_of[owner[picked]],
                          method=found["method"][picked], score=found["score"][picked])
        return table, extras


class DecontaminateStep(Step):
    def __init__(self, settings: DecontaminateSettings, clip=None):
        super().__init__(DecontaminateStage, settings)
        names = [s.name for s in settings.sets]
        if not names:
            raise UserError("decontaminate.sets: name at least one evaluation set (name, path)")
        if len(set(names)) != len(names):
            raise UserError(f"decontaminate.sets: names must differ, got {names}")
        self.images = {s.name: evalsets.check(s.name, s.path, s.format, s.image_col) for s in settings.sets}
        self.spec, self.reuse = own_model(settings), False
        if settings.embeddings and not settings.model and clip is not None:
            self.spec = ModelSpec(clip.model, clip.pretrained, clip.device, clip.precision, clip.batch_size)
            self.reuse = True

    def reads(self) -> tuple:
        return ("uid", "jpg") + ((IMAGE_EMBEDDING,) if self.reuse else ())

    def run(self, ctx: StepContext, inputs: list[PartRef]) -> list[PartRef]:
        sets = self.settings.sets
        ctx.run_phase("eval", [ReadEvalSet(s) for s in sets],
                      IndexEvalSet(self.settings.crop_variants, self.spec, cache_dir(self.settings)), counted=False)
        op = MatchEval(ctx.phase_dir("eval"), [s.name for s in sets], self.settings,
                       None if self.reuse else self.spec, self.reuse)
        outputs = ctx.run_grouped("match", inputs, op, images=True)
        ctx.record[SECTION] = self.summary(ctx)
        return outputs

    def summary(self, ctx: StepContext) -> dict:
        """What the report shows: per set its images and the pool rows removed, and example
        pairs (the smallest removed uids) with a thumbnail of the evaluation image."""
        sets = self.settings.sets
        removed = np.zeros(len(sets), np.int64)
        examples = []
        for extras in ctx.extras("match"):
            removed += extras["removed"]
            if "uid" in extras:
                examples += [{"uid": str(u), "set": sets[int(s)].name, "row": int(r), "method": METHODS[int(m)],
                              "score": round(float(v), 4)}
                             for u, s, r, m, v in zip(extras["uid"], extras["set"], extras["row"], extras["method"],
                                                      extras["score"])]
        examples = sorted(examples, key=lambda e: e["uid"])[:self.settings.examples]
        hits = [bool(load_extras(ctx.phase_dir("eval"), i)["cache_hits"][0]) for i in range(len(sets))]
        add_eval_images(examples, sets)
        return {"sets": [{"name": s.name, "path": s.path, "images": self.images[s.name], "removed": int(n),
                          "cached": hit} for s, n, hit in zip(sets, removed, hits)],
                "phash_distance": self.settings.phash_distance, "hash_distance": self.settings.hash_distance,
                "embedding_threshold": self.settings.embedding_threshold if self.spec else None,
                "model": self.spec.model if self.spec else None, "examples": examples}


def add_eval_images(examples: list[dict], sets: list[EvalSetSettings]) -> None:
    """Each example's evaluation image: its key and a small JPEG `data:` URI (the sets with
    examples are read once more, on the driver)."""
    by_name = {s.name: s for s in sets}
    for name in sorted({e["set"] for e in examples}):
        s = by_name[name]
        keys, data = evalsets.read(s.path, s.format, s.image_col, s.key_col)
        for e in (e for e in examples if e["set"] == name):
            e["key"], e["eval_image"] = keys[e["row"]], thumbnail(data[e["row"]])


def thumbnail(jpg: bytes) -> Optional[str]:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(jpg)) as image:
            image = image.convert("RGB")
            image.thumbnail((THUMB, THUMB))
            out = io.BytesIO()
            image.save(out, format="JPEG", quality=85)
    except Exception:  # noqa: BLE001 - an image that does not decode is not shown
        return None
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode("ascii")


def build_step(settings: DecontaminateSettings, run) -> DecontaminateStep:
    clip = run.section("clip_score") if run is not None and hasattr(run, "section") else None
    return DecontaminateStep(settings, clip)


STAGE = DecontaminateStage
