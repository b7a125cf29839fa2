"""NVFP4 health: how well each NVFP4 layer's operands fit the format, measured on chosen steps.

For one operand x, viewed as [m, n], quantized rowwise by the recipe's quantizer for it (1x16
blocks along n; 16x16 tiles for a ``block_2d`` weight), with S_enc = 2688 / amax:

=========  ===================================================================================
amax       the global amax the quantization used: max|x| over the whole operand
saturated  fraction of the blocks whose E4M3 scale is 448, the top of E4M3 (a block whose max is
           within ~4% of amax: its scale rounds to 448)
underflow  fraction of the blocks whose E4M3 scale is 0 although the block holds a non-zero value
           (every element of such a block decodes to 0)
zeroed     fraction of the non-zero elements that decode to 0 (E2M1 code +-0, or a zero block scale)
rel_err    ||x - dequant(quant(x))||_2 / ||x||_2, in fp32 (0 where x is all zeros)
=========  ===================================================================================

Operands of a layer Y = X W^T: ``X`` (the layer input), ``W`` (its weight shard) and ``dY`` (the
gradient of its output). :class:`HealthMonitor` captures them with module hooks (a forward
pre-hook for X and W, a full backward hook for dY) on the NVFP4 layers (the Megatron-style layers and
``NVFP4Linear``, e.g. from ``convert_to_nvfp4``), only inside
:meth:`HealthMonitor.capture`, so that the other steps run without hooks. Tensor-parallel ranks
each measure their piece and :meth:`HealthMonitor.collect` sums the counts over the TP group, so
the numbers describe the whole operand; a sequence-sharded X (column-parallel layer) and dY
(row-parallel layer under sequence parallelism) are quantized with the group's amax, as the
layers quantize them. The stats are of the rowwise layout (the fprop and dgrad operand); the
RHT'd columnwise copies that wgrad reads are not measured, and stochastic rounding of dY draws
its own numbers (the statistics, not the bits, match the training step's). Operands whose dims are not
multiples of 16 are measured zero-padded, as the layer quantizes them (the padding's all-zero blocks count
as blocks). An ``NVFP4Linear`` sharded by the DTensor TP styles is refused (:class:`HealthMonitor`).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from functools import partial

import torch
import torch.distributed as dist
from torch import nn

from fp4dist.format import BLOCK_SIZE, E4M3_MAX
from fp4dist.nn import NVFP4Linear
from fp4dist.parallel.linear import RowParallelLinear, _ParallelLinear
from fp4dist.quantizer import NVFP4Quantizer, pad_matrix
from fp4dist.tensor import NVFP4Tensor

OPERANDS = ("X", "W", "dY")
STATS = ("amax", "saturated", "underflow", "zeroed", "rel_err")
#: the columns of a count vector (float64 [8]); summed over ranks except ``amax`` (max)
COUNTS = ("blocks", "saturated", "underflow", "nonzero", "zeroed", "err_sq", "ref_sq", "amax")


def operand_counts(x: torch.Tensor, t: NVFP4Tensor) -> torch.Tensor:
    """float64 [8] (the :data:`COUNTS`) of ``t``, the rowwise quantization of ``x``, on x's device.

    Blocks are counted per 1x16 row block; a 16x16 tile counts once for each of its 16 rows, which
    leaves every fraction the tile's.
    """
    x2d = x.detach().reshape(-1, x.shape[-1]).float()
    m, n = x2d.shape
    scale = t.rowwise_scale_inv.float()  # [m, n/16]
    block_nonzero = x2d.reshape(m, n // BLOCK_SIZE, BLOCK_SIZE).ne(0).any(-1)
    if t.block_2d:
        tiles = block_nonzero.reshape(m // BLOCK_SIZE, BLOCK_SIZE, -1).any(1)
        block_nonzero = tiles.repeat_interleave(BLOCK_SIZE, dim=0)
    x_hat = t.decode_layout(columnwise=False, dtype=torch.float32)
    nonzero = x2d.ne(0)
    f64 = torch.float64
    return torch.stack([
        torch.full((), scale.numel(), dtype=f64, device=x2d.device),
        scale.eq(E4M3_MAX).sum().to(f64),
        (scale.eq(0) & block_nonzero).sum().to(f64),
        nonzero.sum().to(f64),
        (nonzero & x_hat.eq(0)).sum().to(f64),
        (x2d - x_hat).double().pow(2).sum(),
        x2d.double().pow(2).sum(),
        t.amax_rowwise.to(f64),
    ])


def stats_from_counts(counts: list[float]) -> dict[str, float]:
    """The :data:`STATS` from a count vector (NaN where the operand was not seen)."""
    c = dict(zip(COUNTS, counts))
    if not c["blocks"]:
        return {k: math.nan for k in STATS}
    return {"amax": c["amax"], "saturated": c["saturated"] / c["blocks"], "underflow": c["underflow"] / c["blocks"],
            "zeroed": c["zeroed"] / c["nonzero"] if c["nonzero"] else 0.0,
            "rel_err": math.sqrt(c["err_sq"] / c["ref_sq"]) if c["ref_sq"] else 0.0}


def rowwise_only(q: NVFP4Quantizer) -> NVFP4Quantizer:
    """``q`` producing its rowwise layout only (the health stats need nothing else)."""
    q.columnwise = False
    return q


def padded_operand(x: torch.Tensor, q: NVFP4Quantizer) -> torch.Tensor:
    """``x`` as [m, n] zero-padded as a layer pads it before quantizing: n to a multiple of 16, and m too for
    16x16 tiles (``q.block_2d``); ``x`` itself when aligned."""
    return pad_matrix(x.detach().reshape(-1, x.shape[-1]), rows=q.block_2d)


def quantize_rowwise(x: torch.Tensor, q: NVFP4Quantizer, amax_group=None) -> NVFP4Tensor:
    """``x`` quantized rowwise by ``q``, with the amax MAX-reduced over ``amax_group`` when given."""
    q = rowwise_only(q)
    amax = q.compute_amax(x)
    if amax_group is not None:
        dist.all_reduce(amax, op=dist.ReduceOp.MAX, group=amax_group)
    return q.quantize(x, amax=amax)


def operand_stats(x: torch.Tensor, q: NVFP4Quantizer) -> dict[str, float]:
    """The :data:`STATS` of one tensor quantized (rowwise) by ``q`` on this rank alone."""
    return stats_from_counts(operand_counts(x, quantize_rowwise(x, q)).tolist())


def _sharded_group(module, operand: str):
    """The TP group whose max is the amax of a sequence-sharded operand of ``module``, else None."""
    if not isinstance(module, _ParallelLinear) or module.tp_size == 1 or not module.sequence_parallel:
        return None
    row = isinstance(module, RowParallelLinear)
    return module.tp_group if (operand == "X" and not row) or (operand == "dY" and row) else None


def _is_measured(module: nn.Module) -> bool:
    """An NVFP4-quantized Megatron-style layer or NVFP4Linear; raises for an NVFP4Linear of the TP styles."""
    if isinstance(module, NVFP4Linear) and module.quantized and module.tp_forward is not None:
        raise NotImplementedError(
            "HealthMonitor measures the Megatron-style layers (any TP) and NVFP4Linear without tensor "
            "parallelism; this model has an NVFP4Linear sharded by the NVFP4 TP styles, whose operands are "
            "DTensors it does not measure")
    return isinstance(module, (_ParallelLinear, NVFP4Linear)) and module.quantized


def _full(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor; a DTensor (e.g. a weight still sharded by FSDP2) gathered whole (every rank calls it)."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


class HealthMonitor:
    """NVFP4 health stats of every NVFP4 layer of ``model``: Megatron-style (``_ParallelLinear``) or
    ``NVFP4Linear`` with an NVFP4 recipe.

    Use on every rank of the TP group, on the same steps::

        with monitor.capture():
            loss, grad_norm = train_step(x, y)       # hooks record X, W (forward), dY (backward)
        stats = monitor.collect()                    # collective over tp_group; host floats
        stats["blocks.0.attn.qkv"]["dY"]["zeroed"]
    """

    def __init__(self, model: nn.Module, tp_group=None):
        self.layers = {name: m for name, m in model.named_modules() if _is_measured(m)}
        self.tp_group = tp_group
        self._counts: dict[tuple[str, str], torch.Tensor] = {}

    @torch.no_grad()
    def _record(self, name: str, operand: str, x: torch.Tensor, q: NVFP4Quantizer, module) -> None:
        x = padded_operand(_full(x), q)
        t = quantize_rowwise(x, q, _sharded_group(module, operand))
        self._counts[(name, operand)] = operand_counts(x, t)

    def _forward_pre(self, name, module, args):
        self._record(name, "X", args[0], module.recipe.input_quantizer(), module)
        self._record(name, "W", module.weight, module.recipe.weight_quantizer(), module)

    def _backward(self, name, module, grad_input, grad_output):
        if grad_output[0] is not None:
            self._record(name, "dY", grad_output[0], module.recipe.grad_quantizer(0), module)

    @contextmanager
    def capture(self):
        """Hooks on the NVFP4 layers for the duration of the block (one training step)."""
        handles = []
        try:
            for name, m in self.layers.items():
                handles.append(m.register_forward_pre_hook(partial(self._forward_pre, name)))
                handles.append(m.register_full_backward_hook(partial(self._backward, name)))
            yield self
        finally:
            for h in handles:
                h.remove()

    def collect(self) -> dict[str, dict[str, dict[str, float]]]:
        """{layer: {operand: {stat: value}}} of the last capture (collective over the TP group)."""
        if not self.layers:
            return {}
        keys = [(name, op) for name in self.layers for op in OPERANDS]
        device = next(iter(self.layers.values())).weight.device
        table = torch.stack([self._counts.get(k, torch.zeros(len(COUNTS), dtype=torch.float64, device=device))
                             for k in keys])
        self._counts.clear()
        if self.tp_group is not None and dist.get_world_size(self.tp_group) > 1:
            sums, amax = table[:, :-1].contiguous(), table[:, -1].contiguous()
            dist.all_reduce(sums, group=self.tp_group)
            dist.all_reduce(amax, op=dist.ReduceOp.MAX, group=self.tp_group)
            table = torch.cat([sums, amax[:, None]], dim=1)
        out: dict[str, dict[str, dict[str, float]]] = {}
        for (name, op), row in zip(keys, table.tolist()):
            out.setdefault(name, {})[op] = stats_from_counts(row)
        return out


def flatten(stats: dict[str, dict[str, dict[str, float]]], prefix: str = "health") -> dict[str, float]:
    """``{"health/<layer>/<operand>/<stat>": value}``: the collected stats as TensorBoard tags."""
    return {f"{prefix}/{layer}/{op}/{k}": v for layer, ops in stats.items() for op, s in ops.items() for k, v in s.items()}
