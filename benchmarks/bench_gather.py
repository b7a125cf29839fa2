"""Benchmark all_gather_nvfp4 against a bf16 all-gather of the same logical tensor, eagerly and in CUDA graphs.

    python benchmarks/bench_gather.py --nproc 1 --device cuda                          # NCCL, one GPU
    python benchmarks/bench_gather.py --nproc 2 --device cuda --sizes-mb 16 64 256     # NCCL, >= 2 GPUs
    python benchmarks/bench_gather.py --nproc 1 --device cpu --sizes-mb 1 --iters 5    # gloo on CPUs (smoke test)

Sizes are of the full (gathered) bf16 tensor [tokens, 4096] (default 16 MB .. 1 GB). Variants:

* bf16: ``all_gather_single`` of the bf16 shard;
* rowwise / both: ``all_gather_nvfp4`` of a shard made by ``quantize_for_gather`` (rowwise only, or rowwise +
  columnwise with the RHT), which sends the shard's buffer as it is;
* rowwise copy-in / both copy-in: the same of a shard made by ``NVFP4Quantizer.quantize`` (copied into a
  buffer at each gather);
* rowwise / both bytes copied (world 1 only): not a gather but ``dst.copy_(buffer)`` of the shard buffer into a
  preallocated tensor: the floor of a world-1 gather, which NCCL runs as a local copy of those bytes.

Each variant runs in two modes. ``eager``: the call itself, timed from a CUDA event recorded before the call
to one after it on an idle GPU (so the time is the longer of the host's issue time and the GPU's work), after
a barrier; wall clock on CPUs. ``graph`` (NCCL only): the same call captured once in a CUDA graph (after the
eager warm-ups that validate the signature) and timed as ``graph.replay()``: the GPU's work alone, including
the graph's own launch (~15 us on an H200, which dominates at small sizes). ``graph x16`` (NCCL only): 16
gathers one after another in one graph, the replay's time / 16: the cost of a gather among other work in a
captured step, as nccl-tests times collectives back to back. Per row:
bytes on the wire per logical element, the median ms over ``--iters`` runs, the speed-up over bf16 in the same
mode, the median host time of the call (us, wall clock of issuing it), and per gather the collectives and host
reads (Tensor.tolist / item / ...; on a GPU also the syncs that ``torch.cuda.set_sync_debug_mode`` reports) of
the Python calls (in graph mode: those made while capturing) and the device kernels (torch.profiler CUDA
kernel and memcpy events per call or per replay; on CPUs the aten ops other than views and allocations).

With --nproc larger than the GPU count the ranks share GPUs over gloo: the times then say nothing about NCCL
and the graph mode is skipped.
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
from fp4dist.distributed import all_gather_nvfp4, check_gathers, quantize_for_gather

HIDDEN = 4096
GRAPH_REPEAT = 16
MODES = ("eager", "graph", f"graph x{GRAPH_REPEAT}")
_COLLECTIVES = ("all_gather_single", "all_gather_into_tensor", "all_reduce", "broadcast", "all_gather", "barrier")
_HOST_READS = ("tolist", "item", "cpu", "numpy", "__bool__", "__int__", "__float__")


def timed(fn, device: torch.device, iters: int) -> tuple[float, float]:
    """(median seconds of fn() over iters runs, median host seconds of issuing it), after 3 warm-ups; every rank
    starts each run together, on an idle device."""
    for _ in range(3):
        fn()
    times, host = [], []
    for _ in range(iters):
        dist.barrier()
        if device.type == "cuda":
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            t0 = time.perf_counter()
            fn()
            host.append(time.perf_counter() - t0)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            host.append(time.perf_counter() - t0)
            times.append(host[-1])
    return statistics.median(times), statistics.median(host)


class _OpCount(TorchDispatchMode):
    """Counts the ops that would launch a kernel on a GPU: not views, not allocations."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view and not str(func).startswith("aten.empty"):
            self.ops += 1
        return func(*args, **(kwargs or {}))


def is_sync_warning(w) -> bool:
    """A warning of set_sync_debug_mode("warn") about a synchronizing call (not its own "prototype feature" note)."""
    text = str(w.message)
    return "synchroniz" in text.lower() and "prototype" not in text


