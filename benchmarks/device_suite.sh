#!/usr/bin/env bash
# Everything fp4dist runs on a GPU machine, in one go: build the CUDA kernels, run the CUDA tests,
# the kernel / MLP / gather benchmarks. Logs and tables go to $OUT (default ./device_out).
# STEPS picks a subset (default: "tests kernels mlp gather").
# Environment and wheels: device_env.sh.
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.version.cuda)" | tee -a "$OUT/gpu.txt"
python3 -c "import logging; logging.basicConfig(); from fp4dist.backends import cuda; print('kernels available:', cuda.available())" 2>&1 | tee "$OUT/build.log"
STEPS="${STEPS:-tests kernels mlp gather}"
has() { [[ " $STEPS " == *" $1 "* ]]; }
has tests && python3 -m pytest -q -m cuda tests 2>&1 | tee "$OUT/cuda_tests.log" | tail -5
has kernels && python3 benchmarks/bench_kernels.py --out "$OUT/bench_kernels.md" 2>&1 | tee "$OUT/bench_kernels.log"
has mlp && python3 benchmarks/bench_mlp.py --out "$OUT/bench_mlp.md" 2>&1 | tee "$OUT/bench_mlp.log"
has gather && python3 benchmarks/bench_gather.py --nproc 2 --device cuda --sizes-mb 16 64 \
    --out "$OUT/bench_gather_1gpu.md" 2>&1 | tee "$OUT/bench_gather.log"
true
