"""heads: small models on clip_score's embeddings (NSFW, watermark, aesthetic) that score rows
and drop those past a threshold, each head with its own reason.

A head is a PyTorch state dict of Linear layers, read from a local path or an object store:
a single `torch.nn.Linear` (keys `weight` [1, dim], `bias` [1]; LAION's aesthetic predictor
`sa_0_4_vit_b_32_linear.pth` as released), or a chain (`layers.0.weight`, `layers.0.bias`,
`layers.2.weight`, ...: LAION's improved-aesthetic-predictor MLP), applied in key order
(numbers compared as numbers). `hidden_activation: relu` puts a ReLU between the layers (LAION's
NSFW detector; the aesthetic MLP has none: only dropout, inactive at inference), `activation:
sigmoid` after the last one. Each head reads the L2-normalised `image_embedding` (or, with
`input: text`, `text_embedding`; declared, so clip_score adds them for it), adds
`<name>_score` (float32) and, with `drop_above` / `drop_below`, drops
rows past it as `reason` (default: nsfw -> `nsfw`, watermark -> `watermark`, aesthetic ->
`low_aesthetic`, else the name); a row past several heads goes with the first one's reason.
A row without an embedding (null or zero) gets a null score and is never dropped here.
With `embedding: pool_b32_img` (any `pool_<array>` of `input.embeddings`) a head reads a
DataComp pool's precomputed embeddings instead (float16, converted to float32 and
re-normalised): no clip_score section, no download (LAION's heads take 512-d, i.e. b32).

The driver reads every head when the run starts, before download, and again before the
step's tasks (a missing or corrupt file, a bad setting or an input size that does not match
the embeddings is one `UserError` line: `heads: <name>: <file>: <problem>`); the tasks get
each file's sha256 and load it once per worker process (`built_once`), checking that it is
the same file.

`model: nudenet` is a head of another kind: NudeNet's detector (the ONNX model inside the
`nudenet` wheel, or `path` to another NudeNet export; `pipeline.nudenet`), which reads the
stored IMAGES, not embeddings (declared: the step gets the image bytes only when such a head
is configured; no clip_score needed). It adds `<name>_score` (float32: the highest confidence
of a box of one of `classes`, by default NudeNet's exposed-nudity classes) and `<name>_classes`
(list<string>: the classes NudeNet detects at `min_confidence`, sorted), and drops like a
linear head. A row whose image does not decode gets nulls and is never dropped here. The
ONNX session is made once per worker process (one intra-op thread) and run `batch_size`
images at a time.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import math
import re
from dataclasses import dataclass, field
from functools import partial
from typing import Annotated, Literal, Optional

import numpy as np
import pyarrow as pa

from pipeline.clip.embeddings import (
    IMAGE_EMBEDDING,
    TEXT_EMBEDDING,
    check_embedding_name,
    embedding_rows,
    embedding_width,
    is_pool_column,
    missing_hint,
)
from pipeline.core import parts, storage
from pipeline.core.constraints import AtLeast, Between, Finite, Invalid, NonEmpty
from pipeline.core.images import IMAGE
from pipeline.core.parts import PartRef
from pipeline.core.stage import Stage, set_column, with_reason
from pipeline.core.steps import Step, StepContext, part_readers
from pipeline.core.tasks import built_once
from pipeline.errors import UserError

SECTION = "heads"


@dataclass
class HeadSettings:
    name: str = ""                                   # the score column is `<name>_score`
    path: str = ""                                   # a state dict of Linear layers (local or URL); nudenet:
                                                     # an ONNX export (default the wheel's 320n.onnx)
    model: Literal["linear", "nudenet"] = "linear"   # nudenet: NudeNet's detector on the images
    drop_above: Optional[Annotated[float, Finite()]] = None   # drop rows scoring above (at most one of
    drop_below: Optional[Annotated[float, Finite()]] = None   # the two; neither: score only)
    activation: Literal["none", "sigmoid"] = "none"  # after the last layer
    hidden_activation: Literal["none", "relu"] = "none"   # between layers
    input: Literal["image", "text"] = "image"        # which clip_score embedding it reads
    embedding: str = ""                              # or this column (a pool's: pool_b32_img, ...)
    reason: Optional[str] = None                     # default: nsfw, watermark, low_aesthetic, name
    classes: list[str] = field(default_factory=list)  # nudenet: the classes that make the score (default EXPOSED)
    min_confidence: Annotated[float, Between(0, 1)] = 0.25   # nudenet: a box's confidence to list its class
    batch_size: Annotated[int, AtLeast(1)] = 16      # nudenet: images through the network at once

    def validate(self) -> None:
        if self.drop_above is not None and self.drop_below is not None:
            raise Invalid("drop_below", "must not be set with drop_above (set one of the two)", self.drop_below)


@dataclass
class HeadsSettings:
    heads: Annotated[list[HeadSettings], NonEmpty()] = field(default_factory=list)
    enabled: bool = True


SETTINGS = HeadsSettings

DEFAULT_REASONS = {"nsfw": "nsfw", "watermark": "watermark", "aesthetic": "low_aesthetic"}
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
CHUNK = 16384   # rows through a head at once (bounds the hidden layers' memory)


def score_column(head: HeadSettings) -> str:
    return f"{head.name}_score"


def classes_column(head: HeadSettings) -> str:
    return f"{head.name}_classes"


def is_nudenet(head: HeadSettings) -> bool:
    return head.model == "nudenet"


def reason_of(head: HeadSettings) -> str:
    return head.reason or DEFAULT_REASONS.get(head.name, head.name)


def head_error(head: HeadSettings, problem: str, label: str = "") -> UserError:
    file = head.path or ("nudenet's 320n.onnx" if is_nudenet(head) else "(no path)")
    return UserError(f"heads: {head.name or label or '(no name)'}: {file}: {problem}")


def check_settings(settings: HeadsSettings) -> None:
    """Every head named once, with a file, at most one threshold, known options."""
    if not settings.heads:
        raise UserError("heads: no heads listed (heads: [{name, path, drop_above or drop_below}, ...])")
    seen = set()
    for index, head in enumerate(settings.heads):
        fail = partial(head_error, head, label=f"heads[{index}]")
        if not NAME.fullmatch(head.name or ""):
            raise fail(f"name must be letters, digits and _ (it names the column <name>_score), got {head.name!r}")
        if head.name in seen:
            raise fail("two heads have this name")
        seen.add(head.name)
        if head.model not in ("linear", "nudenet"):
            raise fail(f"model must be linear or nudenet, got {head.model!r}")
        if is_nudenet(head):
            check_nudenet_settings(head)
        elif not head.path:
            raise fail("no path")
        elif head.classes:
            raise fail("classes is a setting of model: nudenet")
        if head.drop_above is not None and head.drop_below is not None:
            raise fail("set drop_above or drop_below, not both")
        for key in ("drop_above", "drop_below"):
            value = getattr(head, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value)):
                raise fail(f"{key} must be a finite number, got {value!r}")
        for key, allowed in (("activation", ("none", "sigmoid")), ("hidden_activation", ("none", "relu")),
                             ("input", ("image", "text"))):
            if getattr(head, key) not in allowed:
                raise fail(f"{key} must be one of {', '.join(allowed)}, got {getattr(head, key)!r}")
        if head.embedding:
            try:
                check_embedding_name("embedding", head.embedding, (IMAGE_EMBEDDING, TEXT_EMBEDDING))
            except UserError as exc:
                raise fail(str(exc)) from None
        if reason_of(head) in ("", "kept"):
            raise fail(f"reason {reason_of(head)!r} cannot name a drop")


def check_nudenet_settings(head: HeadSettings) -> None:
    from pipeline.nudenet import LABELS

    unknown = [c for c in head.classes if c not in LABELS]
    if unknown:
        raise head_error(head, f"classes: unknown NudeNet class {unknown[0]!r} (one of {', '.join(LABELS)})")
    if head.embedding or head.input != "image":
        raise head_error(head, "model: nudenet reads the images; embedding and input do not apply")
    if not 0.0 <= head.min_confidence <= 1.0:
        raise head_error(head, f"min_confidence must be between 0 and 1, got {head.min_confidence!r}")
    if head.batch_size < 1:
        raise head_error(head, f"batch_size must be >= 1, got {head.batch_size!r}")


# --- loading ------------------------------------------------------------------------------

@dataclass
class Head:
    """A loaded head: its settings and its Linear layers (float32 weight [out, in], bias)."""
    settings: HeadSettings
    layers: list

    @property
    def dim(self) -> int:
        return int(self.layers[0][0].shape[1])

    def score(self, x: np.ndarray) -> np.ndarray:
        """The head's score of each row of `x` (float32 [n, dim]) as float32 [n]."""
        import torch
        import torch.nn.functional as F

        out = np.empty(len(x), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(x), CHUNK):
                h = torch.from_numpy(np.ascontiguousarray(x[start:start + CHUNK], dtype=np.float32))
                for i, (weight, bias) in enumerate(self.layers):
                    h = F.linear(h, weight, bias)
                    if i < len(self.layers) - 1 and self.settings.hidden_activation == "relu":
                        h = torch.relu(h)
                if self.settings.activation == "sigmoid":
                    h = torch.sigmoid(h)
                out[start:start + len(h)] = h[:, 0].numpy()
        return out


