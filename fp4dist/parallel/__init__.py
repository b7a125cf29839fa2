"""Tensor-parallel NVFP4: DTensor styles for ``parallelize_module`` and Megatron-style layers."""

from fp4dist.parallel.grads import allreduce_sequence_parallel_grads, clip_grad_norm_
from fp4dist.parallel.linear import ColumnParallelLinear, RowParallelLinear
from fp4dist.parallel.nvfp4_module import name_rng_streams, set_rng_step

_STYLES = ("NVFP4ColwiseParallel", "NVFP4RowwiseParallel", "NVFP4PrepareModuleInput")
__all__ = ["ColumnParallelLinear", "RowParallelLinear", *_STYLES, "allreduce_sequence_parallel_grads",
           "clip_grad_norm_", "name_rng_streams", "set_rng_step"]


def __getattr__(name):
    # the styles build on fp4dist.nn, which builds on this package: imported on first use
    if name in _STYLES:
        from fp4dist.parallel import styles
        return getattr(styles, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
