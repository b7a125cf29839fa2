#!/usr/bin/env bash
# fp4dist on one host with 2 or more GPUs, one GPU per rank over NCCL: the NCCL tests (gather and the NVFP4
# layers, CUDA kernels), the all-gather benchmark, and a TP=2 training pair (NVFP4, bf16).
#   bash benchmarks/nccl_suite.sh [OUT_DIR]       (default ./bench-out: logs, tables, metrics)
# STEPS: training steps per run (default 300). Environment and wheels: device_env.sh.
set -uo pipefail
OUT_DIR="${1:-bench-out}"
source "$(dirname "$0")/device_env.sh"
STEPS="${STEPS:-300}"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; nvidia-smi topo -m
  python3 -c "import torch; print('torch', torch.__version__, torch.version.cuda, 'nccl', torch.cuda.nccl.version())"
  python3 -c "import logging; logging.basicConfig(); from fp4dist.backends import cuda; print('kernels available:', cuda.available())"
} > "$OUT_DIR/setup.log" 2>&1
timeout 150 python3 -m pytest -q -m cuda tests/test_gather.py tests/test_layers.py -k nccl 2>&1 | tee "$OUT_DIR/nccl_tests.log" | tail -3
timeout 120 python3 benchmarks/bench_gather.py --nproc 2 --device cuda --sizes-mb 16 64 256 1024 \
    --out "$OUT_DIR/bench_gather_nccl.md" 2>&1 | tail -8
for recipe in nvfp4 bf16; do
    run_dir="${TMPDIR:-/tmp}/tp2_$recipe"
    NPROC=2 MAX_RESTARTS=0 timeout 120 bash launch/train.sh model=small recipe=$recipe data.source=stdlib \
        train.steps="$STEPS" train.batch_size=16 train.log_interval=10 train.eval_interval=100 train.eval_batches=16 \
        optim.lr=2e-3 optim.warmup_steps=60 output_dir="$run_dir" checkpoint.dir="$run_dir/checkpoints" \
        checkpoint.interval=100000 2>&1 | grep -v Warning > "$OUT_DIR/tp2_$recipe.log"
    cp "$run_dir/metrics.jsonl" "$OUT_DIR/tp2_$recipe.jsonl" 2>/dev/null
    grep -E "step +[0-9]+00/|done|Error" "$OUT_DIR/tp2_$recipe.log" | tail -5
done
true