def head_file(head: HeadSettings) -> str:
    """The head's file: its path, or for nudenet without one, the model inside the wheel."""
    if head.path or not is_nudenet(head):
        return head.path
    from pipeline.nudenet import model_path

    try:
        return model_path()
    except ImportError as exc:
        raise head_error(head, str(exc)) from None


def read_head(head: HeadSettings) -> bytes:
    try:
        with storage.open_input(head_file(head)) as stream:
            return stream.read()
    except FileNotFoundError:
        raise head_error(head, "no such file") from None
    except IsADirectoryError:
        raise head_error(head, "a folder, not a file") from None
    except (OSError, UserError) as exc:
        detail = " ".join(str(getattr(exc, "strerror", None) or exc).split())[:200]
        raise head_error(head, f"cannot read ({detail})") from None


def parse_head(head: HeadSettings, data: bytes) -> Head:
    """A head from the bytes of its file (`torch.save` of a state dict); UserError otherwise."""
    import torch

    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:   # any unreadable file is one clear line, never a traceback
        detail = " ".join(str(exc).split()[:24])[:200]
        raise head_error(head, f"not a PyTorch state dict (save model.state_dict(); torch.load: {detail})") from None
    if not isinstance(state, dict) or not state:
        raise head_error(head, f"expected a state dict of Linear layers, got {type(state).__name__}")
    return Head(head, linear_layers(head, state))


