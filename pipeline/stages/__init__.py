"""The registry: every section the pipeline knows, in pipeline order. Config loading, the
app, the demo's ablation and the example-config test loop over it; nothing else names a
stage. Adding a stage is one module here plus one line in `REGISTRY`.

A module holds its settings dataclass (the one place its defaults live) and exposes

    SECTION = "my_stage"                  # its config section
    SETTINGS = MyStageSettings

and one of:

    STAGE = MyStage                       # a Stage (declared columns, `process`), and
    def build_step(settings, run) -> Step   # its step (run: the whole run settings)

    def run_source(settings, run, run_dir, engine, log) -> list[str]
                                          # a source: runs before ingest; its parquet files
                                          # (columns url, text, ...) join the input

    TRANSFORM = MyTransform               # an ImageTransform (declared columns, `apply`),
    def image_transform(settings) -> ImageTransform   # applied by the step that writes images out

A source may declare the columns its files add as `OUTPUTS` ((name, Arrow type) pairs).

Stage code never imports Ray or Spark, nor another stage module.
"""
from pipeline.stages import (
    caption_filter,
    clip_score,
    crawl_step,
    decontaminate,
    dedup,
    download,
    face_blur,
    heads,
    image_based,
    image_dedup,
    language,
    metadata,
    pool_filter,
    recaption,
    semantic_dedup,
    shard,
    text_mask,
)

REGISTRY = [crawl_step, dedup, pool_filter, caption_filter, language, metadata, image_based, download, image_dedup,
            clip_score, text_mask, heads, semantic_dedup, decontaminate, recaption, shard, face_blur]



def registered_sources() -> list:
    """The registered sources (`run_source`), in order."""
    return [m for m in REGISTRY if hasattr(m, "run_source")]


def registered_stages() -> list:
    """The registered stages (`build_step`), in pipeline order."""
    return [m for m in REGISTRY if hasattr(m, "build_step")]


def registered_transforms() -> list:
    """The registered image transforms (`image_transform`)."""
    return [m for m in REGISTRY if hasattr(m, "image_transform")]
