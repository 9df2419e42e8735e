"""semantic_dedup: SemDeDup (Abbas et al. 2023) on clip_score's L2-normalised image embeddings.

Rows whose image embedding has cosine similarity >= 1 - `eps` to a kept row of the same
k-means cluster are dropped as `semantic_duplicate` (re-crops, colour shifts, re-encodes
that a perceptual hash misses). Four phases, no engine shuffle, the driver holds no rows:

    pick     per group:  `uid` + `image_embedding` of the rows whose hash of (seed, uid) is
                         below a cut that keeps ~1.2 x `sample_rows` of all rows (in parallel)
    sample   one task:   reads the picked rows only, keeps the (at most `sample_rows`) with
                         the smallest hash, trains spherical k-means (faiss) on them; the
                         centroids are the task's extras (`sample/done/part-00000.npz`), its
                         data the sampled uids
    scatter  per group:  nearest centroid of each row -> `_cluster`, `_centroid_sim`;
                         rows written as row groups keyed by cluster
    reduce   per range:  a range of clusters from every scatter file; within each cluster,
                         rows in keep order (`hard`: farthest from the centroid first,
                         `easy`: nearest first, `random`: by hash of (seed, uid)), ties by uid
                         then `_pos`, are kept greedily unless similar to an already kept row

`clusters: 0` picks k = ceil(sqrt(rows / 10)) (a cluster of n rows costs n^2 comparisons,
so cluster size grows as sqrt(rows)), capped at sample / 39 (faiss wants >= 39 training
points per centroid) and at least 1. At scale set `clusters` and `sample_rows` yourself
(SemDeDup used 50k clusters for LAION-440M, ~9k rows per cluster).

Every choice depends only on row contents, uid, `_pos` order and the seed: the same kept set
on every engine and for any part count (faiss runs on one thread for reproducible centroids;
assignment is in float64).

It reads `image_embedding` (declared, so clip_score adds the embeddings for it); the run
keeps the embedding columns in its result only where an output asks for them
(`clip_score.keep_embeddings`). With `embedding: pool_l14_img` (any `pool_<array>` of
`input.embeddings`) it reads a DataComp pool's precomputed embeddings instead (float16,
converted to float32 and re-normalised): a metadata-only run, no clip_score, no download.
The run's index then holds that column's embeddings; `exclude` compares them with earlier
runs' (the same width is checked before the run; use the same CLIP model).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.clip.embeddings import (
    IMAGE_EMBEDDING,
    check_embedding_name,
    embedding_rows,
    embedding_width,
    is_pool_column,
    missing_hint,
)
from pipeline.core import parts, run_index
from pipeline.core.constraints import AtLeast, Between
from pipeline.core.hashing import splitmix64, uid_to_u64
from pipeline.core.parts import PartRef
from pipeline.core.stage import POS, REASON, Stage
from pipeline.core.steps import Step, StepContext, bucket_ranges, bucket_refs, group_by_rows, rows_of
from pipeline.core.tasks import ReadParts, built_once, load_extras
from pipeline.errors import UserError

SECTION = "semantic_dedup"


@dataclass
class SemanticDedupSettings:
    eps: Annotated[float, Between(0, 1, high_open=True)] = 0.05   # drop at cosine similarity >= 1 - eps to a kept row
    clusters: Annotated[int, AtLeast(0)] = 0           # k-means k; 0: ceil(sqrt(rows / 10)), <= sample / 39
    sample_rows: Annotated[int, AtLeast(1)] = 100_000  # rows the k-means trains on (hash of seed, uid)
    keep: Literal["hard", "easy", "random"] = "hard"
    niter: Annotated[int, AtLeast(1)] = 20             # k-means iterations
    embedding: str = IMAGE_EMBEDDING   # the column it reads: clip_score's, or a pool's (pool_l14_img, ...)
    enabled: bool = True


SETTINGS = SemanticDedupSettings

SEMANTIC_DUPLICATE = "semantic_duplicate"
CLUSTER, CENTROID_SIM = "_cluster", "_centroid_sim"
IN_EARLIER = "_in_earlier"
IN_EARLIER_RUN, INDEX_EMBEDDING = run_index.IN_EARLIER_RUN, run_index.INDEX_EMBEDDING
MIN_POINTS_PER_CENTROID = 39
BLOCK = 1024   # rows compared at once within a cluster
EXAMPLES = 12  # removed pairs (with what they duplicate) each reduce task keeps for the report


# --- pieces, usable without a run -----------------------------------------------------------

def embeddings_of(column) -> np.ndarray:
    """An embedding column as float32 unit rows (zeros where a row has none: never compared)."""
    return embedding_rows(column)[0]


def uid_order_keys(uids: list[str], seed: int) -> np.ndarray:
    """A deterministic pseudo-random uint64 per uid (the sample and `random` keep order)."""
    high = uid_to_u64(uids)
    low = uid_to_u64([u[16:32] for u in uids])   # every bit of the uid counts
    salt = splitmix64(np.uint64(seed & 0xFFFFFFFFFFFFFFFF))
    return splitmix64(splitmix64(high ^ salt) ^ low)


def auto_clusters(rows: int, sample: int) -> int:
    return max(1, min(math.ceil(math.sqrt(rows / 10)), sample // MIN_POINTS_PER_CENTROID))


def train_centroids(x: np.ndarray, k: int, seed: int, niter: int = 20) -> np.ndarray:
    """Spherical k-means centroids (k x d float32, unit norm) of the rows of `x`."""
    import faiss

    k = max(1, min(k, len(x)))
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)   # one thread: the same centroids on every machine
    try:
        kmeans = faiss.Kmeans(x.shape[1], k, niter=niter, seed=int(seed) & 0x7FFFFFFF,
                              spherical=True, verbose=False, min_points_per_centroid=1)
        kmeans.train(np.ascontiguousarray(x, dtype=np.float32))
    finally:
        faiss.omp_set_num_threads(threads)
    return np.asarray(kmeans.centroids, dtype=np.float32).reshape(k, -1)


def nearest_centroid(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of each row's most similar centroid (ties: the smaller index) and the similarity."""
    sims = x.astype(np.float64) @ centroids.astype(np.float64).T
    best = np.argmax(sims, axis=1)
    return best.astype(np.int32), sims[np.arange(len(x)), best]


