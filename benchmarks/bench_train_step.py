"""One training step of fp4dist's GPT on one GPU, bf16 vs NVFP4, eager / compiled / CUDA-graph.

    python benchmarks/bench_train_step.py                         # the four model sizes, every mode
    python benchmarks/bench_train_step.py --models 102M --modes eager graph
    python benchmarks/bench_train_step.py --d-model 1024 --layers 8 --seq 512 --batch 16   # any model
    python benchmarks/bench_train_step.py --device cpu --models tiny --modes eager compile --iters 2

A step is forward, cross-entropy, backward, grad-norm clipping and a fused AdamW update, at TP=1, with
bf16 activations on a GPU (fp32 on a CPU). Per (model, recipe, mode) it reports: the median step time
(CUDA events around each step, so launch gaps count), the GPU-kernel time of one step and its kernel
count (torch.profiler; memsets count as kernels), the host syncs of one eager step
(torch.cuda.set_sync_debug_mode), peak memory, and where the GPU time goes: kernel ms per family (casts,
amax passes, operand decodes, GEMMs, attention, optimizer, memsets, other), and with ``--kernels N`` the N
kernels (by name and template arguments) with the most GPU time. Separately it counts the kernels of one NVFP4 linear,
forward + backward, at the model's MLP shape.

Each measurement runs in a process of its own, and in it every timing comes before the profiler: once
torch.profiler has run, CUPTI stays attached to the process and every later kernel launch costs more
host time, which would inflate the eager steps that follow (most of all NVFP4's, with ~5x the launches).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import time
import warnings

import torch
import torch.nn.functional as F

from fp4dist import HighPrecisionRecipe, NVFP4Recipe
from fp4dist.graphs import CapturedStep
from fp4dist.model import GPT, GPTConfig
from fp4dist.parallel import ColumnParallelLinear, clip_grad_norm_, set_rng_step

# name: (d_model, layers, heads, seq, batch)
MODELS = {
    "tiny": (128, 2, 4, 128, 4),
    "25.7M": (512, 8, 8, 512, 16),
    "102M": (1024, 8, 16, 512, 16),
    "406M": (2048, 8, 16, 1024, 8),
    "816M": (4096, 4, 32, 2048, 4),
}
MODES = ("eager", "compile", "graph", "compile+graph")


class Step:
    """The training step as a function of (tokens, targets) -> (loss, grad_norm), no host sync."""

    def __init__(self, cfg: GPTConfig, recipe, device, dtype, compiled: bool):
        self.model = GPT(cfg, recipe, compute_dtype=dtype).to(device)
        self.forward = torch.compile(self.model) if compiled else self.model
        fused = device.type == "cuda"
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, fused=fused, capturable=fused)
        self.vocab = cfg.vocab_size

    def __call__(self, x, y):
        logits = self.forward(x)
        loss = F.cross_entropy(logits.reshape(-1, self.vocab), y.reshape(-1))
        loss.backward()
        norm = clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        return loss.detach(), norm


# Kernel families of the breakdown: the first pattern a kernel's name contains names its family.
FAMILIES = (
    ("cast", ("cast_wide_kernel", "cast_kernel")),
    ("amax", ("amax",)),
    ("decode", ("decode_kernel",)),
    ("gemm", ("nvjet", "gemm", "sm90_xmma", "cutlass")),
    ("attention", ("flash", "fmha", "attention")),
    ("optimizer", ("adam", "multi_tensor", "foreach")),
    ("memset", ("memset", "Memset")),
)


def family(kernel: str) -> str:
    for fam, patterns in FAMILIES:
        if any(p in kernel for p in patterns):
            return fam
    return "other"


def kernel_key(name: str) -> str:
    """A kernel's name without its argument list: template arguments (layouts, RHT, SR) stay, so each
    instantiation is a row of its own."""
    return name.split("(", 1)[0].strip() if not name.startswith("Memset") else name


def add_kernel(by_kernel: dict, name: str, ms: float) -> None:
    """Sums ``ms`` and counts one launch under ``kernel_key(name)``: by_kernel[key] = [GPU ms, launches]."""
    entry = by_kernel.setdefault(kernel_key(name), [0.0, 0])
    entry[0] += ms
    entry[1] += 1


def profile(fn, device, names: list | None = None, by_family: dict | None = None,
            by_kernel: dict | None = None) -> tuple[int, float]:
    """(kernels incl. memsets, their summed GPU ms) of one call of fn; their names appended to ``names``, their
    GPU ms summed per family (``FAMILIES``) into ``by_family`` and per kernel (``add_kernel``) into
    ``by_kernel``."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=acts) as prof:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
    if device.type != "cuda":
        return 0, 0.0
    events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    if names is not None:
        names.extend(e.name for e in events)
    if by_family is not None:
        for e in events:
            fam = family(e.name)
            by_family[fam] = by_family.get(fam, 0.0) + e.device_time / 1e3
    if by_kernel is not None:
        for e in events:
            add_kernel(by_kernel, e.name, e.device_time / 1e3)
    return len(events), sum(e.device_time for e in events) / 1e3


