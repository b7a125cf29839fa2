"""NVFP4 tensor-parallel styles for ``torch.distributed.tensor.parallel.parallelize_module``.

``NVFP4ColwiseParallel``, ``NVFP4RowwiseParallel`` and ``NVFP4PrepareModuleInput`` take the arguments of
torch's ``ColwiseParallel``, ``RowwiseParallel`` and ``PrepareModuleInput`` plus ``recipe``, and apply to
an ``nn.Linear`` (turned into an :class:`fp4dist.NVFP4Linear` in place, keeping its Parameters) or an
``NVFP4Linear`` (keeping its recipe and SR name unless ``recipe`` is given). The parameters become
DTensors sharded as torch shards them: colwise weight and bias ``Shard(0)``; rowwise weight ``Shard(1)``,
bias ``Replicate()``; so ``fully_shard`` on a (dp, tp) mesh composes and DCP sees the placements. Inputs
are annotated and outputs redistributed as torch's styles do; the GEMMs run ``nvfp4_linear`` on the local
shards (activations [..., h]; the sequence dim ``d`` is 0 for [s, b, h] or 1 for batch-first [b, s, h]):

colwise, input Replicate:  Y_r = X W_r^T (+ b_r), output Shard(-1); dX all-reduced over the TP group.
colwise, input Shard(d):   sequence parallelism: X's shard is quantized with the group amax and gathered
                           in NVFP4 along d inside the linear (one collective, overlapped with W's
                           quantization); dX is reduce-scattered back along d.
colwise, a carrier input:  X was gathered once by ``NVFP4PrepareModuleInput`` (below) for several
                           projections; the linear multiplies the recorded NVFP4 operand.
rowwise:                   Z_r = X_r W_r^T, then all-reduced (output Replicate) or reduce-scattered along
                           d (output Shard(d)); the bias is added to the result as a DTensor.

``NVFP4PrepareModuleInput``: an input (positional or keyword) whose layout goes from ``Shard(d)`` to
``Replicate()`` is gathered in NVFP4 (:func:`fp4dist.parallel.sequence.gather_sequence`) instead of in
high precision: the module (an attention) receives the carrier, a plain tensor of the gathered shape,
and its NVFP4 colwise projections (q, k, v) share that one gather and one reduce-scatter of their summed
dX. Other inputs are handled as torch's ``PrepareModuleInput`` handles them.

Batch-first sequence parallelism computes in the sequence-first order internally (X moved to [s, b, h]
before quantization, the output moved back, contiguous): the bits are those of the same layer on the
transposed activations, as the Megatron-style layers compute them. The TP rank enters each layer's SR
seed with its name (``set_rng_name``, given by ``convert_to_nvfp4`` or the first ``set_rng_step``).
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_module
from torch.distributed.tensor.parallel import ColwiseParallel, PrepareModuleInput, RowwiseParallel

from fp4dist.nn import NVFP4Linear, _local
from fp4dist.parallel import comm
from fp4dist.parallel.sequence import gathered_record, gather_sequence
from fp4dist.recipe import NVFP4Recipe

__all__ = ["NVFP4ColwiseParallel", "NVFP4RowwiseParallel", "NVFP4PrepareModuleInput"]


def _as_nvfp4_linear(module: nn.Module, recipe, style: str, mesh) -> NVFP4Linear:
    if mesh.ndim != 1:
        raise ValueError(f"{style} takes a 1-D (tensor-parallel) mesh, got a {mesh.ndim}-D one")
    if isinstance(module, NVFP4Linear):
        if recipe is not None:
            module.recipe = recipe
        return module
    if type(module) is nn.Linear:
        return NVFP4Linear.from_linear(module, recipe or NVFP4Recipe())
    raise NotImplementedError(f"{style} applies to nn.Linear or fp4dist.NVFP4Linear, got {type(module).__name__}")


def _attach(module: NVFP4Linear, mesh, tp_forward) -> None:
    """After ``distribute_module``: the TP group and rank, the forward, and a plain ``rng_offset`` buffer
    (distribute_module makes every remaining buffer a replicated DTensor; the SR offset stays local)."""
    offset = module.rng_offset
    module._buffers["rng_offset"] = offset.to_local() if isinstance(offset, DTensor) else offset
    module.set_tensor_parallel(mesh.get_group(), mesh.get_local_rank())
    module.tp_forward = tp_forward


def _annotate(input_layouts, module, inputs, device_mesh):
    """A plain tensor input becomes a DTensor of ``input_layouts``; DTensors and carriers pass as they are."""
    x = inputs[0]
    if isinstance(x, DTensor) or gathered_record(x) is not None:
        return inputs
    return (DTensor.from_local(x, device_mesh, input_layouts, run_check=False), *inputs[1:])


def _seq_dim(placement, ndim: int):
    """d for a Shard(d) placement of a non-hidden dim, else None."""
    if isinstance(placement, Shard):
        d = placement.dim % ndim
        return d if d < ndim - 1 else None
    return None


def _to_dim0(t: torch.Tensor, d: int) -> torch.Tensor:
    return t if d == 0 else t.movedim(d, 0)


def _from_dim0(t: torch.Tensor, d: int) -> torch.Tensor:
    return t if d == 0 else t.movedim(0, d).contiguous()


def _check_input(module: NVFP4Linear, x, expected: int, style: str) -> None:
    if x.shape[-1] != expected:
        raise ValueError(f"{style}: input last dim is {x.shape[-1]}, expected {expected} (in_features="
                         f"{module.in_features}, tp size {comm.group_size(module.sr_group)})")


class _ColwiseForward:
    """``NVFP4Linear.tp_forward`` of a colwise-sharded layer (module docstring)."""

    def __init__(self, mesh):
        self.mesh = mesh

    def __call__(self, module: NVFP4Linear, x) -> DTensor:
        group, weight = module.sr_group, _local(module.weight)
        record = gathered_record(x)
        if record is not None:  # a carrier: X was gathered once for several projections
            if record.group is not group:
                raise ValueError("NVFP4ColwiseParallel: the input was gathered over another group than this "
                                 "layer's tensor-parallel group")
            local = x.to_local() if isinstance(x, DTensor) else x
            _check_input(module, local, module.in_features, "NVFP4ColwiseParallel")
            d = record.seq_dim
            y = _from_dim0(module._nvfp4_matmul(_to_dim0(local, d), weight, gathered=record), d)
        else:
            _check_input(module, x, module.in_features, "NVFP4ColwiseParallel")
            d = _seq_dim(x.placements[0], x.ndim)
            if d is None and not isinstance(x.placements[0], Replicate):
                x = x.redistribute(placements=[Replicate()])
            local = x.to_local()
            if d is None:
                y = module._nvfp4_matmul(comm.copy_to_tp(local, group), weight)
            elif module.quantized:  # sequence parallelism: the NVFP4 gather inside the linear
                y = _from_dim0(module._nvfp4_matmul(_to_dim0(local, d), weight, sp=True), d)
            else:
                y = _from_dim0(module._nvfp4_matmul(comm.gather_seq_from_sp(_to_dim0(local, d), group), weight), d)
        if module.bias is not None:
            y = y + _local(module.bias).to(y.dtype)
        return DTensor.from_local(y, self.mesh, [Shard(y.dim() - 1)], run_check=False)


class _RowwiseForward:
    """``NVFP4Linear.tp_forward`` of a rowwise-sharded layer (module docstring)."""

    def __init__(self, mesh, output_layout):
        self.mesh, self.output_layout = mesh, output_layout

    def __call__(self, module: NVFP4Linear, x) -> DTensor:
        group, weight = module.sr_group, _local(module.weight)
        if gathered_record(x) is not None:
            raise ValueError("NVFP4RowwiseParallel: got the carrier of an NVFP4-gathered input; a rowwise layer "
                             "takes its input sharded along the hidden dim")
        placement = x.placements[0]
        hidden = isinstance(placement, Shard) and placement.dim % x.ndim == x.ndim - 1
        if not hidden and not isinstance(placement, Replicate):
            x = x.redistribute(placements=[Shard(x.ndim - 1)])
            hidden = True
        local = x.to_local() if hidden else comm.scatter_last_dim_to_tp(x.to_local(), group)
        tp = comm.group_size(group)
        _check_input(module, local, module.in_features // tp, "NVFP4RowwiseParallel")
        out = self.output_layout
        d = _seq_dim(out, local.dim())
        if d is not None:  # sequence parallelism: computed sequence first, reduce-scattered along d
            def check():
                if local.shape[d] % tp:
                    raise ValueError(f"NVFP4RowwiseParallel: the sequence dim {d} has size {local.shape[d]}, not "
                                     f"divisible by the tensor-parallel size {tp} for the reduce-scatter")

            # agreed before any rank computes: a rank alone with a bad length must not leave the others waiting
            comm.agree_on_shape("NVFP4RowwiseParallel's input (every rank's must have the same shape)", local,
                                group, check)
            z = module._nvfp4_matmul(_to_dim0(local, d), weight)
            y = _from_dim0(comm.reduce_scatter_seq_to_sp(z, group), d)
        else:
            z = module._nvfp4_matmul(local, weight)
            if isinstance(out, Partial):
                y = z
            else:
                y, out = comm.reduce_from_tp(z, group), Replicate()
        y = DTensor.from_local(y, self.mesh, [out], run_check=False)
        return y if module.bias is None else y + module.bias.to(y.dtype)


class NVFP4ColwiseParallel(ColwiseParallel):
    """torch's ``ColwiseParallel`` (same arguments) running the NVFP4 recipe; ``recipe`` (default
    ``NVFP4Recipe()`` for an ``nn.Linear``, the layer's own for an ``NVFP4Linear``). Module docstring."""

    def __init__(self, *, input_layouts=None, output_layouts=None, use_local_output: bool = True, recipe=None):
        super().__init__(input_layouts=input_layouts, output_layouts=output_layouts, use_local_output=use_local_output)
        self.recipe = recipe

    def _apply(self, module: nn.Module, device_mesh) -> nn.Module:
        module = _as_nvfp4_linear(module, self.recipe, type(self).__name__, device_mesh)
        distribute_module(module, device_mesh, self._partition_linear_fn, partial(_annotate, self.input_layouts),
                          partial(self._prepare_output_fn, self.output_layouts, self.use_local_output))
        _attach(module, device_mesh, _ColwiseForward(device_mesh))
        return module


