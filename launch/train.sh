#!/usr/bin/env bash
# Train fp4dist's tensor-parallel GPT under torchrun: NPROC processes (default 2) on this machine;
# hydra overrides pass through, e.g.: bash launch/train.sh recipe=bf16 train.steps=100
# MAX_RESTARTS (default 1): torchrun restarts the ranks after a failure and they resume from the
# newest checkpoint. `bash launch/train.sh --help` describes the job, its outputs and overrides.
# The command is checked first (launch/preflight.py), so a bad one fails once, before any rank starts.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
for arg in "$@"; do
    case "$arg" in -h|--help) exec python "$here/train.py" --help ;; esac
done
status=0
python "$here/preflight.py" --nproc "${NPROC:-2}" -- "$@" || status=$?
case "$status" in
    0) ;;
    3) exit 0 ;;   # the run in output_dir is already complete (preflight said where its outputs are)
    *) exit "$status" ;;
esac
exec python -m torch.distributed.run --standalone --nproc-per-node="${NPROC:-2}" \
    --max-restarts="${MAX_RESTARTS:-1}" "$here/train.py" "$@"
