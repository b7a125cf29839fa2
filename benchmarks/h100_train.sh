#!/usr/bin/env bash
# The larger training comparison on one GPU: model=small (25M params, seq 512), NVFP4 vs bf16,
# one process (TP=1), STEPS steps each. Metrics go to $OUT/h100_<recipe>/metrics.jsonl.
set -uo pipefail
OUT="${OUT:-device_out}"; STEPS="${STEPS:-600}"
export PYTHONUNBUFFERED=1 FP4DIST_BUILD_DIR="${FP4DIST_BUILD_DIR:-/tmp/fp4dist_build}"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD"
fi
for recipe in nvfp4 bf16; do
    NPROC=1 MAX_RESTARTS=0 timeout "${RUN_TIMEOUT:-240}" bash launch/train.sh model=small recipe=$recipe \
        train.steps="$STEPS" train.batch_size=16 train.log_interval=10 train.eval_interval=100 \
        optim.lr=2e-3 optim.warmup_steps=60 output_dir="$OUT/h100_$recipe" checkpoint.dir="/tmp/ckpt_$recipe" \
        checkpoint.interval=100000 2>&1 | grep -v Warning | tee "$OUT/h100_$recipe.log" | grep -E "step +[0-9]+0/|done|Error"
done
