"""Tensor-parallel layers with the NVFP4 recipe and sequence parallelism."""

from fp4dist.parallel.grads import allreduce_sequence_parallel_grads, clip_grad_norm_
from fp4dist.parallel.linear import ColumnParallelLinear, RowParallelLinear, name_rng_streams, set_rng_step

__all__ = ["ColumnParallelLinear", "RowParallelLinear", "allreduce_sequence_parallel_grads", "clip_grad_norm_",
           "name_rng_streams", "set_rng_step"]
