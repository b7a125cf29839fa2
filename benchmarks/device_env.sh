# Sourced (not run) by the device scripts (device_suite.sh, h100_train.sh, nccl_suite.sh), from the repository
# root: $OUT (default ./device_out) created, unbuffered Python, the kernel build cache, and the wheels for
# packages the GPU image lacks (hydra-core, omegaconf, antlr4, pytest) installed from .whl/ when present (see
# docs/benchmarks.md for how they were fetched). fp4dist is imported from the checkout.
OUT="${OUT:-device_out}"; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 FP4DIST_BUILD_DIR="${FP4DIST_BUILD_DIR:-/tmp/fp4dist_build}"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD"
else
    export PYTHONPATH="$PWD"
fi
