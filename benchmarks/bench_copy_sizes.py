"""How a device copy's speed depends on the granularity of its byte count: the reason gather buffers are padded
to a multiple of ``fp4dist.gather_buffer.SIZE_ALIGN``.

    python benchmarks/bench_copy_sizes.py [--sizes-mib 4.5 18 36 72 144] [--extras 0 16 512 4096 65536]

For each size (MiB) plus each extra byte count it times, as bench_gather.py's graph x16 mode (16 back-to-back
calls in one CUDA graph, replay time / 16, median of 20 replays), ``dst.copy_(src)`` of uint8 buffers and NCCL's
all-gather of the same buffers at world 1 (one process, one GPU; NCCL runs it as a local copy). Prints us for
both.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist

from bench_gather import GRAPH_REPEAT, capture, timed  # benchmarks/, on sys.path when run as a script
from fp4dist.collectives import all_gather_single


def graph_us(fn, device: torch.device, iters: int = 20) -> float:
    """us per call of fn, timed as bench_gather's graph x16 mode: 16 calls in one CUDA graph, replay time / 16."""
    graph, _ = capture(fn, device, count_kernels=False, repeat=GRAPH_REPEAT)
    seconds, _ = timed(graph.replay, device, iters)
    return seconds / GRAPH_REPEAT * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes-mib", type=float, nargs="+", default=[4.5, 18, 36, 72, 144])
    ap.add_argument("--extras", type=int, nargs="+", default=[0, 16, 32, 128, 512, 4096, 12288, 65536])
    args = ap.parse_args()
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29536")
    device = torch.device("cuda", 0)
    dist.init_process_group("nccl", rank=0, world_size=1, device_id=device)
    props = torch.cuda.get_device_properties(0)
    print(f"{props.name}, torch {torch.__version__}, CUDA {torch.version.cuda}, NCCL {torch.cuda.nccl.version()}")
    print("| MiB | " + " | ".join(f"+{e} B copy / NCCL us" for e in args.extras) + " |")
    print("|---:|" + "---|" * len(args.extras))
    for mib in args.sizes_mib:
        cells = []
        for extra in args.extras:
            src = torch.randint(0, 255, (int(mib * 2**20) + extra,), dtype=torch.uint8, device="cuda")
            dst = torch.empty_like(src)
            copy = graph_us(lambda: dst.copy_(src), device)
            nccl = graph_us(lambda: all_gather_single(dst, src), device)
            cells.append(f"{copy:.1f} / {nccl:.1f}")
            del src, dst
        print(f"| {mib:g} | " + " | ".join(cells) + " |", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
