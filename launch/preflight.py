"""Check a training command before torchrun starts any process: config, data and run directory.

    python launch/preflight.py --nproc 2 [KEY=VALUE ...]

Composes the config as the job will (the same Hydra overrides), runs the job's start-up checks
(launch/checks.py) for ``--nproc`` processes, and, where ``output_dir`` is given, what the job
would find there (launch/rundir.py) and, for a resumption, that a checkpoint is usable by that
many ranks (manifests and checksums). Changes nothing. Exit status: 0 when the job can start, 3
when the run in output_dir is already complete (said on stdout), 2 with the problem on stderr,
once and without a traceback. launch/train.sh runs it, so that a bad command fails once rather
than on every rank and again on every torchrun restart.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import the launch package by name
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from fp4dist import checkpoint
from launch import checks, rundir

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
READY, FAILED, COMPLETE = 0, 2, 3


def compose_config(overrides: list[str]):
    """The job's config for these command-line overrides (Hydra's errors pass through)."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3", job_name="train"):
        return compose("train", overrides=overrides)


def preflight(nproc: int, overrides: list[str]) -> tuple[int, str]:
    """(exit status, message) for a job of ``nproc`` processes with these overrides."""
    try:
        cfg = compose_config(overrides)
    except (HydraException, OmegaConfBaseException) as e:
        cause = f"\n{e.__cause__}" if isinstance(e.__cause__, OmegaConfBaseException) else ""
        return FAILED, f"bad command-line override: {e}{cause}"
    try:
        checks.validate(cfg, nproc)
        checks.check_data(cfg)
        if cfg.output_dir is not None:
            rundir.set_dirs(cfg, cfg.output_dir)
            plan = rundir.plan(cfg)
            if plan.action == "complete":
                lines = "\n".join(f"  {k:12} {v}" for k, v in rundir.outputs(cfg).items())
                return COMPLETE, f"{plan.note}; its outputs:\n{lines}"
            if plan.action == "resume":
                checkpoint.find_resumable(cfg.checkpoint.dir, plan.run_id)
    except (checks.ConfigError, checkpoint.CheckpointError) as e:
        return FAILED, str(e)
    return READY, ""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nproc", type=int, default=2, help="processes the job will run (torchrun --nproc-per-node)")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, as given to launch/train.py")
    args = ap.parse_args(argv)
    status, message = preflight(args.nproc, args.overrides)
    if message:
        print(message, file=sys.stderr if status == FAILED else sys.stdout, flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
