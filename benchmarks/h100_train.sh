#!/usr/bin/env bash
# The larger training comparison on one GPU, one process (TP=1): MODEL (default small: 25M params,
# seq 512; medium: 101M), LR (default 2e-3), STEPS steps per run on DATA (default data.source=stdlib:
# ~30 MB, so a few thousand steps of 8192 tokens see each byte about once; the 0.75 MB default corpus
# is memorized within 1000 steps). RUNS picks the runs (default: "nvfp4 nvfp4_last_bf16 bf16"):
#   nvfp4           every transformer block NVFP4
#   nvfp4_last_bf16 the last block in bf16 (as the NVFP4 paper keeps its final layers in BF16)
#   bf16            the baseline
#   bash benchmarks/h100_train.sh [OUT_DIR]       (default ./bench-out)
# Metrics go to OUT_DIR/h100_<run>/metrics.jsonl, full logs to OUT_DIR/h100_<run>.log. RUN_TIMEOUT: seconds
# per run (default 240). Environment and wheels: device_env.sh.
set -uo pipefail
OUT_DIR="${1:-bench-out}"
source "$(dirname "$0")/device_env.sh"
STEPS="${STEPS:-2000}"; DATA="${DATA:-data.source=stdlib}"; MODEL="${MODEL:-small}"; LR="${LR:-2e-3}"
for run in ${RUNS:-nvfp4 nvfp4_last_bf16 bf16}; do
    case $run in
        nvfp4) overrides=(recipe=nvfp4) ;;
        nvfp4_last_bf16) overrides=(recipe=nvfp4 "recipe.high_precision_blocks=[-1]") ;;
        bf16) overrides=(recipe=bf16) ;;
        *) echo "unknown run $run"; exit 2 ;;
    esac
    NPROC=1 MAX_RESTARTS=0 timeout "${RUN_TIMEOUT:-240}" bash launch/train.sh model="$MODEL" "${overrides[@]}" $DATA \
        train.steps="$STEPS" train.batch_size=16 train.log_interval=10 train.eval_interval=100 train.eval_batches=32 \
        optim.lr="$LR" optim.warmup_steps=60 output_dir="$OUT_DIR/h100_$run" \
        checkpoint.dir="${TMPDIR:-/tmp}/ckpt_$run" checkpoint.interval=100000 2>&1 | grep -v Warning > "$OUT_DIR/h100_$run.log"
    grep -E "step +[0-9]+00/|done|Error" "$OUT_DIR/h100_$run.log"
done
