#!/usr/bin/env bash
# Train fp4dist's tensor-parallel GPT under torchrun. NPROC processes (default 2) on this machine;
# hydra overrides pass through, e.g.: bash launch/train.sh recipe=bf16 train.steps=100
# MAX_RESTARTS (default 1): torchrun restarts the ranks after a failure and they resume from the
# newest checkpoint.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
exec python -m torch.distributed.run --standalone --nproc-per-node="${NPROC:-2}" \
    --max-restarts="${MAX_RESTARTS:-1}" "$here/train.py" "$@"
