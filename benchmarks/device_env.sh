# Sourced (not run) by the GPU scripts (device_suite.sh, h100_train.sh, nccl_suite.sh) from the repository root,
# after they set OUT_DIR from their first argument: creates OUT_DIR, makes Python unbuffered, sets the kernel
# build cache, and imports fp4dist from this checkout. If ./.whl holds wheels (e.g. hydra-core, omegaconf,
# antlr4-python3-runtime, pytest for a machine that lacks them), they are installed into a temp site dir that
# goes first on PYTHONPATH.
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1 FP4DIST_BUILD_DIR="${FP4DIST_BUILD_DIR:-${TMPDIR:-/tmp}/fp4dist_build}"
if ls .whl/*.whl >/dev/null 2>&1; then
    site="${TMPDIR:-/tmp}/fp4dist-site"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
    export PYTHONPATH="$site:$PWD"
else
    export PYTHONPATH="$PWD"
fi
