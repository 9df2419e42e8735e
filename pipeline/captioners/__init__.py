"""Captioners: models that write a synthetic caption of an image (the `recaption` stage's backends).

A captioner is built once per worker from its settings and called on a batch of rows:

    captioner.caption(images: list[bytes | None], texts: list[str | None]) -> list[Captioned]

one `Captioned` per row, in order: the captions it wrote (up to the number asked) and, when it
wrote fewer, why (`error`, a short line; the row is never dropped for it: its alt-text stays
usable). `prompt_for(template, text)` fills a rewrite prompt's `{text}` with the row's alt-text
(Altogether's "rewrite" mode); a describe prompt has no `{text}`.

- `transformers` (`pipeline.captioners.transformers`): an image-to-text model from a local
  folder or a bucket (BLIP, BLIP-2, Florence-2, a LLaVA-style model), batched, greedy;
- `openai` (`pipeline.captioners.openai_chat`): an OpenAI-compatible chat-completions endpoint
  with image input (vLLM, most model servers), concurrent, with retries and a deadline.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class Captioned:
    """What a captioner wrote for one row: captions with the seconds each took, or an error."""
    texts: list[str] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    error: Optional[str] = None


def prompt_for(template: str, text: Optional[str]) -> str:
    """The prompt of one row: `template` with `{text}` replaced by the row's alt-text."""
    return template.replace("{text}", (text or "").strip()) if "{text}" in template else template


def build_captioner(settings, prompt: str, seed: int = 0):
    """The backend `settings.backend` names, built from the recaption settings and its prompt."""
    if settings.backend == "openai":
        from pipeline.captioners.openai_chat import OpenAIChatCaptioner

        return OpenAIChatCaptioner.from_settings(settings, prompt, seed)
    from pipeline.captioners.transformers import TransformersCaptioner

    return TransformersCaptioner.from_settings(settings, prompt)
