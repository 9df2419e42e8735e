"""The `transformers` captioner: an image-to-text model from a local folder or a bucket
(`save_pretrained`'s files: BLIP, BLIP-2, Florence-2, a LLaVA-style model), loaded once per
worker, run on batches of images, with greedy decoding (beam search for several captions), so
the same rows give the same captions. On CPU torch uses `threads` threads (1 by default: the
engine runs one worker per core). A prompt (with `{text}` in rewrite mode) is passed to the
processor as the text input; the prompt's tokens, when the model echoes them exactly (decoder-only
models such as LLaVA), are cut off; BLIP's text prompt is a prefix its caption continues, and
stays. A random or weak model that ends a caption at once gives the row `empty caption`.
"""
from __future__ import annotations

import io
import os
import time
from typing import Optional

from pipeline.captioners import Captioned, prompt_for
from pipeline.core import storage
from pipeline.errors import UserError

MODEL_CLASSES = ("AutoModelForImageTextToText", "AutoModelForVision2Seq", "AutoModelForCausalLM")


def local_model_folder(path: str) -> str:
    """A local folder with the model's files (a bucket folder fetched once per process)."""
    if storage.is_local(path):
        if not os.path.isdir(path):
            raise UserError(f"recaption.model: {path}: no such folder (a save_pretrained folder)")
        return path
    files = storage.files_under(path)
    if not files:
        raise UserError(f"recaption.model: {path}: no files there (a save_pretrained folder)")
    return os.path.dirname(storage.local_copy(files[0], beside=files[1:]))


def load_model(folder: str, trust_remote_code: bool = False):
    """(processor, model) from a folder, the model class by what its config declares."""
    import transformers

    processor = transformers.AutoProcessor.from_pretrained(folder, trust_remote_code=trust_remote_code)
    errors = []
    for name in MODEL_CLASSES:
        auto = getattr(transformers, name, None)
        if auto is None:
            continue
        try:
            return processor, auto.from_pretrained(folder, trust_remote_code=trust_remote_code)
        except (ValueError, KeyError) as exc:   # this auto class does not know the config
            errors.append(f"{name}: {' '.join(str(exc).split())[:120]}")
    raise UserError(f"recaption.model: {folder}: not an image-to-text model ({'; '.join(errors)})")


class TransformersCaptioner:
    def __init__(self, path: str, prompt: str, captions: int = 1, max_new_tokens: int = 48,
                 batch_size: int = 16, device: str = "auto", precision: str = "auto", threads: int = 1,
                 trust_remote_code: bool = False):
        import torch

        from pipeline.clip.model import resolve_device, resolve_precision

        self.prompt, self.captions, self.max_new_tokens, self.batch_size = prompt, captions, max_new_tokens, batch_size
        self.device = resolve_device(device)
        if self.device.type == "cpu":
            torch.set_num_threads(threads)
        self.processor, model = load_model(local_model_folder(path), trust_remote_code)
        precision = resolve_precision(precision, self.device)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
        self.dtype = dtype
        self.model = model.to(self.device, dtype=dtype).eval()

    @classmethod
    def from_settings(cls, s, prompt: str) -> "TransformersCaptioner":
        return cls(s.model, prompt, s.captions, s.max_new_tokens, s.batch_size, s.device, s.precision,
                   s.threads, s.trust_remote_code)

    def caption(self, images: list, texts: list) -> list[Captioned]:
        results = [Captioned() for _ in images]
        for batch in self.batches(images, results):
            started = time.perf_counter()
            captions = self.generate([p for _, p in batch], [prompt_for(self.prompt, texts[r]) for r, _ in batch])
            each = (time.perf_counter() - started) / max(len(batch) * self.captions, 1)
            for (row, _), texts_of_row in zip(batch, captions):
                kept = [t for t in texts_of_row if t]
                results[row].texts, results[row].seconds = kept, [each] * len(kept)
                if not kept:
                    results[row].error = "empty caption"
        return results

    def batches(self, images: list, results: list[Captioned]):
        """`batch_size` (row, decoded picture) pairs at a time, decoded as they are needed
        (a row that cannot be decoded gets its error instead)."""
        batch = []
        for row, data in enumerate(images):
            picture, error = decode(data)
            if picture is None:
                results[row].error = error
                continue
            batch.append((row, picture))
            if len(batch) == self.batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    def generate(self, pictures: list, prompts: list[str]) -> list[list[str]]:
        """`captions` captions of each picture (greedy; beam search for more than one)."""
        import torch

        inputs = self.processor(images=pictures, text=prompts if any(prompts) else None,
                                return_tensors="pt", padding=True)
        inputs = {k: (v.to(self.device, dtype=self.dtype) if v.is_floating_point() else v.to(self.device))
                  for k, v in inputs.items() if hasattr(v, "to")}
        n = self.captions
        with torch.inference_mode():
            output = self.model.generate(**inputs, do_sample=False, num_beams=n if n > 1 else 1,
                                         num_return_sequences=n, max_new_tokens=self.max_new_tokens)
        output = without_prompt(output, inputs.get("input_ids"), n)
        words = self.processor.batch_decode(output, skip_special_tokens=True)
        return [[" ".join(w.split()) for w in words[i * n:(i + 1) * n]] for i in range(len(pictures))]


def without_prompt(output, input_ids, n: int):
    """The generated tokens after the prompt, where the model echoes the prompt (decoder-only
    models and BLIP do); the output as is otherwise."""
    if input_ids is None or output.shape[1] < input_ids.shape[1]:
        return output
    prompt = input_ids.repeat_interleave(n, dim=0)
    if bool((output[:, :prompt.shape[1]] == prompt).all()):
        return output[:, prompt.shape[1]:]
    return output


def decode(data: Optional[bytes]):
    """(RGB PIL image, None) or (None, error)."""
    if not data:
        return None, "no_image"
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB"), None
    except Exception:  # noqa: BLE001 - any decoder failure is the row's, not the run's
        return None, "undecodable_image"
