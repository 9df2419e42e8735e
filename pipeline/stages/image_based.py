"""image_based: DataComp's image-based baseline, on a pool's precomputed image embeddings.

DataComp (baselines/apply_filter.py, `load_uids_with_image_filter`) clusters the pool's
ViT-L/14 image embeddings with k-means (`centroids`, k x d), assigns each ImageNet-1k
training image's L/14 embedding (`targets`, n x d) to its nearest centroid, and keeps the
pool rows whose nearest centroid is one of those (the target set). "Nearest" is the argmax
of the dot product, in float32 (`torch.einsum("ik,jk->ij")`, the first index on ties),
with no normalisation. Here the same, on CPU in batches:

    targets  one task: the unique nearest-centroid ids of the targets (the target set)
    map      per part: each row's nearest centroid -> `image_cluster` (int32); rows whose
             centroid is outside the target set go as `off_target_cluster`, rows without an
             embedding (a crawled pair in a pool run) as `no_embedding`

It reads the pool column `pool_<embedding>` (`input.embeddings` must list `embedding`, e.g.
`l14_img`), so it runs before download: the images of rows it drops are never fetched.
DataComp's image-based baseline also keeps only English captions of more than one word and
five characters (its `caption_filter`): the `caption_filter` and `language` sections.

Files: `.npy` (read as a memory map, a header only when checked) or `.pt` (`torch.save` of a
tensor, of a numpy array as DataComp's centroids are, or of a dict with `image_features` as
DataComp's ImageNet embeddings are), local or in a bucket. `targets` may list several files
(DataComp's five `in1k_clip_vit_l14_<i>`), concatenated. The driver checks every file's shape
and dtype before the run (one line naming the file); each worker reads the centroids once.
"""
from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass, field
from typing import Annotated, Any

import numpy as np
import pyarrow as pa

from pipeline.core import parts, storage
from pipeline.core.constraints import AtLeast, NonEmpty
from pipeline.core.parts import PartRef
from pipeline.core.stage import Stage, set_column, with_reason
from pipeline.core.steps import Step, StepContext, part_readers
from pipeline.core.tasks import built_once
from pipeline.errors import UserError
from pipeline.stages.pool_embeddings import column_name

SECTION = "image_based"


@dataclass
class ImageBasedSettings:
    centroids: Annotated[str, NonEmpty()] = ""             # .npy or .pt, (k, d): k-means centroids of the pool
    targets: Annotated[list[str], NonEmpty()] = field(default_factory=list)   # .npy/.pt files, (n, d) each
    embedding: Annotated[str, NonEmpty()] = "l14_img"       # the pool array (input.embeddings) assigned
    batch_size: Annotated[int, AtLeast(1)] = 4096           # rows per matmul (fewer when k is large)
    enabled: bool = True


SETTINGS = ImageBasedSettings

OFF_TARGET = "off_target_cluster"
NO_EMBEDDING = "no_embedding"
CLUSTER = "image_cluster"
SIMILARITY_BUDGET = 64 << 20   # float32 similarities held at once (rows x k)


# --- the definition --------------------------------------------------------------------------

