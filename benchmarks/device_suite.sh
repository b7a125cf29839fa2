#!/usr/bin/env bash
# Everything fp4dist runs on one GPU, in one go: build the CUDA kernels, run the CUDA tests, the kernel / MLP /
# gather benchmarks.
#   bash benchmarks/device_suite.sh [OUT_DIR]     (default ./bench-out: logs and tables)
# STEPS picks a subset (default: "tests kernels mlp gather"). Environment and wheels: device_env.sh.
set -uo pipefail
OUT_DIR="${1:-bench-out}"
source "$(dirname "$0")/device_env.sh"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$OUT_DIR/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.version.cuda)" | tee -a "$OUT_DIR/gpu.txt"
python3 -c "import logging; logging.basicConfig(); from fp4dist.backends import cuda; print('kernels available:', cuda.available())" 2>&1 | tee "$OUT_DIR/build.log"
STEPS="${STEPS:-tests kernels mlp gather}"
has() { [[ " $STEPS " == *" $1 "* ]]; }
has tests && python3 -m pytest -q -m cuda tests 2>&1 | tee "$OUT_DIR/cuda_tests.log" | tail -5
has kernels && python3 benchmarks/bench_kernels.py --out "$OUT_DIR/bench_kernels.md" 2>&1 | tee "$OUT_DIR/bench_kernels.log"
has mlp && python3 benchmarks/bench_mlp.py --out "$OUT_DIR/bench_mlp.md" 2>&1 | tee "$OUT_DIR/bench_mlp.log"
has gather && python3 benchmarks/bench_gather.py --nproc 1 --device cuda --sizes-mb 16 64 256 1024 \
    --out "$OUT_DIR/bench_gather_1gpu.md" 2>&1 | tee "$OUT_DIR/bench_gather.log"
true
