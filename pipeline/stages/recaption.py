"""recaption: synthetic captions of the kept images, with their provenance (after the filters,
before shard).

Adds `captions` (a list of `{text, model, prompt, seconds}`: each caption, the model and the
prompt template that wrote it and the seconds it took) and `caption_error` (null, or why the
row has fewer captions than asked: `no_image`, `undecodable_image`, `timeout: ...`,
`http 503 (after 4 attempts)`, `malformed answer: ...`). `text` (the alt-text) is left as it
was, and no row is dropped here: a row the captioner failed keeps its alt-text. The backends
(`pipeline.captioners`): `transformers`, an image-to-text model from a folder or a bucket,
loaded once per worker (an actor on Ray), batched, greedy; `openai`, an OpenAI-compatible
chat-completions endpoint with image input (vLLM and other model servers), `concurrency`
requests at a time, retries of transient errors, a deadline per request. `mode: rewrite`
gives the model the alt-text to improve (Altogether): the prompt's `{text}` is the row's
alt-text. Like every per-part stage it resumes part by part, and `curate plan` counts it.
The shard step writes the first caption as `<key>.syn.txt` beside `<key>.txt`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal, Optional

import pyarrow as pa

from pipeline.core.constraints import AtLeast, Between, Invalid, Matches
from pipeline.core.stage import Resources, Stage, set_column
from pipeline.core.steps import Step

SECTION = "recaption"

DESCRIBE_PROMPT = "Write a one-sentence caption of this image: what it shows, plainly."
REWRITE_PROMPT = ("This image's alt-text is: {text}\nRewrite it as a one-sentence caption of the image: "
                  "keep what the alt-text says that the image shows, add what it shows, drop the rest.")


@dataclass
class RecaptionSettings:
    backend: Literal["transformers", "openai"] = "transformers"
    model: str = ""                 # transformers: a save_pretrained folder (local or bucket); openai: the served name
    url: Optional[str] = None       # openai: the endpoint's base URL (http://host:8000/v1)
    api_key_env: str = "OPENAI_API_KEY"   # openai: the environment variable holding the key (if any)
    mode: Literal["describe", "rewrite"] = "describe"
    prompt: Optional[str] = None    # default: by mode (rewrite: `{text}` is the alt-text); transformers
                                    # describe: none (an unconditional captioner such as BLIP)
    captions: Annotated[int, AtLeast(1)] = 1      # per row (transformers: beam search; openai: seeded requests)
    max_new_tokens: Annotated[int, AtLeast(1)] = 48
    temperature: Annotated[float, Between(0, 2)] = 0.0   # openai (transformers decodes greedily)
    batch_size: Annotated[int, AtLeast(1)] = 16   # transformers: images per forward pass
    device: Annotated[str, Matches(r"auto|cpu|cuda(:\d+)?", "auto, cpu, cuda or cuda:N")] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    threads: Annotated[int, AtLeast(1)] = 1       # transformers on CPU: torch threads per worker
    trust_remote_code: bool = False               # transformers: models whose code ships with them
    concurrency: Annotated[int, AtLeast(1)] = 16  # openai: requests in flight per task
    retries: Annotated[int, AtLeast(0)] = 3       # openai: more attempts after a transient failure
    timeout: Annotated[float, Between(0, 3600, low_open=True)] = 60.0   # openai: seconds per request, whole
    backoff: Annotated[float, AtLeast(0)] = 0.5   # openai: seconds before the first retry (doubling)
    enabled: bool = True

    def validate(self) -> None:
        if not self.model:
            raise Invalid("model", "is required (transformers: a model folder; openai: the served model name)",
                          self.model)
        if self.backend == "openai" and not self.url:
            raise Invalid("url", "is required with backend: openai (e.g. http://host:8000/v1)", self.url)


SETTINGS = RecaptionSettings

CAPTION_TYPE = pa.struct([("text", pa.string()), ("model", pa.string()), ("prompt", pa.string()),
                          ("seconds", pa.float32())])
CAPTIONS, CAPTION_ERROR = "captions", "caption_error"


def prompt_of(settings: RecaptionSettings) -> str:
    """The prompt template: the one set, else the mode's default."""
    if settings.prompt is not None:
        return settings.prompt
    if settings.mode == "rewrite":
        return REWRITE_PROMPT
    return DESCRIBE_PROMPT if settings.backend == "openai" else ""


class RecaptionStage(Stage):
    name = "recaption"
    label = "synthetic captions"
    filters = False
    inputs = ("text", "jpg")
    inputs_from = "download"
    reads_images = True
    outputs = ((CAPTIONS, pa.list_(CAPTION_TYPE)), (CAPTION_ERROR, pa.string()))

    def __init__(self, settings, seed: int = 0):
        super().__init__(settings, seed)
        gpus = 1.0 if settings.backend == "transformers" and _wants_gpu(settings.device) else 0.0
        self.resources = Resources(cpus=1.0, gpus=gpus, stateful=settings.backend == "transformers")
        self.captioner = None   # set by setup(), once per worker

    def setup(self) -> None:
        from pipeline.captioners import build_captioner

        self.captioner = build_captioner(self.settings, prompt_of(self.settings), self.seed)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "captioner": None}

    def process(self, table: pa.Table) -> pa.Table:
        self.check_columns(table.column_names)
        if self.captioner is None:
            self.setup()
        results = self.captioner.caption(table["jpg"].to_pylist(), table["text"].to_pylist())
        model, prompt = self.settings.model, prompt_of(self.settings)
        captions = [[{"text": t, "model": model, "prompt": prompt, "seconds": s}
                     for t, s in zip(r.texts, r.seconds)] for r in results]
        table = set_column(table, CAPTIONS, pa.array(captions, pa.list_(CAPTION_TYPE)))
        return set_column(table, CAPTION_ERROR, pa.array([r.error for r in results], pa.string()))


def _wants_gpu(device: str) -> bool:
    if str(device).startswith("cuda"):
        return True
    if device == "auto":
        import torch

        return torch.cuda.is_available()
    return False


def build_step(settings: RecaptionSettings, run) -> Step:
    return Step(RecaptionStage, settings)


STAGE = RecaptionStage