def is_sync_warning(w) -> bool:
    """A warning of set_sync_debug_mode("warn") about a synchronizing call (not its own "prototype feature" note)."""
    text = str(w.message)
    return "synchroniz" in text.lower() and "prototype" not in text


def host_syncs(fn) -> int:
    """Host syncs of one call of fn, as torch.cuda.set_sync_debug_mode sees them."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return sum(is_sync_warning(w) for w in caught)


def median_step_ms(run, device, iters: int) -> float:
    times = []
    for i in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run(i)
            end.record()
            end.synchronize() if i == iters - 1 else None
            times.append((start, end))
        else:
            t0 = time.perf_counter()
            run(i)
            times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        torch.cuda.synchronize()
        return statistics.median(s.elapsed_time(e) for s, e in times)
    return statistics.median(times) * 1e3


def bench(name, dims, recipe_name, mode, device, iters):
    d, layers, heads, seq, batch = dims
    cfg = GPTConfig(vocab_size=256, seq_len=seq, d_model=d, n_layers=layers, n_heads=heads, ffn_mult=4)
    recipe = NVFP4Recipe() if recipe_name == "nvfp4" else HighPrecisionRecipe()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    step = Step(cfg, recipe, device, dtype, compiled=mode.startswith("compile"))
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randint(0, 256, (batch, seq), generator=gen).to(device)
    y = torch.randint(0, 256, (batch, seq), generator=gen).to(device)
    t_setup = time.perf_counter()
    for i in range(3):  # warm-up (compiles, builds the kernels, creates cuBLAS handles)
        set_rng_step(step.model, i)
        step.opt.zero_grad(set_to_none=True)
        step(x, y)
    syncs = host_syncs(lambda: (step.opt.zero_grad(set_to_none=True), step(x, y))) if device.type == "cuda" else 0
    if mode.endswith("graph"):
        if device.type != "cuda":
            raise SystemExit("graph modes need a GPU")
        captured = CapturedStep(step, x, y, optimizer=step.opt)

        def run(i):
            set_rng_step(step.model, 10 + i)
            captured(x, y)
    else:
        def run(i):
            set_rng_step(step.model, 10 + i)
            step.opt.zero_grad(set_to_none=True)
            step(x, y)
    setup_s = time.perf_counter() - t_setup
    ms = median_step_ms(run, device, iters)
    by_family, by_kernel = {}, {}
    kernels, kernel_ms = profile(lambda: run(0), device, by_family=by_family, by_kernel=by_kernel)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0
    params = sum(p.numel() for p in step.model.parameters())
    return dict(model=name, params_m=round(params / 1e6, 1), recipe=recipe_name, mode=mode, step_ms=round(ms, 2),
                kernel_ms=round(kernel_ms, 2), kernels=kernels, host_syncs=syncs, peak_gib=round(peak, 2),
                setup_s=round(setup_s, 1),
                gpu_ms_by_family={k: round(v, 2) for k, v in sorted(by_family.items(), key=lambda kv: -kv[1])},
                gpu_ms_by_kernel={k: [round(v[0], 3), v[1]] for k, v in sorted(by_kernel.items(), key=lambda kv: -kv[1][0])})


def linear_kernels(d: int, tokens: int, device) -> int:
    """Kernels of one NVFP4 linear [d -> 4d], forward + backward, with tokens rows (the grads are taken with
    torch.autograd.grad, so no accumulation into .grad counts), and their names."""
    layer = ColumnParallelLinear(d, 4 * d, bias=False, recipe=NVFP4Recipe()).to(device)
    set_rng_step(layer, 1)
    x = torch.randn(tokens, d, device=device, dtype=torch.bfloat16, requires_grad=True)
    dy = torch.randn(tokens, 4 * d, device=device, dtype=torch.bfloat16)
    run = lambda: torch.autograd.grad(layer(x), (x, layer.weight), dy)
    for _ in range(2):
        run()
    names = []
    return profile(run, device, names)[0], names


def _child(queue, fn, args):
    try:
        queue.put((True, fn(*args)))
    except Exception as e:  # noqa: BLE001 - sent to the parent, which raises it
        queue.put((False, f"{type(e).__name__}: {e}"))


def isolated(fn, *args):
    """fn(*args) in a fresh process (spawned: its own CUDA context, no profiler state from earlier runs)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, fn, args))
    proc.start()
    try:
        ok, value = queue.get()
    finally:
        proc.join()
    if not ok:
        raise RuntimeError(value)
    return value


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["25.7M", "102M", "406M", "816M"], choices=list(MODELS))
    ap.add_argument("--d-model", type=int)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--recipes", nargs="+", default=["bf16", "nvfp4"], choices=["bf16", "nvfp4"])
    ap.add_argument("--iters", type=int, default=12)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", help="append one JSON line per result to this file")
    ap.add_argument("--kernels", type=int, default=0, metavar="N",
                    help="also print each run's N kernels with the most GPU time (summed ms and launches per step)")
    args = ap.parse_args()
    device = torch.device(args.device)
    models = {m: MODELS[m] for m in args.models}
    if args.d_model:
        models = {f"d{args.d_model}xL{args.layers}": (args.d_model, args.layers, args.heads, args.seq, args.batch)}
    rows = []
    for name, dims in models.items():
        if device.type == "cuda" and "nvfp4" in args.recipes:
            per_linear, names = isolated(linear_kernels, dims[0], dims[3] * dims[4], device)
            print(f"{name}: kernels per NVFP4 linear (fwd+bwd, {dims[0]} -> {4 * dims[0]}): {per_linear}: "
                  + "; ".join(n[:40] for n in names), flush=True)
        for recipe in args.recipes:
            for mode in args.modes:
                try:
                    r = isolated(bench, name, dims, recipe, mode, device, args.iters)
                except Exception as e:  # noqa: BLE001 - report the failure in the table and go on
                    r = dict(model=name, recipe=recipe, mode=mode, error=f"{type(e).__name__}: {str(e)[:200]}")
                rows.append(r)
                print(json.dumps(r), flush=True)
                if args.json:
                    with open(args.json, "a") as f:
                        f.write(json.dumps(r) + "\n")
    print("\n| model | recipe | mode | step ms | kernel ms | kernels | host syncs | peak GiB "
          "| vs bf16 (its fastest mode in this run) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | {r['recipe']} | {r['mode']} | {r['error']} |")
            continue
        best = min((q["step_ms"] for q in rows if q["model"] == r["model"] and q["recipe"] == "bf16"
                    and "error" not in q), default=None)
        ratio = f"{r['step_ms'] / best:.2f}x" if best else "-"
        print(f"| {r['model']} ({r['params_m']}M) | {r['recipe']} | {r['mode']} | {r['step_ms']} | {r['kernel_ms']} | "
              f"{r['kernels']} | {r['host_syncs']} | {r['peak_gib']} | {ratio} |")
    fams = [f for f, _ in FAMILIES] + ["other"]
    print("\nGPU ms per step by kernel family (one profiled step)\n")
    print("| model | recipe | mode | " + " | ".join(fams) + " |")
    print("|---|---|---|" + "---|" * len(fams))
    for r in rows:
        if "error" not in r:
            by = r["gpu_ms_by_family"]
            print(f"| {r['model']} | {r['recipe']} | {r['mode']} | " + " | ".join(f"{by.get(f, 0.0):.2f}" for f in fams)
                  + " |")
    if args.kernels:
        print(f"\nThe {args.kernels} kernels with the most GPU time per step (one profiled step)\n")
        print("| model | recipe | mode | kernel | GPU ms | launches |")
        print("|---|---|---|---|---:|---:|")
        for r in rows:
            for name, (ms, count) in list(r.get("gpu_ms_by_kernel", {}).items())[:args.kernels]:
                print(f"| {r['model']} | {r['recipe']} | {r['mode']} | `{name[:120]}` | {ms:.3f} | {count} |")


if __name__ == "__main__":
    main()
