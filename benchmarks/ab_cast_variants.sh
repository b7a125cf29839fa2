#!/usr/bin/env bash
# A/B timing of cast-kernel variants on a GPU machine, from the repository root:
#   PATCHES="docs/experiments/session6/v5_column_sat_rounding.patch ..." TESTK="rht" ROUNDS=2 \
#       bash benchmarks/ab_cast_variants.sh
# Each patch is applied (git apply) to its own copy of the tree and built into its own cache, in parallel with
# the unpatched tree ("tree"). Each variant then runs the CUDA cast tests selected by TESTK (pytest -k), and
# the builds are timed in turn, ROUNDS times, with benchmarks/cast_times.py, so that every variant sees the
# same machine state. Log: $OUT/ab.log (environment: device_env.sh).
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
ROOT=$PWD BASE_PATH="$PYTHONPATH"  # the variant's copy goes first, so that it is the fp4dist imported
ROUNDS="${ROUNDS:-2}" TESTK="${TESTK:-rht}"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > "$OUT/gpu.txt"
names=(tree)
for f in ${PATCHES:-}; do names+=("$(basename "$f" .patch)"); done
prepare() {  # name [patch]
    local dir=/tmp/ab_$1
    rm -rf "$dir" && mkdir -p "$dir" && cp -r fp4dist csrc benchmarks tests pyproject.toml "$dir"/
    if [ -n "${2:-}" ]; then (cd "$dir" && git apply "$ROOT/$2") || { echo "$1: patch does not apply"; return 1; }; fi
    (cd "$dir" && FP4DIST_BUILD_DIR=/tmp/ab_build_$1 PYTHONPATH="$dir:$BASE_PATH" python3 -c \
        "import logging; logging.basicConfig(); from fp4dist.backends import cuda; print('$1 built:', cuda.available())")
}
in_variant() {  # name command...
    local name=$1; shift
    (cd /tmp/ab_$name && FP4DIST_BUILD_DIR=/tmp/ab_build_$name PYTHONPATH="/tmp/ab_$name:$BASE_PATH" "$@")
}
prepare tree > "$OUT/build_tree.log" 2>&1 &
for f in ${PATCHES:-}; do prepare "$(basename "$f" .patch)" "$f" > "$OUT/build_$(basename "$f" .patch).log" 2>&1 & done
wait
{
    grep -h "built:\|does not apply" "$OUT"/build_*.log
    for name in "${names[@]:1}"; do
        in_variant "$name" timeout 300 python3 -m pytest -q -m cuda tests/test_cuda_backend.py -k "$TESTK" 2>&1 \
            | tail -1 | sed "s/^/$name tests: /"
    done
    for _ in $(seq 1 "$ROUNDS"); do
        for name in "${names[@]}"; do in_variant "$name" python3 benchmarks/cast_times.py "$name"; done
    done
} 2>&1 | tee "$OUT/ab.log"