class NVFP4RowwiseParallel(RowwiseParallel):
    """torch's ``RowwiseParallel`` (same arguments) running the NVFP4 recipe; ``recipe`` as for
    :class:`NVFP4ColwiseParallel`. ``output_layouts``: Replicate (default), Shard(d) (sequence
    parallelism) or Partial. Module docstring."""

    def __init__(self, *, input_layouts=None, output_layouts=None, use_local_output: bool = True, recipe=None):
        super().__init__(input_layouts=input_layouts, output_layouts=output_layouts, use_local_output=use_local_output)
        self.recipe = recipe
        if not isinstance(self.output_layouts[0], (Replicate, Shard, Partial)):
            raise ValueError(f"NVFP4RowwiseParallel: output_layouts must be Replicate, Shard or Partial, got "
                             f"{self.output_layouts[0]}")

    def _apply(self, module: nn.Module, device_mesh) -> nn.Module:
        module = _as_nvfp4_linear(module, self.recipe, type(self).__name__, device_mesh)
        distribute_module(module, device_mesh, self._partition_linear_fn, partial(_annotate, self.input_layouts),
                          partial(self._prepare_output_fn, self.output_layouts, self.use_local_output))
        _attach(module, device_mesh, _RowwiseForward(device_mesh, self.output_layouts[0]))
        return module


