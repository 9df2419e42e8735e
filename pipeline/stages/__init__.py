"""The stages, in pipeline order: this list is the registry that config loading, the app
and the example-config test loop over.

A stage module holds its settings dataclass (the one place its defaults live), its stage
(declared `inputs` and `outputs` columns, `process`) and, for a global stage, its step
(its phases), and exposes:

    SECTION = "my_stage"                 # its config section
    MyStageSettings                      # registered through SETTINGS
    SETTINGS = MyStageSettings
    def build_step(settings, run) -> Step   # run: the whole run settings, for shared keys

Stage code never imports Ray or Spark.
"""
from pipeline.stages import (caption_filter, clip_score, dedup, download, heads, image_dedup, language,
                             metadata, semantic_dedup, shard)

STAGES = [dedup, caption_filter, language, metadata, download, image_dedup, clip_score, heads, semantic_dedup,
          shard]
