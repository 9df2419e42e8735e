"""open_clip_train's `main` with the project's architectures registered (for bench_train.py).

    python bench/open_clip_main.py --train-data 'shards/{00000..00007}.tar' --model curate-tiny ...

`register_models()` makes `curate-tiny` known in this process; `patch_open_clip_webdataset()`
lets open_clip 3.3's loader read tars with webdataset >= 0.2.96 (see pipeline/clip/wds_compat.py).
"""
import sys

from pipeline.clip.wds_compat import patch_open_clip_webdataset
from pipeline.models import register_models

if __name__ == "__main__":
    register_models()
    patch_open_clip_webdataset()
    from open_clip_train.main import main

    main(sys.argv[1:])