def linear_layers(head: HeadSettings, state: dict) -> list:
    """The Linear layers of a state dict in key order, checked to chain into one score."""
    import torch

    groups: dict[str, dict] = {}
    for key, value in state.items():
        prefix, _, kind = str(key).rpartition(".")
        if kind not in ("weight", "bias") or not torch.is_tensor(value):
            raise head_error(head, f"unexpected entry {key!r}: a head is Linear layers (keys ending "
                                   f"in weight and bias, e.g. layers.0.weight)")
        groups.setdefault(prefix, {})[kind] = value
    layers, size = [], None
    for prefix in sorted(groups, key=_natural):
        named = f"{prefix}." if prefix else ""
        weight, bias = groups[prefix].get("weight"), groups[prefix].get("bias")
        if weight is None or weight.dim() != 2 or not weight.is_floating_point():
            raise head_error(head, f"{named}weight must be a 2-d float tensor [out, in]")
        if bias is not None and (tuple(bias.shape) != (weight.shape[0],) or not bias.is_floating_point()):
            raise head_error(head, f"{named}bias must be a float tensor [{weight.shape[0]}], "
                                   f"got {list(bias.shape)}")
        if size is not None and weight.shape[1] != size:
            raise head_error(head, f"{named}weight takes {weight.shape[1]} inputs, the layer before gives {size}")
        size = int(weight.shape[0])
        weight = weight.detach().float().contiguous()
        bias = None if bias is None else bias.detach().float().contiguous()
        if not all(bool(torch.isfinite(t).all()) for t in (weight, bias) if t is not None):
            raise head_error(head, f"{named}weight or bias holds NaN or infinity")
        layers.append((weight, bias))
    if size != 1:
        raise head_error(head, f"the last layer gives {size} outputs; a head gives one score")
    return layers


