"""Diagnostic, not part of the library: where the fixed time of all_gather_nvfp4 goes (>= 2 GPUs, NCCL).

    python benchmarks/diag_gather_overhead.py [--sizes-mb 16 256]

Per size, on 2 ranks (one GPU each), median ms of: the bf16 all-gather; all_gather_nvfp4 rowwise-only as
is; the same with its shard check (_check_shards: a header all-gather and host reads) switched off; the
check alone. Then a torch.profiler table of five checked gathers of the last size on rank 0. The shards are
quantized by the reference backend (no kernel build; rowwise-only gathers need no kernel).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_gather import HIDDEN, timed  # noqa: E402
from fp4dist import NVFP4Quantizer  # noqa: E402
from fp4dist import distributed as fd  # noqa: E402


def worker(rank, world, store, sizes_mb):
    device = torch.device("cuda", rank)
    torch.cuda.set_device(device)
    dist.init_process_group("nccl", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(minutes=5), device_id=device)
    check = fd._check_shards
    for mb in sizes_mb:
        tokens = (mb * 2**20 // (2 * HIDDEN)) // (16 * world) * (16 * world)
        shard = torch.randn(tokens // world, HIDDEN, device=device).to(torch.bfloat16)
        full = torch.empty(tokens, HIDDEN, dtype=torch.bfloat16, device=device)
        t = NVFP4Quantizer(columnwise=False, amax_group=dist.group.WORLD, backend="reference").quantize(shard)
        res = {"bf16": timed(lambda: dist.all_gather_into_tensor(full, shard), device, 20),
               "nvfp4": timed(lambda: fd.all_gather_nvfp4(t), device, 20),
               "check alone": timed(lambda: check(t, None, world), device, 20)}
        fd._check_shards = lambda *a: None
        res["nvfp4 without check"] = timed(lambda: fd.all_gather_nvfp4(t), device, 20)
        fd._check_shards = check
        if rank == 0:
            print(f"{mb} MB: " + ", ".join(f"{k} {1e3 * v:.3f} ms" for k, v in res.items()), flush=True)
    if rank == 0:
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                fd.all_gather_nvfp4(t)
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=25), flush=True)
    else:
        for _ in range(5):
            fd.all_gather_nvfp4(t)
        torch.cuda.synchronize()
    dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes-mb", type=int, nargs="+", default=[16, 256])
    args = ap.parse_args()
    if torch.cuda.device_count() < 2:
        sys.exit("needs 2 GPUs")
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(worker, args=(2, os.path.join(tmp, "store"), args.sizes_mb), nprocs=2)


if __name__ == "__main__":
    main()
