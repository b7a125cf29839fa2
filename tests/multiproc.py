"""Run a test body on N spawned ranks of a process group, with a timeout and per-rank failure reports."""

from __future__ import annotations

import datetime
import os
import queue
import tempfile
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _worker(fn, rank, world, store_path, backend, results, args):
    try:
        torch.set_num_threads(1)
        dist.init_process_group(backend, init_method=f"file://{store_path}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=60))
        out = fn(rank, world, *args)
        dist.barrier()
        dist.destroy_process_group()
        results.put((rank, True, out))
    except BaseException:  # report everything, including assertion errors, with the rank
        results.put((rank, False, traceback.format_exc()))


def run_ranks(fn, world: int, *args, timeout: float = 120.0, backend: str = "gloo"):
    """Call ``fn(rank, world, *args)`` in ``world`` spawned processes joined in one process group.

    Returns the per-rank return values. Raises AssertionError naming the failed rank(s) with their
    tracebacks, or the ranks that had not finished after ``timeout`` seconds (all are then killed).
    """
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        store = os.path.join(tmp, "store")
        procs = [ctx.Process(target=_worker, args=(fn, r, world, store, backend, results, args), daemon=True)
                 for r in range(world)]
        for p in procs:
            p.start()
        done, failures = {}, {}
        deadline = datetime.datetime.now() + datetime.timedelta(seconds=timeout)
        try:
            while len(done) + len(failures) < world:
                left = (deadline - datetime.datetime.now()).total_seconds()
                try:
                    rank, ok, payload = results.get(timeout=max(left, 0.01))
                except queue.Empty:
                    missing = sorted(set(range(world)) - set(done) - set(failures))
                    raise AssertionError(f"ranks {missing} did not finish within {timeout:.0f}s (hang?); "
                                         f"failures so far: {failures or 'none'}") from None
                (done if ok else failures)[rank] = payload
                if failures and len(done) + len(failures) < world:
                    # a failed rank may leave the others blocked in a collective: give them a moment
                    deadline = min(deadline, datetime.datetime.now() + datetime.timedelta(seconds=20))
        finally:
            for p in procs:
                if p.is_alive():
                    p.kill()
                p.join(timeout=5)
        if failures:
            report = "\n".join(f"--- rank {r} failed ---\n{tb}" for r, tb in sorted(failures.items()))
            raise AssertionError(f"{len(failures)} of {world} ranks failed:\n{report}")
        return [done[r] for r in range(world)]


def nccl_world() -> int:
    """Ranks for a one-GPU-per-rank NCCL test: 4 where the host has 4 GPUs, else 2."""
    return 4 if torch.cuda.device_count() >= 4 else 2


def rank_device(rank: int, device: str) -> torch.device:
    """The device a rank's test body runs on: ``device`` itself, or for "cuda:rank" GPU ``rank``, made
    current (one GPU per rank, as NCCL needs)."""
    if device == "cuda:rank":
        torch.cuda.set_device(rank)
        return torch.device("cuda", rank)
    return torch.device(device)