def _natural(key: str) -> list:
    """`layers.10` after `layers.2`."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in key.split(".")]


def load_head(head: HeadSettings, digest: Optional[str] = None):
    """Read and parse a head (a `Head`, or a `NudeNetHead`); with `digest`, check that the
    file is the one the driver read."""
    data = read_head(head)
    if digest is not None and hashlib.sha256(data).hexdigest() != digest:
        raise head_error(head, "the file changed while the run was using it")
    return parse_nudenet(head, data) if is_nudenet(head) else parse_head(head, data)


# --- nudenet ------------------------------------------------------------------------------

@dataclass
class NudeNetHead:
    """A loaded nudenet head: its settings and NudeNet's ONNX session (`pipeline.nudenet`)."""
    settings: HeadSettings
    sess: object

    def model(self):
        from pipeline.nudenet import EXPOSED, NudeNet

        s = self.settings
        return NudeNet(self.sess, tuple(s.classes) or EXPOSED, s.min_confidence, s.batch_size)

    def apply(self, table: pa.Table) -> tuple[np.ndarray, np.ndarray, dict]:
        """(scores, valid, {classes column: list<string>}) of the table's images."""
        s = self.settings
        if IMAGE not in table.column_names:
            raise head_error(s, f"the rows have no {IMAGE!r} column (add a download section before heads)")
        for column in (score_column(s), classes_column(s)):
            if column in table.column_names:
                raise head_error(s, f"the rows already have a {column!r} column: rename the head")
        scores, classes = self.model().run(table[IMAGE].to_pylist())
        return scores, ~np.isnan(scores), {classes_column(s): pa.array(classes, pa.list_(pa.string()))}


def parse_nudenet(head: HeadSettings, data: bytes) -> NudeNetHead:
    """NudeNet's ONNX session (one intra-op thread) from the model file's bytes; UserError
    when onnxruntime is missing or the file is not a NudeNet export."""
    from pipeline.nudenet import check_session, session

    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise head_error(head, f"model: nudenet needs onnxruntime (pip install onnxruntime): {exc}") from None
    try:
        sess = session(data)
        check_session(sess)
    except Exception as exc:   # any unreadable file is one clear line, never a traceback
        detail = " ".join(str(exc).split()[:24])[:200]
        raise head_error(head, f"not a NudeNet ONNX model ({detail})") from None
    return NudeNetHead(head, sess)


# --- scoring ------------------------------------------------------------------------------

def input_column(head: HeadSettings) -> str:
    """The column it reads: `embedding` where set, else clip_score's by `input`."""
    return head.embedding or (IMAGE_EMBEDDING if head.input == "image" else TEXT_EMBEDDING)


def missing_column(head: HeadSettings) -> UserError:
    column = input_column(head)
    hint = missing_hint(column).replace("before it", "before heads")
    return head_error(head, f"the rows have no {column!r} column ({hint})")


