"""The training state as DTensors on a (dp, tp) DeviceMesh: what torch.distributed.checkpoint saves and loads.

Launch places rank ``r`` at data-parallel index ``d = r // tp`` and tensor-parallel index ``t = r % tp``;
:func:`training_mesh` is the 2-D DeviceMesh ``arange(world).view(dp, tp)`` with dims ``("dp", "tp")`` over
launch's own process groups. Every parameter is ``Replicate()`` on ``dp``; on ``tp`` its placement follows
from the layer that holds it (:func:`tp_placements`):

    ColumnParallelLinear.weight  [out/tp, in]   Shard(0)   rows r*out/tp .. (r+1)*out/tp of the full weight
    ColumnParallelLinear.bias    [out/tp]       Shard(0)
    RowParallelLinear.weight     [out, in/tp]   Shard(1)   columns r*in/tp .. (r+1)*in/tp
    RowParallelLinear.bias       [out]          Replicate()
    everything else (embeddings, norms, head)   Replicate()

The full tensors are the same for every TP size, so a DTensor's global shape and offsets describe its shard
independently of the layout: DCP writes each shard once with its offsets and reads, for any other layout,
the pieces a rank's new shard needs. A parameter that already is a DTensor is kept as it is (its own mesh
and placements). Optimizer moments with a parameter's local shape take that parameter's placement; scalar
optimizer state (AdamW's ``step``) is the same on every rank and stays a plain tensor.

Without a mesh (one process) the state holds plain tensors, which are the full tensors: DCP loads a
sharded checkpoint into them and a later layout loads a checkpoint of them.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Placement, Replicate, Shard, distribute_tensor

from fp4dist.parallel import ColumnParallelLinear, RowParallelLinear

MESH_DIMS = ("dp", "tp")


def training_mesh(tp_group, dp_group, tp: int, dp: int, device_type: str) -> DeviceMesh | None:
    """The (dp, tp) DeviceMesh over launch's groups (rank = d * tp + t), or None for a single process."""
    if not (dist.is_available() and dist.is_initialized()) or tp * dp == 1:
        return None
    world = dist.get_world_size()
    if tp * dp != world:
        raise ValueError(f"tp {tp} x dp {dp} != world size {world}")
    if tp_group is None or dp_group is None:
        raise ValueError("training_mesh needs both groups (launch.train.tp_dp_groups makes them, size 1 included)")
    return DeviceMesh.from_group([dp_group, tp_group], device_type, mesh=torch.arange(world).view(dp, tp),
                                 mesh_dim_names=MESH_DIMS)


def tp_placements(model: nn.Module) -> dict[str, Placement]:
    """Each parameter's placement on the tensor-parallel dim, by its fully-qualified name."""
    out: dict[str, Placement] = {name: Replicate() for name, _ in model.named_parameters()}
    for prefix, module in model.named_modules():
        dot = f"{prefix}." if prefix else ""
        if isinstance(module, ColumnParallelLinear):
            out[f"{dot}weight"] = Shard(0)
            if module.bias is not None:
                out[f"{dot}bias"] = Shard(0)
        elif isinstance(module, RowParallelLinear):
            out[f"{dot}weight"] = Shard(1)
    return out


def _global_shape(local: torch.Tensor, placement: Placement, tp: int) -> torch.Size:
    shape = list(local.shape)
    if isinstance(placement, Shard):
        shape[placement.dim] *= tp
    return torch.Size(shape)


def _as_dtensor(local: torch.Tensor, placement: Placement, mesh: DeviceMesh | None):
    """``local`` (this rank's shard) as a DTensor on ``mesh``: Replicate on dp, ``placement`` on tp. The
    DTensor shares ``local``'s storage (loading into it writes the tensor in place)."""
    if mesh is None or isinstance(local, DTensor):
        return local
    shape = _global_shape(local, placement, mesh.size(1))
    stride = torch.empty(shape, device="meta").stride()
    return DTensor.from_local(local, mesh, [Replicate(), placement], run_check=False, shape=shape, stride=stride)


def _as_local(value):
    return value.to_local() if isinstance(value, DTensor) else value


_OPTIONS = StateDictOptions(strict=True)


