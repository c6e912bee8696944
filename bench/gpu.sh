#!/usr/bin/env bash
# The GPU benchmark as one command: about 3-4 minutes on one H100 / H200, hard stop
# at 290 s (the bench skips modes left after 230 s; its JSON is rewritten after each mode).
#
#   bash bench/gpu.sh            # results in $OUT when set, else bench/out/
#
# Full-size random-weight stack in bf16: the released transformer and VQ configs, CLIP
# ViT-H/14-text + Gemma2-2B configs (random weights, no download), 1024 x 1024, 16 steps,
# guidance 6, gamma 1.1, 5 timed runs after 1 warm-up per mode; every mode, then a
# torch.profiler summary of one region-hold loop (host-sync count). Prints the table.
set -euo pipefail
cd "$(dirname "$0")/.."
out_dir="${OUT:-bench/out}"
mkdir -p "$out_dir"
export EDITMGT_COMMIT="${EDITMGT_COMMIT:-$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)}"
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,power.draw,temperature.gpu \
  --format=csv > "$out_dir/nvidia-smi.csv" 2>&1 || true
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')"
timeout 290 python -m editmgt.bench \
  --device cuda --preset full --dtype bfloat16 --size 1024 --steps 16 --runs 5 --warmup 1 \
  --real-text --budget-s 230 --profile --out "$out_dir/bench_gpu.json" \
  2> "$out_dir/bench_gpu.log" | tee "$out_dir/bench_gpu.txt"