class _Calls:
    """Counts the collectives and host reads made while active (wrapped torch.distributed / Tensor methods) and,
    on a GPU, the syncs that set_sync_debug_mode("warn") reports."""

    def __init__(self, device: torch.device):
        self.device, self.counts, self._saved = device, {"collectives": 0, "host reads": 0}, []

    def _wrap(self, owner, name, key):
        original = getattr(owner, name)
        self._saved.append((owner, name, original))

        def counted(*args, **kwargs):
            self.counts[key] += 1
            return original(*args, **kwargs)

        setattr(owner, name, counted)

    def __enter__(self):
        for name in _COLLECTIVES:
            if hasattr(dist, name):
                self._wrap(dist, name, "collectives")
        for name in _HOST_READS:
            self._wrap(torch.Tensor, name, "host reads")
        self._warnings = warnings.catch_warnings(record=True)
        self._caught = self._warnings.__enter__()
        warnings.simplefilter("always")
        if self.device.type == "cuda":
            torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.set_sync_debug_mode("default")
        self._warnings.__exit__(*exc)
        for owner, name, original in reversed(self._saved):
            setattr(owner, name, original)
        syncs = sum(is_sync_warning(w) for w in self._caught)
        self.counts["host reads"] = max(self.counts["host reads"], syncs)
        return False


def _kernels(fn, device: torch.device, calls: int) -> float:
    """Device kernels (and memcpys) per call of fn; on CPUs the aten ops that are neither views nor allocations."""
    if device.type != "cuda":
        mode = _OpCount()
        mode.ops = 0
        with mode:
            for _ in range(calls):
                fn()
        return mode.ops / calls
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA) / calls


def eager_costs(fn, device: torch.device, calls: int = 4) -> dict[str, float]:
    """Per call of fn (already warm): collectives, host reads / syncs, kernels."""
    with _Calls(device) as c:
        for _ in range(calls):
            fn()
    out = {k: v / calls for k, v in c.counts.items()}
    out["kernels"] = _kernels(fn, device, calls)
    return out


def capture(fn, device: torch.device, count_kernels: bool = True, repeat: int = 1):
    """(graph, costs of the captured call): fn (already warm: its signature validated) captured in a CUDA graph;
    its collectives and host reads counted while capturing, its kernels per replay (with ``count_kernels``: a
    torch.profiler run)."""
    graph = torch.cuda.CUDAGraph()
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):  # a warm-up on the capture's side stream, as torch.cuda.graphs advises
        fn()
    torch.cuda.current_stream(device).wait_stream(side)
    torch.cuda.synchronize(device)
    with _Calls(device) as c:
        with torch.cuda.graph(graph):
            for _ in range(repeat):
                fn()
    torch.cuda.synchronize(device)
    out = {k: v / repeat for k, v in c.counts.items()}
    if count_kernels:
        out["kernels"] = _kernels(graph.replay, device, 4) / repeat
    return graph, out


