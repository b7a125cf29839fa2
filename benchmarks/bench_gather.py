"""Benchmark all_gather_nvfp4 against a bf16 all-gather of the same logical tensor.

    python benchmarks/bench_gather.py --nproc 1 --device cuda                          # NCCL, one GPU
    python benchmarks/bench_gather.py --nproc 2 --device cuda --sizes-mb 16 64 256     # NCCL, >= 2 GPUs
    python benchmarks/bench_gather.py --nproc 2 --device cpu --sizes-mb 1              # gloo on CPUs

Sizes are of the full (gathered) bf16 tensor [tokens, 4096] (default 16 MB .. 1 GB). Per size and variant:
bytes on the wire per logical element, the median time per gather over ``--iters`` runs (CUDA events on a
GPU, after a barrier; wall clock on CPUs), the speed-up over bf16, and per gather the collectives, the host
reads (Tensor.tolist / item / ...; on a GPU also the syncs that ``torch.cuda.set_sync_debug_mode`` reports)
and the device kernels (torch.profiler, CUDA; on CPUs the aten ops other than views and allocations) of a
steady-state gather. Variants:

* bf16: ``all_gather_single`` of the bf16 shard;
* rowwise / both: ``all_gather_nvfp4`` of a shard made by ``quantize_for_gather`` (rowwise only, or rowwise +
  columnwise with the RHT), which sends the shard's buffer as it is;
* rowwise copy-in / both copy-in: the same of a shard made by ``NVFP4Quantizer.quantize`` (copied into a
  buffer at each gather).

With --nproc larger than the GPU count the ranks share GPUs over gloo: the times then say nothing about NCCL.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import tempfile
import time
import warnings

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils._python_dispatch import TorchDispatchMode

from fp4dist import NVFP4Quantizer
from fp4dist.collectives import all_gather_single
from fp4dist.distributed import all_gather_nvfp4, quantize_for_gather

HIDDEN = 4096
_COLLECTIVES = ("all_gather_single", "all_gather_into_tensor", "all_reduce", "broadcast", "all_gather", "barrier")
_HOST_READS = ("tolist", "item", "cpu", "numpy", "__bool__", "__int__", "__float__")


def timed(fn, device: torch.device, iters: int) -> float:
    """Median seconds of fn() over iters runs, after 3 warm-ups; every rank starts each run together."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(iters):
        dist.barrier()
        if device.type == "cuda":
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


class _OpCount(TorchDispatchMode):
    """Counts the ops that would launch a kernel on a GPU: not views, not allocations."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view and not str(func).startswith("aten.empty"):
            self.ops += 1
        return func(*args, **(kwargs or {}))


def costs(fn, device: torch.device, calls: int = 4) -> dict[str, float]:
    """Per call of fn (already warm): collectives, host reads / syncs, and CUDA kernels (on CPUs the aten ops
    that are neither views nor allocations, the collective included)."""
    counts = {"collectives": 0, "host reads": 0}
    saved = []

    def wrap(owner, name, key):
        original = getattr(owner, name)
        saved.append((owner, name, original))

        def counted(*args, **kwargs):
            counts[key] += 1
            return original(*args, **kwargs)

        setattr(owner, name, counted)

    for name in _COLLECTIVES:
        if hasattr(dist, name):
            wrap(dist, name, "collectives")
    for name in _HOST_READS:
        wrap(torch.Tensor, name, "host reads")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode("warn")
            for _ in range(calls):
                fn()
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode("default")
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)
    syncs = sum("synchroniz" in str(w.message) for w in caught)
    out = {k: v / calls for k, v in counts.items()}
    out["host reads"] = max(counts["host reads"], syncs) / calls
    if device.type == "cuda":
        from torch.profiler import ProfilerActivity, profile

        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(calls):
                fn()
            torch.cuda.synchronize()
        kernels = sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
        out["kernels"] = kernels / calls
    else:
        mode = _OpCount()
        mode.ops = 0
        with mode:
            for _ in range(calls):
                fn()
        out["kernels"] = mode.ops / calls
    return out


def worker(rank, world, store, device_kind, sizes_mb, iters, results):
    use_nccl = device_kind == "cuda" and torch.cuda.device_count() >= world
    device = torch.device("cuda", rank % torch.cuda.device_count()) if device_kind == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if use_nccl else "gloo", init_method=f"file://{store}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(minutes=5))
    group = dist.group.WORLD
    rows = []
    for mb in sizes_mb:
        tokens = max(16 * world, (mb * 2**20 // (2 * HIDDEN)) // (16 * world) * (16 * world))
        shard = torch.randn(tokens // world, HIDDEN, device=device).to(torch.bfloat16)
        full = torch.empty(tokens, HIDDEN, dtype=torch.bfloat16, device=device)
        variants = {"bf16": (lambda: all_gather_single(full, shard, group=group), 2.0)}
        for name, q in (("rowwise", NVFP4Quantizer(columnwise=False, amax_group=group)),
                        ("both", NVFP4Quantizer(rht=True, amax_group=group))):
            for label, t in ((name, quantize_for_gather(q, shard, group)),
                             (f"{name} copy-in", q.quantize(shard, row_offset=rank * shard.shape[0]))):
                wire = sum(c.numel() * c.element_size() for k, c in t.component_tensors().items() if "amax" not in k)
                variants[label] = ((lambda t=t: all_gather_nvfp4(t, group)), wire / shard.numel())
        for label, (fn, bytes_per_elem) in variants.items():
            seconds = timed(fn, device, iters)
            rows.append({"size_mb": tokens * HIDDEN * 2 / 2**20, "variant": label, "bytes": bytes_per_elem,
                         "seconds": seconds, **costs(fn, device)})
        del shard, full, variants
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if rank == 0:
        results.put(rows)
    dist.destroy_process_group()


def table(rows, args, backend: str) -> str:
    lines = [f"all_gather_nvfp4 vs bf16, {args.nproc} rank(s), {args.device} ({backend}), hidden {HIDDEN}, "
             f"median of {args.iters}; per gather: collectives, host reads/syncs, "
             f"{'CUDA kernels' if args.device == 'cuda' else 'aten ops (no views, no allocations)'}",
             "",
             "| bf16 MB | variant | bytes/elem | ms | vs bf16 | collectives | host reads | kernels |",
             "|---|---|---|---|---|---|---|---|"]
    bf16 = {r["size_mb"]: r["seconds"] for r in rows if r["variant"] == "bf16"}
    for r in rows:
        lines.append(f"| {r['size_mb']:.0f} | {r['variant']} | {r['bytes']:.4f} | {1e3 * r['seconds']:.3f} | "
                     f"{bf16[r['size_mb']] / r['seconds']:.2f}x | {r['collectives']:g} | {r['host reads']:g} | "
                     f"{r['kernels']:g} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nproc", type=int, default=1)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--sizes-mb", type=int, nargs="+", default=[16, 64, 256, 1024])
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--out", help="also write the table (markdown) here")
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        store = os.path.join(tmp, "store")
        procs = [ctx.Process(target=worker, args=(r, args.nproc, store, args.device, args.sizes_mb, args.iters,
                                                  results)) for r in range(args.nproc)]
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
    text = table(rows, args, "nccl" if args.device == "cuda" and n_gpus >= args.nproc else "gloo")
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
