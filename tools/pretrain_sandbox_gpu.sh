#!/usr/bin/env bash
# Pretrain sandbox CLIP candidates on one GPU within a fixed budget, and bring back what --finalize
# measured. On a GPU a minute renders and trains 50-100x the pairs two CPU cores do in one, so this is
# where the levers of docs/sandbox.md (longer pretraining, captioned close-ups, a tempered attention pool)
# are tried first.
#
# Usage, from the repository root on a machine with CUDA and PyTorch:
#   OUT=/tmp/sandbox-gpu BUDGET=240 bash tools/pretrain_sandbox_gpu.sh [CANDIDATE ...]
# CANDIDATE is one of: long (the shipped recipe, the benchmark world's up to 5 objects a scene, with
# batches of 512, trained for BUDGET seconds), tempered2, tempered4
# (the same with --pool-temperature 2 or 4), closeups (the same with half the images captioned close-ups,
# --crop-fraction 0.5); default: long closeups (the device tool brings back
# 8 files, 4 per candidate). DEVICE=cpu runs the same on a CPU (a smoke test with a tiny BUDGET). Where open_clip is not installed,
# wheels in .wheels/ are installed first (make them here with
#   pip download --no-deps -d .wheels open_clip_torch==3.3.0 ftfy wcwidth).
# Each candidate leaves under $OUT/<candidate>/: its training log, the finalize report (sandbox-rn.json) and the fp16
# weights in parts of at most 15 MB (join: cat sandbox-rn.safetensors.part-* > sandbox-rn.safetensors),
# then evaluate on the CPU with the calibration benchmark (docs/sandbox.md).
set -euo pipefail
shopt -s nullglob

OUT=${OUT:?set OUT to the folder the results go to}
BUDGET=${BUDGET:-240}            # training seconds per candidate
POOL=${POOL:-200000}             # scenes rendered once and shared by the candidates
WORKERS=${WORKERS:-$(nproc)}
# Processes captioning and cropping batches ahead of the GPU: one CPU core makes ~1,700 pairs/s with
# close-ups and ~3,000 without (batches of 256, 2-core Xeon), fewer than a GPU should train on this
# small model; two cores stay with the training process.
BATCH_WORKERS=${BATCH_WORKERS:-$(( WORKERS > 2 ? WORKERS - 2 : 0 ))}
DEVICE=${DEVICE:-cuda}
if [ $# -gt 0 ]; then CANDIDATES=("$@"); else CANDIDATES=(long closeups); fi

python3 -c "import open_clip" 2>/dev/null || python3 -m pip install -q --no-deps --no-index .wheels/*.whl
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null

pool_dir="$OUT/pool"
mkdir -p "$pool_dir"
for candidate in "${CANDIDATES[@]}"; do
    case "$candidate" in
        long) extra=() ;;
        tempered2) extra=(--pool-temperature 2) ;;
        tempered4) extra=(--pool-temperature 4) ;;
        closeups) extra=(--crop-fraction 0.5) ;;
        *) echo "unknown candidate '$candidate': use long, tempered2, tempered4 or closeups" >&2; exit 2 ;;
    esac
    run="$OUT/$candidate"
    mkdir -p "$run"
    for pool in "$pool_dir"/pool-*.npz; do ln -sf "$(realpath "$pool")" "$run"/; done  # render the pool once
    python3 tools/pretrain_sandbox_clip.py --device "$DEVICE" --bf16 --threads "$((WORKERS - BATCH_WORKERS))" \
        --workers "$WORKERS" --batch-workers "$BATCH_WORKERS" --pool-size "$POOL" --image-size 128 \
        --max-objects 5 --lr 1e-3 --warmup 150 --batch-size 512 --steps 1000000 --time-budget "$BUDGET" \
        --save-every 500 --out-dir "$run" "${extra[@]}" 2>&1 | tee "$run/train.log" | grep -E "saved|pool|done"
    for pool in "$run"/pool-*.npz; do [ -L "$pool" ] || mv "$pool" "$pool_dir"/; done
    python3 tools/pretrain_sandbox_clip.py --out-dir "$run" --finalize --weights-dir "$run" \
        --threads "$WORKERS" 2>&1 | tail -6
    split -b 15M -d "$run/sandbox-rn.safetensors" "$run/sandbox-rn.safetensors.part-"
    rm -f "$run/sandbox-rn.safetensors" "$run/last.safetensors" "$run"/pool-*.npz
done
rm -rf "$pool_dir"
