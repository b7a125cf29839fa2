"""ColumnParallelLinear and RowParallelLinear (Megatron-core semantics) with NVFP4 or high precision.

Activations are [s, b, h] (sequence first) or [tokens, h]; with sequence parallelism they are
sharded along dim 0 outside the tensor-parallel region.

ColumnParallelLinear(in, out): weight shard [out/tp, in], bias shard [out/tp].
  input  [s, b, in] (SP: [s/tp, b, in], gathered inside; NVFP4 gathers the 4-bit form)
  output [s, b, out/tp] (gather_output: [s, b, out])
RowParallelLinear(in, out): weight shard [out, in/tp], bias [out] (added after the reduction).
  input  [s, b, in/tp] (input_is_parallel) or [s, b, in] (split inside)
  output [s, b, out] all-reduced, or with SP [s/tp, b, out] reduce-scattered
"""

from __future__ import annotations

import zlib

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from fp4dist.parallel import agree, comm
from fp4dist.parallel.nvfp4_function import NVFP4LinearConfig, nvfp4_linear
from fp4dist.recipe import HighPrecisionRecipe, NVFP4Recipe

MAX_MICROBATCHES = 1 << 16  #: SR offset = step * MAX_MICROBATCHES + microbatch


def _group_size_rank(group) -> tuple[int, int]:
    if not dist.is_available() or not dist.is_initialized():
        if group is not None:
            raise ValueError("a tp_group was given but torch.distributed is not initialized")
        return 1, 0
    return dist.get_world_size(group), dist.get_rank(group)


