"""Tensor-parallel layers with the NVFP4 recipe and sequence parallelism."""

from fp4dist.parallel.linear import (ColumnParallelLinear, RowParallelLinear, allreduce_sequence_parallel_grads,
                                     set_rng_step)

__all__ = ["ColumnParallelLinear", "RowParallelLinear", "allreduce_sequence_parallel_grads", "set_rng_step"]
