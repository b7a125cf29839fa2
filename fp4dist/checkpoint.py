"""Atomic per-rank checkpoints that a restarted job resumes from.

Layout: ``<dir>/step_00000120/rank00000.pt`` (one ``torch.save`` file per rank: model, optimizer,
scheduler and step). A save writes into ``step_N.partial/`` and, once every rank has written and
fsynced its file (a barrier), rank 0 renames the directory to ``step_N`` in one atomic rename. A
crash at any point leaves either the complete new checkpoint or an ignored ``.partial`` directory
beside the last good one. Loading picks the newest complete directory whose files all load.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

import torch
import torch.distributed as dist

log = logging.getLogger("fp4dist")
_STEP_DIR = re.compile(r"^step_(\d{8})$")


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _flag_device() -> torch.device:
    """Where a collective's tensor must live: the current GPU for NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(directory: str | Path, step: int, state: dict, keep_last: int = 2, crash_hook=None) -> Path:
    """Collective: every rank saves ``state`` for ``step``; returns the final directory."""
    rank, world = _rank_world()
    root = Path(directory)
    final, partial = root / f"step_{step:08d}", root / f"step_{step:08d}.partial"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
    _barrier()
    tmp = partial / f"rank{rank:05d}.pt.tmp"
    torch.save({"step": step, "world_size": world, "state": state}, tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, partial / f"rank{rank:05d}.pt")
    if crash_hook is not None:
        crash_hook()  # tests kill a rank here, mid-checkpoint
    _barrier()
    if rank == 0:
        _fsync_dir(partial)
        if final.exists():
            shutil.rmtree(final)
        os.rename(partial, final)
        _fsync_dir(root)
        for old in sorted(_complete_steps(root))[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(root / f"step_{old:08d}", ignore_errors=True)
    _barrier()
    return final


def _complete_steps(root: Path) -> list[int]:
    if not root.is_dir():
        return []
    return sorted(int(m.group(1)) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name)))


def load_latest(directory: str | Path, map_location=None) -> dict | None:
    """This rank's state from the newest complete checkpoint in ``directory`` (None if there is none).

    Every rank must find the same step: the newest one that loads on all ranks is used.
    """
    rank, world = _rank_world()
    root = Path(directory)
    if rank == 0 and root.is_dir():
        for p in root.glob("step_*.partial"):
            log.warning("ignoring incomplete checkpoint %s (a save was interrupted)", p)
    for step in reversed(_complete_steps(root)):
        path = root / f"step_{step:08d}" / f"rank{rank:05d}.pt"
        try:
            blob = torch.load(path, map_location=map_location, weights_only=False)
            ok = blob["step"] == step and blob["world_size"] == world
            if not ok:
                log.warning("checkpoint %s was written by %d ranks, this job has %d: skipped", path,
                            blob["world_size"], world)
        except (OSError, RuntimeError, KeyError, EOFError) as e:
            log.warning("checkpoint %s does not load (%s): skipped", path, e)
            ok, blob = False, None
        if dist.is_available() and dist.is_initialized():
            flag = torch.tensor([int(ok)], device=_flag_device())
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            ok = bool(flag.item())
        if ok:
            return blob["state"]
    return None