def check_fits(head: Head, schema: pa.Schema) -> None:
    """The head's input size is the embeddings' and its column is new."""
    s = head.settings
    column = input_column(s)
    if column not in schema.names:
        raise missing_column(s)
    type_ = schema.field(column).type
    if not pa.types.is_fixed_size_list(type_):
        raise head_error(s, f"{column!r} is {type_}, not an embedding column (fixed-size lists of floats)")
    if head.dim != type_.list_size:
        raise dim_error(head, f"the pool's {column} is {type_.list_size}-dim" if is_pool_column(column)
                        else f"clip_score's {s.input} embeddings are {type_.list_size}-dim")
    if score_column(s) in schema.names:
        raise head_error(s, f"the rows already have a {score_column(s)!r} column: rename the head")


def dim_error(head: Head, theirs: str) -> UserError:
    return head_error(head.settings, f"takes {head.dim}-dim embeddings, {theirs} (a head trained "
                                     f"for another CLIP model?)")


def embedding_scores(head: Head, table: pa.Table) -> tuple[np.ndarray, np.ndarray, dict]:
    """(scores, valid, no extra columns) of a linear head on its embedding column."""
    check_fits(head, table.schema)
    x, valid = embedding_rows(table[input_column(head.settings)])
    scores = np.full(len(x), np.nan, dtype=np.float32)
    if valid.any():
        scores[valid] = head.score(x[valid])
    return scores, valid, {}


def apply_heads(table: pa.Table, heads: list) -> pa.Table:
    """`<name>_score` per head (null where a row has no embedding, or for nudenet no
    decodable image), nudenet's `<name>_classes`, and the first head's reason for rows
    past a threshold."""
    reasons = np.full(table.num_rows, None, dtype=object)
    undecided = np.ones(table.num_rows, dtype=bool)
    for head in heads:
        s = head.settings
        scores, valid, extra = head.apply(table) if isinstance(head, NudeNetHead) else embedding_scores(head, table)
        table = set_column(table, score_column(s), pa.array(scores, pa.float32(), mask=~valid))
        for name, values in extra.items():
            table = set_column(table, name, values)
        with np.errstate(invalid="ignore"):
            past = (scores > s.drop_above) if s.drop_above is not None else \
                (scores < s.drop_below) if s.drop_below is not None else np.zeros(len(scores), bool)
        dropped = valid & past & undecided
        reasons[dropped] = reason_of(s)
        undecided &= ~dropped
    return with_reason(table, pa.array(reasons.tolist(), pa.string()))


@dataclass
class ScoreHeads:
    """Op: every head (loaded once per worker process, the file the driver read)."""
    settings: HeadsSettings
    digests: tuple

    def __call__(self, table: pa.Table) -> pa.Table:
        heads = [NudeNetHead(s, built_once(("heads.nudenet", s.path, d), partial(_session, s, d))) if is_nudenet(s)
                 else Head(s, built_once(("heads.layers", s.path, d), partial(_layers, s, d)))
                 for s, d in zip(self.settings.heads, self.digests)]
        return apply_heads(table, heads)

    def declared_columns(self) -> tuple:
        return HeadsStage.output_columns(self.settings)


def _layers(head: HeadSettings, digest: str) -> list:
    return load_head(head, digest).layers


def _session(head: HeadSettings, digest: str):
    return load_head(head, digest).sess


# --- stage and step ------------------------------------------------------------------------

class HeadsStage(Stage):
    name = "heads"
    label = "heads (NSFW, watermark, aesthetic)"
    inputs = (IMAGE_EMBEDDING, TEXT_EMBEDDING)
    inputs_from = "clip_score"

    @classmethod
    def input_columns(cls, settings) -> tuple:
        """Each linear head's embedding column; the images (`jpg`) only with a nudenet head."""
        return tuple(dict.fromkeys(IMAGE if is_nudenet(head) else input_column(head) for head in settings.heads))

    @classmethod
    def output_fields(cls, settings) -> tuple:
        """`<name>_score` per head, and a nudenet head's `<name>_classes`."""
        fields = []
        for head in settings.heads:
            fields.append((score_column(head), pa.float32()))
            if is_nudenet(head):
                fields.append((classes_column(head), pa.list_(pa.string())))
        return tuple(fields)