def nearest_centroids(x, centroids: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """Index of each row's nearest centroid by dot product in float32 (DataComp's
    `get_centroid_ids_gpu`: einsum, argmax, the first index on ties), in batches; `x` may be
    a memory map (each batch is read and converted on its own)."""
    import torch

    weights = torch.from_numpy(_float32(centroids))
    rows = max(1, min(batch_size, SIMILARITY_BUDGET // (4 * max(1, len(centroids)))))
    out = np.empty(len(x), dtype=np.int64)
    with torch.inference_mode():
        for start in range(0, len(x), rows):
            batch = torch.from_numpy(_float32(x[start:start + rows]))
            out[start:start + len(batch)] = torch.argmax(torch.einsum("ik,jk->ij", batch, weights), dim=1).numpy()
    return out


def _float32(x) -> np.ndarray:
    """Rows as a writable contiguous float32 array (torch will not wrap a read-only map)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    return x if x.flags.writeable else x.copy()


def target_clusters(centroids: np.ndarray, targets: list, batch_size: int = 4096) -> np.ndarray:
    """The target set: the sorted unique nearest-centroid ids of every target row."""
    ids = [np.unique(nearest_centroids(t, centroids, batch_size)) for t in targets]
    return np.unique(np.concatenate(ids)) if ids else np.zeros(0, np.int64)


# --- files -----------------------------------------------------------------------------------

def file_error(key: str, path: str, problem: str) -> UserError:
    return UserError(f"image_based.{key}: {path}: {problem}")


def load_matrix(key: str, path: str):
    """A 2-d float matrix from a .npy (memory-mapped) or .pt file."""
    try:
        local = storage.local_copy(path)
        if path.lower().endswith(".npy"):
            value = np.load(local, mmap_mode="r")
        else:
            with open(local, "rb") as stream:
                value = _torch_value(key, path, _torch_load(stream.read()))
    except FileNotFoundError:
        raise file_error(key, path, "no such file") from None
    except IsADirectoryError:
        raise file_error(key, path, "a folder, not a file") from None
    except UserError:
        raise
    except Exception as exc:   # an unreadable file is one clear line
        detail = " ".join(str(exc).split())[:200]
        raise file_error(key, path, f"not a .npy array or a torch.save'd tensor ({detail})") from None
    if value.ndim != 2 or value.dtype.kind != "f" or 0 in value.shape:
        raise file_error(key, path, f"{value.dtype} of shape {list(value.shape)}, expected 2-d floats "
                                    f"[{'k' if key == 'centroids' else 'n'}, dim]")
    return value


def _torch_load(data: bytes) -> Any:
    import torch

    allowed = [np._core.multiarray._reconstruct, np.ndarray, np.dtype,
               *{type(np.dtype(t)) for t in (np.float16, np.float32, np.float64)}]
    with torch.serialization.safe_globals(allowed):
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _torch_value(key: str, path: str, value: Any) -> np.ndarray:
    import torch

    if isinstance(value, dict):   # DataComp's ImageNet embeddings: {"image_features": tensor, ...}
        tensors = {k: v for k, v in value.items() if torch.is_tensor(v) or isinstance(v, np.ndarray)}
        if "image_features" in tensors:
            value = tensors["image_features"]
        elif len(tensors) == 1:
            value = next(iter(tensors.values()))
        else:
            raise file_error(key, path, f"a dict without image_features (keys: {', '.join(map(str, value))})")
    if torch.is_tensor(value):
        if not value.is_floating_point():
            raise file_error(key, path, f"a {value.dtype} tensor of shape {list(value.shape)}, expected floats")
        return value.detach().float().numpy()
    if isinstance(value, np.ndarray):
        return value
    raise file_error(key, path, f"holds a {type(value).__name__}, expected a tensor or an array")


_SHAPES: dict = {}


def matrix_shape(key: str, path: str) -> tuple[int, int]:
    """(rows, dim) of a file, checked (a .npy by its header; once per file and version)."""
    stamp = (path, tuple(sorted(storage.stat(path).items())) if storage.exists(path) else None)
    if stamp not in _SHAPES:
        if path.lower().endswith(".npy") and stamp[1] is not None:
            _SHAPES[stamp] = _npy_shape(key, path)
        else:
            _SHAPES[stamp] = tuple(load_matrix(key, path).shape)
    return _SHAPES[stamp]


def _npy_shape(key: str, path: str) -> tuple[int, int]:
    try:
        with storage.open_input(path) as stream:
            version = np.lib.format.read_magic(stream)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(stream)
    except ValueError as exc:
        raise file_error(key, path, f"not a .npy array ({exc})") from None
    if len(shape) != 2 or dtype.kind != "f" or 0 in shape:
        raise file_error(key, path, f"{dtype} of shape {list(shape)}, expected 2-d floats "
                                    f"[{'k' if key == 'centroids' else 'n'}, dim]")
    return int(shape[0]), int(shape[1])


# --- phases ----------------------------------------------------------------------------------

@dataclass
class ReadTargets:
    """Reader of `targets` (one task): the target set, one row per centroid id."""
    settings: ImageBasedSettings

    def __call__(self) -> pa.Table:
        s = self.settings
        centroids = load_matrix("centroids", s.centroids)
        ids = target_clusters(centroids, [load_matrix("targets", p) for p in s.targets], s.batch_size)
        return pa.table({CLUSTER: pa.array(ids, pa.int32())})


def keep_all(table: pa.Table) -> pa.Table:
    return table


@dataclass
class KeepTargetClusters:
    """Op of `map`: `image_cluster` of each row, and the drops (centroids read once per worker)."""
    settings: ImageBasedSettings
    targets: tuple   # the target set's centroid ids

    def __call__(self, table: pa.Table) -> pa.Table:
        s = self.settings
        centroids = built_once(("image_based.centroids", s.centroids),
                               lambda: _float32(load_matrix("centroids", s.centroids)))
        column = table[column_name(s.embedding)]
        column = column.combine_chunks() if column.num_chunks else pa.array([], column.type)
        valid = column.is_valid().to_numpy(zero_copy_only=False)
        cluster = np.full(len(column), -1, dtype=np.int64)
        if valid.any():
            dim = centroids.shape[1]
            x = column.filter(pa.array(valid)).flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
            cluster[valid] = nearest_centroids(x, centroids, s.batch_size)
        on_target = np.isin(cluster, np.asarray(self.targets, dtype=np.int64))
        reasons = np.where(~valid, NO_EMBEDDING, np.where(on_target, None, OFF_TARGET))
        table = set_column(table, CLUSTER, pa.array(cluster.astype(np.int32), pa.int32(), mask=~valid))
        return with_reason(table, pa.array(reasons.tolist(), pa.string()))

    def declared_columns(self) -> tuple:
        return ImageBasedStage.output_columns(self.settings)


# --- stage and step --------------------------------------------------------------------------

class ImageBasedStage(Stage):
    name = "image_based"
    label = "image-based (DataComp)"
    outputs = ((CLUSTER, pa.int32()),)
    inputs_from = "input.embeddings"

    @classmethod
    def input_columns(cls, settings) -> tuple:
        return (column_name(settings.embedding),)


class ImageBasedStep(Step):
    def __init__(self, settings: ImageBasedSettings):
        if not settings.centroids:
            raise UserError("image_based.centroids: no file given (the pool's k-means centroids, .npy or .pt)")
        if not settings.targets:
            raise UserError("image_based.targets: no file given (target embeddings, e.g. ImageNet's, .npy or .pt)")
        super().__init__(ImageBasedStage, settings)

    def check_inputs(self, fields: dict) -> None:
        """Before any work: the pool column is there, and the files' shapes fit it."""
        s = self.settings
        column = column_name(s.embedding)
        if column not in fields:
            raise UserError(f"image_based: the rows have no {column!r} column (list {s.embedding} in "
                            f"input.embeddings: the pool's .npz arrays)")
        _, dim = matrix_shape("centroids", s.centroids)
        type_, _ = fields[column]
        if pa.types.is_fixed_size_list(type_) and type_.list_size != dim:
            raise file_error("centroids", s.centroids, f"{dim}-dim centroids, the pool's {s.embedding} "
                                                       f"is {type_.list_size}-dim")
        for path in s.targets:
            _, width = matrix_shape("targets", path)
            if width != dim:
                raise file_error("targets", path, f"{width}-dim rows, the centroids ({s.centroids}) {dim}-dim")

    def run(self, ctx: StepContext, inputs: list[PartRef]) -> list[PartRef]:
        ctx.run_phase("targets", [ReadTargets(self.settings)], keep_all, counted=False)
        ids = parts.read_ref(PartRef(ctx.data_path("targets", 0)))[CLUSTER].to_numpy()
        ctx.record["image_based"] = {"centroids": matrix_shape("centroids", self.settings.centroids)[0],
                                     "target_clusters": int(len(ids))}
        readers = part_readers(inputs)
        ctx.run_phase("map", readers, KeepTargetClusters(self.settings, tuple(int(i) for i in ids)))
        return ctx.data_parts("map", len(readers))


def build_step(settings: ImageBasedSettings, run) -> ImageBasedStep:
    """Local file paths made absolute (workers may start elsewhere)."""
    return ImageBasedStep(dataclasses.replace(
        settings, centroids=storage.absolute(settings.centroids) if settings.centroids else "",
        targets=[storage.absolute(p) for p in settings.targets]))


STAGE = ImageBasedStage