def full_weight_init(out_features: int, in_features: int, seed: int, std: float) -> torch.Tensor:
    """The full [out, in] fp32 weight, N(0, std^2) from ``seed``: the same for every TP size."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out_features, in_features, generator=g) * std


class _ParallelLinear(nn.Module):
    def __init__(self, in_features, out_features, sequence_parallel, recipe, tp_group):
        super().__init__()
        if not isinstance(recipe, (NVFP4Recipe, HighPrecisionRecipe)):
            raise TypeError(f"recipe must be NVFP4Recipe or HighPrecisionRecipe, got {type(recipe).__name__}")
        self.in_features, self.out_features = in_features, out_features
        self.tp_size, self.tp_rank = _group_size_rank(tp_group)
        if tp_group is None and self.tp_size > 1:
            tp_group = dist.group.WORLD  # None means the default group, as in torch.distributed; name it
        self.sequence_parallel, self.recipe, self.tp_group = sequence_parallel, recipe, tp_group
        # the SR offset of dY's quantization, read on the device (see set_rng_step); until set_rng_step is
        # called, each training forward advances it by one
        self.register_buffer("rng_offset", torch.zeros(1, dtype=torch.int64), persistent=False)
        self.rng_auto_advance = True
        self.set_rng_name("")

    def _mark_sharded(self, *params) -> None:
        """``param.tensor_parallel = True``: each rank holds a different shard (grad norms sum over ranks)."""
        for p in params:
            if p is not None:
                p.tensor_parallel = self.tp_size > 1

    @property
    def quantized(self) -> bool:
        return isinstance(self.recipe, NVFP4Recipe)

    def _check_divisible(self, what: str, value: int) -> None:
        if value % self.tp_size:
            raise ValueError(f"{type(self).__name__}: {what} = {value} is not divisible by the tensor-parallel "
                             f"size {self.tp_size}")

    def _check_nvfp4_weight(self, rows: int, cols: int) -> None:
        if self.quantized and (rows % 16 or cols % 16):
            raise ValueError(f"{type(self).__name__}: the NVFP4 recipe quantizes the weight shard [{rows}, {cols}] "
                             f"in 16x16 tiles / 1x16 blocks; both dims must be multiples of 16")

    def _check_input(self, x: torch.Tensor, expected_last: int) -> None:
        if x.shape[-1] != expected_last:
            raise ValueError(f"{type(self).__name__}: input last dim is {x.shape[-1]}, expected {expected_last}"
                             f" (in_features={self.in_features}, tp size {self.tp_size})")

    def _check_sequence(self, x: torch.Tensor, sharded_input: bool) -> None:
        if not self.quantized or not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)):
            return  # only the transposed (wgrad) layout needs 16-row blocks
        rows = x.numel() // x.shape[-1]
        if rows % 16:
            where = "per-rank sequence shard" if sharded_input and self.sequence_parallel else "input"
            raise ValueError(f"{type(self).__name__}: the {where} of shape {tuple(x.shape)} has {rows} rows "
                             f"(prod of leading dims); NVFP4 quantizes it in 16-row blocks for wgrad, so the "
                             f"sequence length must split into multiples of 16 rows per rank")

    _AGREED_FIELDS = ("layer", "in_features", "out_features", "tp size", "sequence_parallel", "recipe",
                      "input shape", "input dtype", "(grad enabled, input requires grad, weight requires grad)")

    def _agree(self, x: torch.Tensor, check) -> None:
        """Run the local input checks and agree on them and on the call's signature with the TP group (agree.py)."""
        if torch.compiler.is_compiling():
            check()  # a compiled forward checks locally, at trace time
            return
        if not hasattr(self, "_agreement"):
            self._agreement = agree.AgreementCache()
        signature = (type(self).__name__, self.in_features, self.out_features, self.tp_size, self.sequence_parallel,
                     repr(self.recipe), *agree.tensor_signature(x),
                     (torch.is_grad_enabled(), x.requires_grad, self.weight.requires_grad))
        what = f"{type(self).__name__} {self.rng_name!r}" if self.rng_name else type(self).__name__
        agree.agree(self._agreement, what, self._AGREED_FIELDS, signature, check, self.tp_group)

    def set_rng_name(self, name: str) -> None:
        """Give the layer its stable identity (its fully-qualified name in the model): its SR seed is a hash
        of the recipe seed, this name and the TP rank, so the same model draws the same numbers whatever
        else the process built."""
        self.rng_name = name
        self._nvfp4_configs = {}
        if self.quantized:  # built here, not while torch.compile traces the forward
            r, stream = self.recipe, zlib.crc32(f"{name}/tp{self.tp_rank}".encode())
            for sp in (False, True):
                sp_group = self.tp_group if sp else None
                self._nvfp4_configs[sp] = NVFP4LinearConfig(r.input_quantizer(amax_group=sp_group),
                                                            r.weight_quantizer(), r.grad_quantizer(stream),
                                                            sp_group=sp_group)

    def _config(self, sp: bool) -> NVFP4LinearConfig:
        return self._nvfp4_configs[sp]

    def _matmul(self, x: torch.Tensor, sp: bool = False) -> torch.Tensor:
        if not self.quantized:
            return F.linear(x, self.weight.to(x.dtype))
        if self.rng_auto_advance and self.training and torch.is_grad_enabled():
            self.rng_offset.add_(1)
        return nvfp4_linear(x, self.weight, self.rng_offset, self._config(sp))

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
        self._check_nvfp4_weight(shard, in_features)
        full = full_weight_init(out_features, in_features, init_seed, init_std)
        self.weight = nn.Parameter(full[self.tp_rank * shard:(self.tp_rank + 1) * shard].clone())
        self.bias = nn.Parameter(torch.zeros(shard)) if bias else None
        self._mark_sharded(self.weight, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._agree(x, lambda: (self._check_input(x, self.in_features), self._check_sequence(x, sharded_input=True)))
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
        self._check_nvfp4_weight(out_features, shard)
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
        self._agree(x, lambda: (self._check_input(x, width), self._check_sequence(x, sharded_input=False),
                                self._check_sequence_split(x)))
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


def set_rng_step(module: nn.Module, step: int, microbatch: int = 0) -> None:
    """Make every NVFP4 layer in ``module`` draw its SR numbers for (``step``, ``microbatch``).

    The offset ``step * 2^16 + microbatch`` goes into each layer's device buffer (no host sync; a compiled
    or CUDA-graph-captured step reads it there), and the layers stop advancing it themselves. A training
    loop calls this each step (and microbatch) so that the draws follow the step, not the process.
    """
    if not 0 <= microbatch < MAX_MICROBATCHES:
        raise ValueError(f"microbatch must be in [0, {MAX_MICROBATCHES}), got {microbatch}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    layers = [m for m in module.modules() if isinstance(m, _ParallelLinear)]
    if not layers:
        return
    first, rest = layers[0].rng_offset, [m.rng_offset for m in layers[1:]]
    first.fill_(step * MAX_MICROBATCHES + microbatch)
    if rest:  # one launch for all the others, not one per layer
        torch._foreach_copy_(rest, [first] * len(rest))
    for m in layers:
        m.rng_auto_advance = False


def name_rng_streams(model: nn.Module, prefix: str = "") -> nn.Module:
    """Name every NVFP4 layer of ``model`` by its fully-qualified name (see ``set_rng_name``); returns model."""
    for name, m in model.named_modules(prefix=prefix):
        if isinstance(m, _ParallelLinear):
            m.set_rng_name(name)
    return model