def keep_order(centroid_sim: np.ndarray, uids: list[str], pos: np.ndarray, policy: str,
               seed: int) -> np.ndarray:
    """Row indices in the order rows are offered for keeping (ties by uid, then `_pos`)."""
    uid = np.array(uids, dtype="U")
    if policy == "hard":
        first = centroid_sim                    # farthest from the centroid first
    elif policy == "easy":
        first = -centroid_sim                   # nearest first
    elif policy == "random":
        first = uid_order_keys(uids, seed)
    else:
        raise UserError(f"semantic_dedup.keep must be hard, easy or random, got {policy!r}")
    if len(uids) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.lexsort((np.asarray(pos), uid, first)).astype(np.int64)


def greedy_duplicates(x: np.ndarray, threshold: float, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """Rows of `x` in keep order: the index of an earlier kept row within `threshold` cosine
    similarity (the most similar of the earlier blocks, or of its own), -1 where there is
    none (the row is kept), and that similarity."""
    n = len(x)
    of = np.full(n, -1, dtype=np.int64)
    best = np.full(n, -np.inf, dtype=np.float32)
    kept: list[tuple[np.ndarray, np.ndarray]] = []   # (indices, vectors) of kept rows, per block
    for start in range(0, n, block):
        chunk = x[start:start + block]
        near, sim = np.full(len(chunk), -1, dtype=np.int64), np.full(len(chunk), -np.inf, np.float32)
        for indices, held in kept:
            sims = chunk @ held.T
            j = sims.argmax(axis=1)
            top = sims[np.arange(len(chunk)), j]
            better = top > sim
            near[better], sim[better] = indices[j[better]], top[better]
        near[sim < threshold] = -1
        inner = chunk @ chunk.T
        chosen: list[int] = []
        for i in range(len(chunk)):
            if near[i] < 0 and chosen:
                j = int(np.argmax(inner[i, chosen]))
                if inner[i, chosen[j]] >= threshold:
                    near[i], sim[i] = start + chosen[j], inner[i, chosen[j]]
            if near[i] < 0:
                chosen.append(i)
        of[start:start + len(chunk)], best[start:start + len(chunk)] = near, sim
        if chosen:
            kept.append((start + np.array(chosen, dtype=np.int64), chunk[chosen]))
    return of, best


def cluster_duplicates(x: np.ndarray, cluster: np.ndarray, centroid_sim: np.ndarray, uids: list[str],
                       pos: np.ndarray, settings: SemanticDedupSettings, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the row (of its cluster, kept) it is a semantic duplicate of, or -1; and
    the similarity to it."""
    of = np.full(len(x), -1, dtype=np.int64)
    sim = np.zeros(len(x), dtype=np.float32)
    valid = np.linalg.norm(x, axis=1) > 0      # a row without an embedding is never compared
    threshold = 1.0 - float(settings.eps)
    rows = np.flatnonzero(valid)
    rows = rows[np.argsort(cluster[rows], kind="stable")]
    starts = np.flatnonzero(np.diff(cluster[rows])) + 1
    for members in np.split(rows, starts) if len(rows) else []:
        order = members[keep_order(centroid_sim[members], [uids[i] for i in members],
                                   pos[members], settings.keep, seed)]
        near, best = greedy_duplicates(x[order], threshold)
        dup = near >= 0
        of[order[dup]], sim[order[dup]] = order[near[dup]], best[dup]
    return of, sim


def example_pairs(uids: list[str], of: np.ndarray, sim: np.ndarray, count: int) -> dict[str, np.ndarray]:
    """The `count` duplicates with the smallest uids (a stable, arbitrary choice), each with
    the uid of the kept row it duplicates and the similarity: what the report shows."""
    dup = np.flatnonzero(of >= 0)
    dup = dup[np.argsort(np.array([uids[i] for i in dup], dtype="U"), kind="stable")][:count]
    return {"removed": np.array([uids[i] for i in dup], dtype="U"),
            "kept": np.array([uids[of[i]] for i in dup], dtype="U"),
            "similarity": sim[dup].astype(np.float32)}


# --- phases --------------------------------------------------------------------------------

@dataclass
class ReadSample:
    """Reader of `sample`: uid and image embedding of the (at most `rows`) rows of all parts
    with the smallest hash of (seed, uid), in that order (one part at a time in memory)."""
    refs: list
    rows: int
    seed: int
    column: str = IMAGE_EMBEDDING

    def __call__(self) -> pa.Table:
        held = None
        for ref in parts.as_refs(self.refs):
            table = parts.read_ref(ref, ["uid", POS, self.column])
            held = table if held is None else parts.concat([held, table])
            held = self.smallest(held)
        return held

    def smallest(self, table: pa.Table) -> pa.Table:
        uids = table["uid"].to_pylist()
        if not uids:
            return table
        keys = uid_order_keys(uids, self.seed)
        order = np.lexsort((table[POS].to_numpy(), np.array(uids, dtype="U"), keys))
        return table.take(pa.array(order[:self.rows].astype(np.int64)))


SAMPLE_MARGIN = 1.2   # `pick` keeps this many times `sample_rows` rows, in expectation


def sample_cut(rows: int, sample_rows: int) -> int:
    """The hash below which `pick` keeps a row: a share of the 64-bit range that holds
    SAMPLE_MARGIN x `sample_rows` of `rows` rows in expectation (every row when that is all)."""
    share = SAMPLE_MARGIN * sample_rows / max(rows, 1)
    return (1 << 64) - 1 if share >= 1 else int(share * (1 << 64))


@dataclass
class ReadPicked:
    """Reader of `pick` (one task per group of parts, in parallel): uid and embedding of the
    rows whose hash of (seed, uid) is at most `cut`, a set that does not depend on how rows
    are split in parts (one part at a time in memory)."""
    refs: list
    cut: int
    seed: int
    column: str = IMAGE_EMBEDDING

    def __call__(self) -> pa.Table:
        return parts.concat([self.pick(parts.read_ref(ref, ["uid", POS, self.column]))
                             for ref in parts.as_refs(self.refs)])

    def pick(self, table: pa.Table) -> pa.Table:
        keys = uid_order_keys(table["uid"].to_pylist(), self.seed)
        return table.filter(pa.array(keys <= np.uint64(self.cut)))


def keep_all(table: pa.Table) -> pa.Table:
    return table


@dataclass
class TrainKMeans:
    """Op of `sample`: the centroids as extras; the data kept is the sampled uids."""
    clusters: int
    seed: int
    niter: int
    column: str = IMAGE_EMBEDDING

    def __call__(self, table: pa.Table):
        x = embeddings_of(table[self.column])
        x = x[np.linalg.norm(x, axis=1) > 0]
        if len(x) == 0:
            x = np.zeros((1, table.schema.field(self.column).type.list_size), np.float32)
        centroids = train_centroids(x, self.clusters, self.seed, self.niter)
        return table.select(["uid"]), {"centroids": centroids}


@dataclass
class AssignClusters:
    """Op of `scatter`: nearest centroid (read from the `sample` phase), rows sorted by it."""
    sample_dir: str
    column: str = IMAGE_EMBEDDING

    def __call__(self, table: pa.Table) -> pa.Table:
        centroids = built_once(("semantic_dedup.centroids", self.sample_dir),
                               lambda: load_extras(self.sample_dir, 0)["centroids"])
        cluster, sim = nearest_centroid(embeddings_of(table[self.column]), centroids)
        table = table.append_column(CLUSTER, pa.array(cluster)).append_column(CENTROID_SIM, pa.array(sim))
        return table.sort_by([(CLUSTER, "ascending"), (POS, "ascending")])


def earlier_matches(x: np.ndarray, cluster: np.ndarray, old: np.ndarray, old_cluster: np.ndarray,
                    threshold: float, block: int = BLOCK) -> np.ndarray:
    """Per row of `x`: within `threshold` cosine similarity of an earlier run's row of the
    same cluster?"""
    found = np.zeros(len(x), dtype=bool)
    for c in np.intersect1d(cluster, old_cluster):
        rows, held = np.flatnonzero(cluster == c), old[old_cluster == c]
        for start in range(0, len(rows), block):
            chunk = rows[start:start + block]
            found[chunk] = (x[chunk] @ held.T >= threshold).any(axis=1)
    return found & (np.linalg.norm(x, axis=1) > 0)


@dataclass
class ReadClusters:
    """Reader of `reduce`: a range of clusters' rows; with `earlier` (the earlier runs'
    embeddings scattered into the same clusters), `_in_earlier` flags the rows within `eps`
    of one of them."""
    refs: list
    earlier: list
    threshold: float
    column: str = IMAGE_EMBEDDING

    def __call__(self) -> pa.Table:
        table = ReadParts(self.refs)()
        if not self.earlier:
            return table
        old = parts.concat([parts.read_ref(ref, [CLUSTER, self.column]) for ref in parts.as_refs(self.earlier)])
        found = earlier_matches(embeddings_of(table[self.column]), table[CLUSTER].to_numpy(),
                                embeddings_of(old[self.column]), old[CLUSTER].to_numpy(), self.threshold)
        return table.append_column(IN_EARLIER, pa.array(found))


@dataclass
class ReadEarlierEmbeddings:
    """Reader of `earlier`: the image embeddings of some earlier runs' index files (named
    `column`, the one this run reads)."""
    refs: list
    column: str = IMAGE_EMBEDDING

    def __call__(self) -> pa.Table:
        tables = [parts.read_ref(ref, ["uid", run_index.EMBEDDING]) for ref in parts.as_refs(self.refs)]
        table = parts.concat(tables).rename_columns(["uid", self.column])
        table = table.filter(pc.is_valid(table[self.column]))
        return table.append_column(POS, pa.array(np.full(table.num_rows, -1, np.int64)))


@dataclass
class DropSemanticDuplicates:
    """Op of `reduce`: `semantic_duplicate` per cluster; the image embedding is copied to
    `_index_embedding`, for the run's index (the run hides the public embedding columns
    after their last reader unless an output keeps them)."""
    settings: SemanticDedupSettings
    seed: int

    def __call__(self, table: pa.Table):
        uids = table["uid"].to_pylist()
        column = self.settings.embedding
        x = embeddings_of(table[column])
        earlier = (table[IN_EARLIER].to_numpy(zero_copy_only=False) if IN_EARLIER in table.column_names
                   else np.zeros(table.num_rows, dtype=bool))
        x[earlier] = 0   # rows of an earlier run go as such, and are never compared here
        of, sim = cluster_duplicates(x, table[CLUSTER].to_numpy(), table[CENTROID_SIM].to_numpy(), uids,
                                     table[POS].to_numpy(), self.settings, self.seed)
        reasons = np.where(earlier, IN_EARLIER_RUN, np.where(of >= 0, SEMANTIC_DUPLICATE, None))
        table = table.drop_columns([c for c in (CENTROID_SIM, IN_EARLIER) if c in table.column_names])
        table = table.append_column(INDEX_EMBEDDING, table[column])
        examples = example_pairs(uids, of, sim, EXAMPLES)
        return (table.append_column(REASON, pa.array(reasons.tolist(), pa.string())),
                examples if len(examples["removed"]) else {})


# --- stage and step ------------------------------------------------------------------------

class SemanticDedupStage(Stage):
    name = "semantic_dedup"
    label = "semantic dedup"
    inputs = ("uid", POS, IMAGE_EMBEDDING)
    outputs = ()
    inputs_from = "clip_score"

    @classmethod
    def input_columns(cls, settings) -> tuple:
        """uid, `_pos` and the embedding column it is set to read (so clip_score adds its
        embeddings only when that is `image_embedding`)."""
        return ("uid", POS, settings.embedding)


class SemanticDedupStep(Step):
    def __init__(self, settings: SemanticDedupSettings, exclude: list[str] = ()):
        super().__init__(SemanticDedupStage, settings)
        self.exclude = list(exclude)
        if not 0 <= float(settings.eps) < 1:
            raise UserError(f"semantic_dedup.eps must be in [0, 1), got {settings.eps}")
        if settings.keep not in ("hard", "easy", "random"):
            raise UserError(f"semantic_dedup.keep must be hard, easy or random, got {settings.keep!r}")
        if settings.clusters < 0 or settings.sample_rows < 1:
            raise UserError("semantic_dedup.clusters must be >= 0 and sample_rows >= 1")
        check_embedding_name("semantic_dedup.embedding", settings.embedding, (IMAGE_EMBEDDING,))

    def check_inputs(self, fields: dict) -> None:
        """Before any work: a pool column is one the input declares (`input.embeddings`), and
        the excluded runs' index embeddings are as wide as the column read."""
        column = self.settings.embedding
        if column not in fields and is_pool_column(column):
            raise UserError(f"semantic_dedup: the rows have no {column!r} column ({missing_hint(column)})")
        width = embedding_width(fields, column)
        if width is None or not self.exclude:
            return
        for path in run_index.with_embeddings(run_index.earlier_files(self.exclude)):
            type_ = parts.read_schema(path).field(run_index.EMBEDDING).type
            if pa.types.is_fixed_size_list(type_) and type_.list_size != width:
                raise UserError(f"semantic_dedup: exclude: {path}: {type_.list_size}-dim image embeddings, this "
                                f"run's {column!r} is {width}-dim (compare runs of the same CLIP model)")

    def clusters_for(self, rows: int) -> int:
        sample = min(rows, self.settings.sample_rows)
        if self.settings.clusters:
            return max(1, min(self.settings.clusters, sample))
        return auto_clusters(rows, sample)

    def run(self, ctx: StepContext, inputs: list[PartRef]) -> list[PartRef]:
        counts = rows_of(inputs)
        rows = sum(counts)
        k = self.clusters_for(rows)
        groups = group_by_rows(inputs, ctx.task_rows, counts)
        cut = sample_cut(rows, self.settings.sample_rows)
        column = self.settings.embedding
        ctx.run_phase("pick", [ReadPicked(g, cut, ctx.seed, column) for g in groups], keep_all, counted=False)
        picked = ctx.data_parts("pick", len(groups))
        ctx.run_phase("sample", [ReadSample(picked, self.settings.sample_rows, ctx.seed, column)],
                      TrainKMeans(k, ctx.seed, self.settings.niter, column), counted=False)
        ctx.record["semantic_dedup"] = {"clusters": k, "sample_rows": min(rows, self.settings.sample_rows),
                                        "centroids": "sample/done/part-00000.npz"}
        stats = ctx.run_phase("scatter", [ReadParts(g) for g in groups],
                              AssignClusters(ctx.phase_dir("sample"), column), row_group_key=CLUSTER)
        scattered = ctx.data_parts("scatter", len(groups))
        ranges = bucket_ranges(k, -(-rows // ctx.task_rows))
        op = DropSemanticDuplicates(self.settings, ctx.seed)
        earlier = self.scatter_earlier(ctx)
        threshold = 1.0 - float(self.settings.eps)
        reduced = ctx.run_phase("reduce", [ReadClusters(bucket_refs(scattered, stats, r), earlier(r), threshold, column)
                                           for r in ranges], op, row_group_key=CLUSTER)
        ctx.record["semantic_dedup"]["examples"] = examples(ctx.extras("reduce"), EXAMPLES)
        return ctx.keyed_parts("reduce", reduced, [list(r) for r in ranges])

    def scatter_earlier(self, ctx: StepContext):
        """The excluded runs' embeddings in this run's clusters: range -> their row groups."""
        files = parts.as_refs(run_index.with_embeddings(run_index.earlier_files(self.exclude))) if self.exclude else []
        if not files:
            return lambda clusters: []
        groups = group_by_rows(files, ctx.task_rows)
        column = self.settings.embedding
        stats = ctx.run_phase("earlier", [ReadEarlierEmbeddings(g, column) for g in groups],
                              AssignClusters(ctx.phase_dir("sample"), column), row_group_key=CLUSTER, counted=False)
        scattered = ctx.data_parts("earlier", len(groups))
        return lambda clusters: bucket_refs(scattered, stats, clusters)


def examples(extras, count: int) -> list[dict]:
    """The `count` example pairs with the smallest removed uids over every reduce task."""
    found = [{"removed": str(r), "kept": str(k), "similarity": round(float(s), 4)}
             for e in extras for r, k, s in zip(e["removed"], e["kept"], e["similarity"])]
    return sorted(found, key=lambda pair: pair["removed"])[:count]


def build_step(settings: SemanticDedupSettings, run) -> SemanticDedupStep:
    return SemanticDedupStep(settings, exclude=run.exclude if run is not None else [])


STAGE = SemanticDedupStage
