"""Whole-step CUDA graph capture: a training step recorded once and replayed, so the host launches one
graph instead of thousands of kernels.

The step must be free of host syncs (no ``.item()``, no data-dependent Python control flow), read its
inputs from the tensors it was captured with, and keep any per-step scalar it needs in device memory
(fp4dist's SR offset lives in each NVFP4 layer's ``rng_offset`` buffer, written by ``set_rng_step`` before
each replay). An optimizer inside the step must be built with ``capturable=True``.
"""

from __future__ import annotations

from typing import Callable

import torch


class CapturedStep:
    """``step = CapturedStep(fn, x, y)``; then ``step(x_i, y_i)`` copies into the captured inputs, replays
    the graph and returns ``fn``'s outputs (the same tensors every time: read or clone them before the next
    call).

    ``fn(*inputs)`` returns a tensor or a tuple of tensors. It runs ``warmup`` times on a side stream first
    (as CUDA graph capture of autograd and of optimizers needs), with ``zero_grad()`` before each run when
    ``optimizer`` is given, then once under capture with its grads set to None so that the graph owns them.
    """

    def __init__(self, fn: Callable, *example_inputs: torch.Tensor, optimizer: torch.optim.Optimizer | None = None,
                 warmup: int = 3):
        if not torch.cuda.is_available() or any(not t.is_cuda for t in example_inputs):
            raise ValueError("CapturedStep needs CUDA tensors (CUDA graphs exist on GPUs only)")
        self.inputs = tuple(t.clone() for t in example_inputs)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                if optimizer is not None:
                    optimizer.zero_grad(set_to_none=True)
                fn(*self.inputs)
        torch.cuda.current_stream().wait_stream(side)
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = fn(*self.inputs)

    def __call__(self, *inputs: torch.Tensor):
        for static, new in zip(self.inputs, inputs):
            static.copy_(new, non_blocking=True)
        self.graph.replay()
        return self.outputs
