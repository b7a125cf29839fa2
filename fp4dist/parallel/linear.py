"""ColumnParallelLinear and RowParallelLinear (Megatron-core semantics) with NVFP4 or high precision.

Activations are [s, b, h] (sequence first) or [tokens, h]; with sequence parallelism they are
sharded along dim 0 outside the tensor-parallel region.

ColumnParallelLinear(in, out): weight shard [out/tp, in], bias shard [out/tp].
  input  [s, b, in] (SP: [s/tp, b, in], gathered inside; NVFP4 gathers the 4-bit form)
  output [s, b, out/tp] (gather_output: [s, b, out])
RowParallelLinear(in, out): weight shard [out, in/tp], bias [out] (added after the reduction).
  input  [s, b, in/tp] (input_is_parallel) or [s, b, in] (split inside)
  output [s, b, out] all-reduced, or with SP [s/tp, b, out] reduce-scattered

``tp_group=None`` means no tensor parallelism (each rank holds the whole layer), whatever the world.
Any in/out features and any number of rows work (NVFP4 pads to its 16-element blocks inside).
The SR stream, recipe configs and naming are :class:`fp4dist.parallel.nvfp4_module.NVFP4ModuleMixin`'s.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from fp4dist.parallel import agree, comm
from fp4dist.parallel.nvfp4_module import MAX_MICROBATCHES, NVFP4ModuleMixin, name_rng_streams, set_rng_step
from fp4dist.recipe import HighPrecisionRecipe

__all__ = ["ColumnParallelLinear", "RowParallelLinear", "MAX_MICROBATCHES", "name_rng_streams", "set_rng_step"]


def _group_size_rank(group) -> tuple[int, int]:
    """(size, rank) of ``group``; None means no tensor parallelism (1, 0), whatever the world."""
    if group is None:
        return 1, 0
    if not dist.is_available() or not dist.is_initialized():
        raise ValueError("a tp_group was given but torch.distributed is not initialized")
    return dist.get_world_size(group), dist.get_rank(group)


def full_weight_init(out_features: int, in_features: int, seed: int, std: float) -> torch.Tensor:
    """The full [out, in] fp32 weight, N(0, std^2) from ``seed``: the same for every TP size."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out_features, in_features, generator=g) * std


class _ParallelLinear(NVFP4ModuleMixin, nn.Module):
    def __init__(self, in_features, out_features, sequence_parallel, recipe, tp_group):
        nn.Module.__init__(self)
        self.in_features, self.out_features = in_features, out_features
        self.tp_size, self.tp_rank = _group_size_rank(tp_group)
        self.sequence_parallel, self.tp_group = sequence_parallel, tp_group
        self._init_nvfp4(recipe, tp_group, self.tp_rank)

    def _mark_sharded(self, *params) -> None:
        """``param.tensor_parallel = True``: each rank holds a different shard (grad norms sum over ranks)."""
        for p in params:
            if p is not None:
                p.tensor_parallel = self.tp_size > 1

    def _check_divisible(self, what: str, value: int) -> None:
        if value % self.tp_size:
            raise ValueError(f"{type(self).__name__}: {what} = {value} is not divisible by the tensor-parallel "
                             f"size {self.tp_size}")

    def _check_input(self, x: torch.Tensor, expected_last: int) -> None:
        if x.shape[-1] != expected_last:
            raise ValueError(f"{type(self).__name__}: input last dim is {x.shape[-1]}, expected {expected_last}"
                             f" (in_features={self.in_features}, tp size {self.tp_size})")

    _AGREED_FIELDS = ("layer", "in_features", "out_features", "tp size", "sequence_parallel", "recipe",
                      "input shape", "input dtype", "(grad enabled, input requires grad, weight requires grad)")

    def _agree(self, x: torch.Tensor, check) -> None:
        """Run the local input checks and agree on them and on the call's signature with the TP group (agree.py);
        without tensor parallelism the checks are local."""
        if torch.compiler.is_compiling() or self.tp_group is None:
            check()  # a compiled forward checks locally, at trace time
            return
        if not hasattr(self, "_agreement"):
            self._agreement = agree.AgreementCache()
        signature = (type(self).__name__, self.in_features, self.out_features, self.tp_size, self.sequence_parallel,
                     repr(self.recipe), *agree.tensor_signature(x),
                     (torch.is_grad_enabled(), x.requires_grad, self.weight.requires_grad))
        what = f"{type(self).__name__} {self.rng_name!r}" if self.rng_name else type(self).__name__
        agree.agree(self._agreement, what, self._AGREED_FIELDS, signature, check, self.tp_group)

    def _matmul(self, x: torch.Tensor, sp: bool = False) -> torch.Tensor:
        return self._nvfp4_matmul(x, self.weight, sp)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, tp={self.tp_size}, "
                f"sequence_parallel={self.sequence_parallel}, recipe={self.recipe}")


