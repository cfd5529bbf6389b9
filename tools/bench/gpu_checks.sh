#!/usr/bin/env bash
# The GPU figures of docs/scaling.md and docs/results.md in one call, sized for about 8 minutes on one
# H100/H200: DualCoOp's own code beside promptmlr's dualcoop (fp32, then bf16), then the scale benchmark
# (every phase at 6,000 and 30,000 training images, bf16, and the class counts).
#
#   bash tools/bench/gpu_checks.sh ANCHOR_DIR OUT      # ANCHOR_DIR: a checkout of sunxm2357/DualCoOp
#
# Run from the repository root with promptmlr importable. SIZES and SCALE_SECONDS (environment) change the
# scale part's sizes and its time limit; each part writes its results to OUT as soon as it ends.
set -u
anchor_dir=${1:?usage: bash tools/bench/gpu_checks.sh ANCHOR_DIR OUT}
out=${2:?usage: bash tools/bench/gpu_checks.sh ANCHOR_DIR OUT}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
for precision in fp32 bf16; do
  echo "=== anchor.py --precision $precision"
  timeout 100 "$python" -m tools.bench.anchor --anchor-dir "$anchor_dir" --out "$out/anchor-$precision" \
      --device cuda --precision "$precision" --rounds 5 --warmup 2
done
echo "=== scale.py"
timeout "${SCALE_SECONDS:-270}" "$python" -m tools.bench.scale --out "$out/scale" --device cuda \
    --sizes ${SIZES:-6000 30000} --classes 20 81 1000 --set train.mixed_precision=bf16 --set train.num_workers=12