class NVFP4PrepareModuleInput(PrepareModuleInput):
    """torch's ``PrepareModuleInput`` (same arguments) whose ``Shard(d) -> Replicate()`` inputs are gathered in
    NVFP4 once for the module's NVFP4 projections (module docstring); ``recipe``: the input quantizer's recipe
    (that of the projections; default ``NVFP4Recipe()``). The carrier is handed over as a plain tensor."""

    def __init__(self, *, input_layouts=None, desired_input_layouts=None, input_kwarg_layouts=None,
                 desired_input_kwarg_layouts=None, use_local_output: bool = False, recipe=None):
        super().__init__(input_layouts=input_layouts, desired_input_layouts=desired_input_layouts,
                         input_kwarg_layouts=input_kwarg_layouts, desired_input_kwarg_layouts=desired_input_kwarg_layouts,
                         use_local_output=use_local_output)
        self.recipe = recipe or NVFP4Recipe()

    def _apply(self, module: nn.Module, device_mesh) -> nn.Module:
        if device_mesh.ndim != 1:
            raise ValueError(f"NVFP4PrepareModuleInput takes a 1-D (tensor-parallel) mesh, got a {device_mesh.ndim}-D one")
        self._quantizer = self.recipe.input_quantizer(amax_group=device_mesh.get_group())
        return super()._apply(module, device_mesh)

    def _prepare_input_arg(self, input, mesh, input_layout, desired_layout):
        if input_layout is None or not isinstance(desired_layout, Replicate) or not isinstance(input, torch.Tensor):
            return super()._prepare_input_arg(input, mesh, input_layout, desired_layout)
        placement = input.placements[0] if isinstance(input, DTensor) else input_layout
        local = input.to_local() if isinstance(input, DTensor) else input
        d = _seq_dim(placement, local.dim())
        if d is None:
            return super()._prepare_input_arg(input, mesh, input_layout, desired_layout)
        # the transposed layout (wgrad) whenever a backward may run: the projections' weights need it
        return gather_sequence(local, d, self._quantizer, mesh.get_group(), columnwise=torch.is_grad_enabled())