class ColumnParallelLinear(_ParallelLinear):
    """Y = X W^T + b with W split along its output rows: this rank holds W[out/tp * r : out/tp * (r+1)]."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, gather_output: bool = False,
                 sequence_parallel: bool = False, recipe=HighPrecisionRecipe(), tp_group=None,
                 init_seed: int = 0, init_std: float = 0.02):
        super().__init__(in_features, out_features, sequence_parallel, recipe, tp_group)
        self._check_divisible("out_features", out_features)
        if sequence_parallel and gather_output:
            raise ValueError("ColumnParallelLinear: gather_output=True cannot be combined with sequence_parallel")
        self.gather_output = gather_output
        shard = out_features // self.tp_size
        full = full_weight_init(out_features, in_features, init_seed, init_std)
        self.weight = nn.Parameter(full[self.tp_rank * shard:(self.tp_rank + 1) * shard].clone())
        self.bias = nn.Parameter(torch.zeros(shard)) if bias else None
        self._mark_sharded(self.weight, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._agree(x, lambda: self._check_input(x, self.in_features))
        sp = self.sequence_parallel and self.tp_size > 1
        if self.quantized and sp:
            y = self._matmul(x, sp=True)  # NVFP4 gather inside
        else:
            x = comm.gather_seq_from_sp(x, self.tp_group) if sp else comm.copy_to_tp(x, self.tp_group)
            y = self._matmul(x)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return comm.gather_last_dim_from_tp(y, self.tp_group) if self.gather_output else y


class RowParallelLinear(_ParallelLinear):
    """Y = X W^T + b with W split along its input columns: this rank holds W[:, in/tp * r : in/tp * (r+1)]."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, input_is_parallel: bool = True,
                 sequence_parallel: bool = False, recipe=HighPrecisionRecipe(), tp_group=None,
                 init_seed: int = 0, init_std: float = 0.02):
        super().__init__(in_features, out_features, sequence_parallel, recipe, tp_group)
        self._check_divisible("in_features", in_features)
        if sequence_parallel and not input_is_parallel:
            raise ValueError("RowParallelLinear: sequence_parallel=True needs input_is_parallel=True")
        self.input_is_parallel = input_is_parallel
        shard = in_features // self.tp_size
        full = full_weight_init(out_features, in_features, init_seed, init_std)
        self.weight = nn.Parameter(full[:, self.tp_rank * shard:(self.tp_rank + 1) * shard].clone())
        self._mark_sharded(self.weight)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        if self.bias is not None and sequence_parallel:
            # replicated, but each rank's grad covers only its sequence shard: see allreduce_sequence_parallel_grads
            self.bias.sequence_parallel = True

    def _check_sequence_split(self, x: torch.Tensor) -> None:
        if self.sequence_parallel and self.tp_size > 1 and x.shape[0] % self.tp_size:
            raise ValueError(f"RowParallelLinear: sequence length {x.shape[0]} (dim 0) is not divisible by the "
                             f"tensor-parallel size {self.tp_size} for the sequence-parallel reduce-scatter")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        width = self.in_features // self.tp_size if self.input_is_parallel else self.in_features
        self._agree(x, lambda: (self._check_input(x, width), self._check_sequence_split(x)))
        if not self.input_is_parallel:
            x = comm.scatter_last_dim_to_tp(x, self.tp_group)
        y = self._matmul(x)
        if self.sequence_parallel and self.tp_size > 1:
            y = comm.reduce_scatter_seq_to_sp(y, self.tp_group)
        else:
            y = comm.reduce_from_tp(y, self.tp_group)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y