def variants(mb: int, world: int, rank: int, group, device: torch.device) -> tuple[dict, int]:
    """{label: (gather fn, wire bytes per logical element)} for a full bf16 tensor of about ``mb`` MB, and its
    token count."""
    tokens = max(16 * world, (mb * 2**20 // (2 * HIDDEN)) // (16 * world) * (16 * world))
    shard = torch.randn(tokens // world, HIDDEN, device=device).to(torch.bfloat16)
    full = torch.empty(tokens, HIDDEN, dtype=torch.bfloat16, device=device)
    out = {"bf16": (lambda: all_gather_single(full, shard, group=group), 2.0)}
    for name, q in (("rowwise", NVFP4Quantizer(columnwise=False, amax_group=group)),
                    ("both", NVFP4Quantizer(rht=True, amax_group=group))):
        sent = quantize_for_gather(q, shard, group)
        for label, t in ((name, sent), (f"{name} copy-in", q.quantize(shard, row_offset=rank * shard.shape[0]))):
            wire = sum(c.numel() * c.element_size() for k, c in t.component_tensors().items() if "amax" not in k)
            out[label] = ((lambda t=t: all_gather_nvfp4(t, group)), wire / shard.numel())
        if world == 1:  # the floor of a world-1 gather: a device copy of the shard buffer's bytes
            buf = sent.gather_buffer.data
            out_buf = torch.empty_like(buf)
            out[f"{name} bytes copied"] = ((lambda d=out_buf, b=buf: d.copy_(b)), buf.numel() / shard.numel())
    return out, tokens


def measure_size(mb, world, rank, group, device, modes, iters, counting: bool) -> list[dict]:
    """One row per (variant, mode) at ``mb``: the times (``counting`` False) or the per-gather costs (True)."""
    fns, tokens = variants(mb, world, rank, group, device)
    rows = []
    for label, (fn, bytes_per_elem) in fns.items():
        for mode in modes:
            row = {"size_mb": tokens * HIDDEN * 2 / 2**20, "variant": label, "mode": mode, "bytes": bytes_per_elem}
            if mode == "eager":
                if counting:
                    row.update(eager_costs(fn, device))
                else:
                    row["seconds"], row["host"] = timed(fn, device, iters)
            else:
                repeat = GRAPH_REPEAT if mode == f"graph x{GRAPH_REPEAT}" else 1
                fn()  # warm (validates a signature first seen here)
                graph, cost = capture(fn, device, count_kernels=counting, repeat=repeat)
                if counting:
                    row.update(cost)
                else:
                    seconds, host = timed(graph.replay, device, iters)
                    row["seconds"], row["host"] = seconds / repeat, host / repeat
                del graph
            rows.append(row)
    check_gathers(group)  # every gather's shards agreed (raises on every rank otherwise)
    del fns
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    return rows


def worker(rank, world, store, device_kind, sizes_mb, iters, graphs, results):
    use_nccl = device_kind == "cuda" and torch.cuda.device_count() >= world
    device = torch.device("cuda", rank % torch.cuda.device_count()) if device_kind == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if use_nccl else "gloo", init_method=f"file://{store}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(minutes=5),
                            **({"device_id": device} if use_nccl else {}))
    group = dist.group.WORLD
    modes = MODES if use_nccl and graphs else ("eager",)
    rows = []
    # Every timing comes before torch.profiler first runs: from then on CUPTI stays attached to the process and
    # every kernel launch pays for it on the host.
    for counting in (False, True):
        for mb in sizes_mb:
            rows += measure_size(mb, world, rank, group, device, modes, iters, counting)
    merged = {}
    for r in rows:
        merged.setdefault((r["size_mb"], r["variant"], r["mode"]), {}).update(r)
    rows = list(merged.values())
    if rank == 0:
        results.put(rows)
    dist.destroy_process_group()


def tables(rows, args, backend: str) -> str:
    """A summary (bf16 / rowwise / both, speed-ups, per mode) and the table of every row."""
    base = {(r["size_mb"], r["mode"]): r["seconds"] for r in rows if r["variant"] == "bf16"}
    by = {(r["size_mb"], r["mode"], r["variant"]): r for r in rows}
    modes = sorted({r["mode"] for r in rows}, key=MODES.index)
    sizes = sorted({r["size_mb"] for r in rows})

    def per_gather(r):
        return f"{r['collectives']:g} / {r['host reads']:g} / {r['kernels']:g}"

    lines = [f"all_gather_nvfp4 vs bf16, {args.nproc} rank(s), {args.device} ({backend}), hidden {HIDDEN}, "
             f"median of {args.iters}; per gather: collectives / host reads / "
             f"{'CUDA kernels' if args.device == 'cuda' else 'aten ops (no views, no allocations)'}",
             "",
             "| bf16 MB | mode | bf16 ms | rowwise ms | vs bf16 | both ms | vs bf16 | per gather (bf16; rowwise; both) "
             "| copy of the bytes ms (rowwise; both) |",
             "|---:|---|---:|---:|---:|---:|---:|---|---|"]
    for mb in sizes:
        for mode in modes:
            b, rw, both = (by[(mb, mode, v)] for v in ("bf16", "rowwise", "both"))
            copies = [by.get((mb, mode, f"{v} bytes copied")) for v in ("rowwise", "both")]
            copied = "; ".join(f"{1e3 * c['seconds']:.3f}" for c in copies if c) or "-"
            lines.append(f"| {mb:.0f} | {mode} | {1e3 * b['seconds']:.3f} | {1e3 * rw['seconds']:.3f} | "
                         f"{b['seconds'] / rw['seconds']:.2f}x | {1e3 * both['seconds']:.3f} | "
                         f"{b['seconds'] / both['seconds']:.2f}x | {per_gather(b)}; {per_gather(rw)}; "
                         f"{per_gather(both)} | {copied} |")
    lines += ["", "| bf16 MB | variant | mode | bytes/elem | ms | vs bf16 | host us | collectives | host reads | "
              "kernels |", "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['size_mb']:.0f} | {r['variant']} | {r['mode']} | {r['bytes']:.4f} | "
                     f"{1e3 * r['seconds']:.3f} | {base[(r['size_mb'], r['mode'])] / r['seconds']:.2f}x | "
                     f"{1e6 * r['host']:.1f} | {r['collectives']:g} | {r['host reads']:g} | {r['kernels']:g} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nproc", type=int, default=1)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--sizes-mb", type=int, nargs="+", default=[16, 64, 256, 1024])
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--no-graphs", action="store_true", help="skip the CUDA graph mode")
    ap.add_argument("--out", help="also write the tables (markdown) here")
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        store = os.path.join(tmp, "store")
        procs = [ctx.Process(target=worker, args=(r, args.nproc, store, args.device, args.sizes_mb, args.iters,
                                                  not args.no_graphs, results)) for r in range(args.nproc)]
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
    text = tables(rows, args, "nccl" if args.device == "cuda" and n_gpus >= args.nproc else "gloo")
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
