"""How a device copy's speed depends on the granularity of its byte count: the reason gather buffers are padded
to a multiple of ``fp4dist.gather_buffer.SIZE_ALIGN``.

    python benchmarks/bench_copy_sizes.py [--sizes-mib 4.5 18 36 72 144] [--extras 0 16 512 4096 65536]

For each size (MiB) plus each extra byte count it times, in a CUDA graph of 16 back-to-back calls (time / 16,
median of 20 replays), ``dst.copy_(src)`` of uint8 buffers and NCCL's all_gather_into_tensor of the same buffers
at world 1 (one process, one GPU; NCCL runs it as a local copy). Prints us for both.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist


def graph_us(fn, reps: int = 16, iters: int = 20) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / reps)
    times.sort()
    return times[len(times) // 2] * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes-mib", type=float, nargs="+", default=[4.5, 18, 36, 72, 144])
    ap.add_argument("--extras", type=int, nargs="+", default=[0, 16, 32, 128, 512, 4096, 12288, 65536])
    args = ap.parse_args()
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29536")
    dist.init_process_group("nccl", rank=0, world_size=1, device_id=torch.device("cuda:0"))
    props = torch.cuda.get_device_properties(0)
    print(f"{props.name}, torch {torch.__version__}, CUDA {torch.version.cuda}, NCCL {torch.cuda.nccl.version()}")
    print("| MiB | " + " | ".join(f"+{e} B copy / NCCL us" for e in args.extras) + " |")
    print("|---:|" + "---|" * len(args.extras))
    for mib in args.sizes_mib:
        cells = []
        for extra in args.extras:
            src = torch.randint(0, 255, (int(mib * 2**20) + extra,), dtype=torch.uint8, device="cuda")
            dst = torch.empty_like(src)
            copy = graph_us(lambda: dst.copy_(src))
            nccl = graph_us(lambda: dist.all_gather_into_tensor(dst, src))
            cells.append(f"{copy:.1f} / {nccl:.1f}")
            del src, dst
        print(f"| {mib:g} | " + " | ".join(cells) + " |", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
