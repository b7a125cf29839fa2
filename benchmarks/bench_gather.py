"""Benchmark all_gather_nvfp4 against a bf16 all-gather of the same logical tensor.

    python benchmarks/bench_gather.py --nproc 2 --device cpu --sizes-mb 4 16 64      # gloo on CPUs
    python benchmarks/bench_gather.py --nproc 2 --device cuda --sizes-mb 16 64 256   # NCCL, >= 2 GPUs

Sizes are of the full (gathered) bf16 tensor [tokens, 4096]. Reports bytes on the wire per element
(what each rank contributes, per logical element), the median time per gather for bf16, NVFP4
rowwise-only and NVFP4 rowwise+columnwise, each with both gather strategies, and the all-gather bus
bandwidth ((world - 1) / world of the gathered bytes per second, faster strategy). On one GPU with
--nproc > 1 the ranks share it over gloo: the times then say nothing about NCCL.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fp4dist import NVFP4Quantizer
from fp4dist.distributed import all_gather_nvfp4

HIDDEN = 4096


def timed(fn, device, iters: int) -> float:
    """Median seconds of fn() over iters runs, after 2 warm-ups; every rank starts together."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(iters):
        dist.barrier()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def worker(rank, world, store, device_kind, sizes_mb, iters, results):
    use_nccl = device_kind == "cuda" and torch.cuda.device_count() >= world
    device = torch.device("cuda", rank % torch.cuda.device_count()) if device_kind == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if use_nccl else "gloo", init_method=f"file://{store}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(minutes=5))
    rows = []
    for mb in sizes_mb:
        tokens = max(16 * world, (mb * 2**20 // (2 * HIDDEN)) // (16 * world) * (16 * world))
        shard = torch.randn(tokens // world, HIDDEN, device=device).to(torch.bfloat16)
        full = torch.empty(tokens, HIDDEN, dtype=torch.bfloat16, device=device)
        gather_bf16 = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        row = {"size_mb": tokens * HIDDEN * 2 / 2**20, "tokens": tokens,
               "bf16": timed(lambda: gather_bf16(full, shard), device, iters)}
        group = dist.group.WORLD
        for name, q in (("rowwise", NVFP4Quantizer(columnwise=False, amax_group=group)),
                        ("both", NVFP4Quantizer(rht=True, amax_group=group))):
            t = q.quantize(shard)
            wire = sum(c.numel() * c.element_size() for k, c in t.component_tensors().items() if "amax" not in k)
            row[f"{name}_bytes_per_elem"] = wire / shard.numel()
            for strategy in ("per_component", "packed"):
                row[f"{name}_{strategy}"] = timed(lambda: all_gather_nvfp4(t, strategy=strategy), device, iters)
        rows.append(row)
    if rank == 0:
        results.put(rows)
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--sizes-mb", type=int, nargs="+", default=[16, 64, 256])
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--out", help="also write the table (markdown) here")
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        store = os.path.join(tmp, "store")
        procs = [ctx.Process(target=worker, args=(r, args.nproc, store, args.device, args.sizes_mb, args.iters, results))
                 for r in range(args.nproc)]
        for p in procs:
            p.start()
        rows = None
        while rows is None:
            try:
                rows = results.get(timeout=5)
            except Exception:  # queue.Empty: check that no rank died
                dead = [r for r, p in enumerate(procs) if p.exitcode not in (None, 0)]
                if dead:
                    for p in procs:
                        p.kill()
                    raise SystemExit(f"bench_gather: rank(s) {dead} failed, see their traceback above")
        for p in procs:
            p.join()
    n_gpus = torch.cuda.device_count() if args.device == "cuda" else 0
    backend = "nccl" if args.device == "cuda" and n_gpus >= args.nproc else "gloo"
    lines = [f"all_gather_nvfp4 vs bf16, {args.nproc} ranks, {args.device} ({backend}), hidden {HIDDEN}, "
             f"median of {args.iters}",
             "",
             "| bf16 MB | bytes/elem bf16 | rowwise | both | bf16 ms | rowwise ms (per-comp / packed) | speed-up | "
             "both ms (per-comp / packed) | speed-up | bus GB/s bf16 / rowwise / both |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        best_row = min(r["rowwise_per_component"], r["rowwise_packed"])
        best_both = min(r["both_per_component"], r["both_packed"])
        # all-gather bus bandwidth: (world - 1) / world of the gathered bytes per second
        elems, share = r["tokens"] * HIDDEN, (args.nproc - 1) / args.nproc
        bus = [share * elems * b / t / 1e9 for b, t in ((2.0, r["bf16"]), (r["rowwise_bytes_per_elem"], best_row),
                                                        (r["both_bytes_per_elem"], best_both))]
        lines.append(
            f"| {r['size_mb']:.0f} | 2.000 | {r['rowwise_bytes_per_elem']:.4f} | {r['both_bytes_per_elem']:.4f} | "
            f"{1e3 * r['bf16']:.3f} | {1e3 * r['rowwise_per_component']:.3f} / {1e3 * r['rowwise_packed']:.3f} | "
            f"{r['bf16'] / best_row:.2f}x | {1e3 * r['both_per_component']:.3f} / {1e3 * r['both_packed']:.3f} | "
            f"{r['bf16'] / best_both:.2f}x | {bus[0]:.1f} / {bus[1]:.1f} / {bus[2]:.1f} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