class HeadsStep(Step):
    """Per part: one task per logical part, like a plain stage, after the driver has read
    and checked every head."""

    def __init__(self, settings: HeadsSettings):
        check_settings(settings)
        super().__init__(HeadsStage, settings)

    def check_files(self, fields: Optional[dict] = None) -> None:
        """Before the run does any work: every head file reads as a head, of as many inputs
        as its embedding column has where the run's plan knows that (`fields`: column ->
        (Arrow type, the step that adds it))."""
        for head in self.settings.heads:
            if is_nudenet(head):
                parse_nudenet(head, read_head(head))
                continue
            column = input_column(head)
            if fields is not None and column not in fields and is_pool_column(column):
                raise missing_column(head)
            loaded = parse_head(head, read_head(head))
            dim = embedding_width(fields or {}, column)
            if dim is not None and loaded.dim != dim:
                raise dim_error(loaded, f"the pool's {column} is {dim}-dim" if is_pool_column(column)
                                else f"{fields[column][1]}'s model gives {dim}-dim embeddings")

    def check_inputs(self, fields: dict) -> None:
        self.check_files(fields)

    def run(self, ctx: StepContext, inputs: list[PartRef]) -> list[PartRef]:
        schema = parts.read_schema(inputs[0])
        digests = []
        for head in self.settings.heads:
            data = read_head(head)
            if is_nudenet(head):
                parse_nudenet(head, data)
            else:
                check_fits(parse_head(head, data), schema)
            digests.append(hashlib.sha256(data).hexdigest())
        readers = part_readers(inputs)
        op = ScoreHeads(self.settings, tuple(digests))
        images = any(is_nudenet(head) for head in self.settings.heads)
        ctx.run_phase("map", readers, op, HeadsStage(self.settings).resources, images=images)
        return ctx.data_parts("map", len(readers))


def build_step(settings: HeadsSettings, run) -> HeadsStep:
    """Local head paths made absolute (workers may start elsewhere); every file is checked
    when the run is planned (`check_inputs`), before download."""
    heads = [dataclasses.replace(h, path=storage.absolute(h.path) if h.path else h.path) for h in settings.heads]
    return HeadsStep(dataclasses.replace(settings, heads=heads))


# --- converting heads released in other formats ----------------------------------------------

def dense_layers_state_dict(dense: list, mean=None, variance=None, epsilon: float = 1e-7) -> dict:
    """A head's state dict (`layers.<i>.weight`, `layers.<i>.bias`) from Keras Dense layers
    (`[kernel [in, out], bias [out]]` each, in order). A Keras `Normalization` layer before
    them (`(x - mean) / max(sqrt(variance), epsilon)`) is folded into the first layer, exactly:
    W (x - m) / s + b = (W / s) x + (b - (W / s) m). See README, "Heads from other formats"."""
    import torch

    state = {}
    for i, (kernel, bias) in enumerate(dense):
        weight = np.asarray(kernel, dtype=np.float64).T
        bias = np.asarray(bias, dtype=np.float64).reshape(-1)
        if i == 0 and mean is not None:
            scale = np.maximum(np.sqrt(np.asarray(variance, dtype=np.float64).reshape(-1)), epsilon)
            weight = weight / scale
            bias = bias - weight @ np.asarray(mean, dtype=np.float64).reshape(-1)
        state[f"layers.{i}.weight"] = torch.tensor(weight, dtype=torch.float32)
        state[f"layers.{i}.bias"] = torch.tensor(bias, dtype=torch.float32)
    return state


STAGE = HeadsStage