def init_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Give an optimizer without state its state: one step with zero gradients and lr 0 (the parameters stay
    bit for bit as they were). ``get_state_dict`` / ``set_state_dict`` would do the same, but with a tensor lr
    they swap in a CPU zero, which a fused, capturable CUDA optimizer cannot take; here a zero lr lives where
    the lr lives."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if optimizer.state or any(p.grad is not None for p in params):
        return
    for p in params:
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    lrs = [g["lr"] for g in optimizer.param_groups]
    for g in optimizer.param_groups:
        g["lr"] = torch.zeros_like(g["lr"]) if isinstance(g["lr"], torch.Tensor) else 0.0
    optimizer.step()
    for g, lr in zip(optimizer.param_groups, lrs):
        g["lr"] = lr
    optimizer.zero_grad(set_to_none=True)


def model_and_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer,
                              mesh: DeviceMesh | None) -> dict:
    """``{"model": {fqn: tensor}, "optimizer": {"state": {fqn: {...}}, "param_groups": [...]}}``, tensors as
    DTensors of this layout (see the module docstring), sharing storage with the live parameters and
    optimizer state. An optimizer without state yet gets it first (``get_state_dict`` takes a step with
    zero gradients and lr 0, which leaves the parameters bit for bit as they were)."""
    init_optimizer_state(optimizer)
    model_sd, optim_sd = get_state_dict(model, optimizer, options=_OPTIONS)
    placements = tp_placements(model)
    model_sd = {fqn: _as_dtensor(t, placements.get(fqn, Replicate()), mesh) for fqn, t in model_sd.items()}
    state = {}
    for fqn, entries in optim_sd["state"].items():
        param_shape = model_sd[fqn].to_local().shape if isinstance(model_sd[fqn], DTensor) else model_sd[fqn].shape
        state[fqn] = {k: _as_dtensor(v, placements[fqn], mesh)
                      if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape == param_shape else v
                      for k, v in entries.items()}
    return {"model": model_sd, "optimizer": {"state": state, "param_groups": optim_sd["param_groups"]}}


def load_model_and_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, loaded: dict) -> None:
    """Put a state of :func:`model_and_optimizer_state`'s form, filled by ``dcp.load``, into the model and
    the optimizer (``set_state_dict`` on the local shards)."""
    model_sd = {fqn: _as_local(t) for fqn, t in loaded["model"].items()}
    optim = loaded["optimizer"]
    optim_sd = {"state": {fqn: {k: _as_local(v) for k, v in entries.items()} for fqn, entries in optim["state"].items()},
                "param_groups": optim["param_groups"]}
    init_optimizer_state(optimizer)
    set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd, options=_OPTIONS)


def full_model_shapes(model: nn.Module, mesh: DeviceMesh | None) -> dict[str, torch.Size]:
    """The full (TP=1) shape of every entry of ``model.state_dict()``."""
    placements, tp = tp_placements(model), mesh.size(1) if mesh is not None else 1
    return {fqn: t.shape if isinstance(t, DTensor) else _global_shape(t, placements.get(fqn, Replicate()), tp)
            for fqn, t in model.state_dict().items()}


def load_full_model_state(model: nn.Module, full: dict[str, torch.Tensor], mesh: DeviceMesh | None) -> None:
    """Copy a full (TP=1 names and shapes) state dict into ``model``: each rank takes its own shard of each
    full tensor, which every rank holds (``distribute_tensor(src_data_rank=None)``: no communication)."""
    placements = tp_placements(model)
    with torch.no_grad():
        for fqn, target in model.state_dict().items():
            source = full[fqn].to(device=target.device, dtype=target.dtype)
            if isinstance(target, DTensor):
                shard = distribute_tensor(source, target.device_mesh, target.placements, src_data_rank=None)
                target.to_local().copy_(shard.to_local())
            elif mesh is None:
                target.copy_(source)
            else:
                placement = [Replicate(), placements.get(fqn, Replicate())]
                target.copy_(distribute_tensor(source, mesh, placement, src_data_rank=None).to_local())


def full_model_state(model: nn.Module, mesh: DeviceMesh | None) -> dict[str, torch.Tensor]:
    """Collective over the mesh: the consolidated model (TP=1 names and shapes), on every rank."""
    placements = tp_placements(model)
    return {fqn: _as_dtensor(t, placements.get(fqn, Replicate()), mesh).full_tensor()
            if mesh is not None or isinstance(t, DTensor) else t.clone()
            for fqn, t in model.state_dict().items()}


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer,
                         mesh: DeviceMesh | None) -> dict[str, dict[str, torch.Tensor]]:
    """Collective over the mesh: the consolidated optimizer state, ``{fqn: {name: full tensor}}``."""
    state = model_and_optimizer_state(model, optimizer, mesh)["optimizer"]["state"]
    return {fqn: {k: v.full_tensor() if isinstance(v, DTensor) else v.clone() for k, v in entries.items()}
            for fqn, entries in state.items()}
