#!/usr/bin/env bash
# GPU benchmarks, for a CUDA machine (no model hub needed: random weights, generated images).
#
#   bash bench/gpu.sh            # N=8192 BATCH=256 by default; results in bench/results/
#
# 1. CLIP scoring pairs/s: ViT-B-32, bf16, random weights (pretrained=None) on 256 px world
#    JPEGs: our ClipScoreStage vs a raw open_clip encode loop on the same model (ratio).
# 2. Trainer samples/s: ViT-B-32, bf16, batch $BATCH, 8 dataloader workers, on 224 px world shards:
#    our `curate train` (inline launcher) vs open_clip_train's main, same shards and settings (ratio).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
N=${N:-8192}
BATCH=${BATCH:-256}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch; assert torch.cuda.is_available(), 'CUDA is not available'; print(torch.__version__, torch.cuda.get_device_name())"

echo "== clip_score: ViT-B-32 bf16, $N pairs, batch $BATCH"
"$PY" bench/bench_clip_score.py --model ViT-B-32 --device cuda --precision bf16 \
    --n "$N" --batch-size "$BATCH" --image-size 256 --repeat 2

if [ -f bench/bench_train.py ]; then
    echo "== trainer throughput"
    "$PY" bench/bench_train.py --device cuda --batch-size "$BATCH"
else
    echo "== trainer throughput: skipped (bench/bench_train.py not there yet)"
fi
