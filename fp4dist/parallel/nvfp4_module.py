"""What every NVFP4 layer shares: its recipe's quantizers, its SR stream (seed and offset) and its name.

A layer's SR seed is a hash of the recipe seed, the layer's fully-qualified name in its model and its
tensor-parallel rank, so the same model draws the same numbers whatever else the process built. The
name is given at conversion (``convert_to_nvfp4``), model build (``name_rng_streams``), or else by the
first ``set_rng_step(model, ...)``, which names every layer not named yet by its path in ``model``.

The SR offset is an int64 [1] buffer on the layer's device: ``set_rng_step(model, step, microbatch)``
writes ``step * 2^16 + microbatch`` there (no host sync, so compiled or CUDA-graph-captured steps read
it), and from then on the layer leaves it alone. Until then each training forward outside a backward
pass advances it by one (a checkpointed forward's recomputation does not, so it draws the same numbers).
"""

from __future__ import annotations

import zlib

import torch
from torch import nn

from fp4dist.parallel.nvfp4_function import GatheredInput, NVFP4LinearConfig, nvfp4_linear
from fp4dist.recipe import HighPrecisionRecipe, NVFP4Recipe

MAX_MICROBATCHES = 1 << 16  #: SR offset = step * MAX_MICROBATCHES + microbatch


def _in_backward() -> bool:
    """True inside a backward pass (a checkpointed forward's recomputation); False while compiling."""
    return not torch.compiler.is_compiling() and torch._C._current_graph_task_id() != -1


class NVFP4ModuleMixin:
    """Mixed into an ``nn.Module`` holding ``weight``: recipe configs, SR stream and name (module docstring).

    Attributes: ``recipe``; ``rng_offset`` (int64 [1] buffer, not saved in state dicts); ``rng_name`` (None
    until named); ``sr_group`` / ``sr_rank``: the tensor-parallel group whose amax a sequence-parallel input
    shares and this rank in it (None / 0 without TP).
    """

    def _init_nvfp4(self, recipe, sr_group=None, sr_rank: int = 0, device=None) -> None:
        if not isinstance(recipe, (NVFP4Recipe, HighPrecisionRecipe)):
            raise TypeError(f"recipe must be NVFP4Recipe or HighPrecisionRecipe, got {type(recipe).__name__}")
        self.recipe, self.sr_group, self.sr_rank = recipe, sr_group, sr_rank
        self.register_buffer("rng_offset", torch.zeros(1, dtype=torch.int64, device=device), persistent=False)
        self.rng_auto_advance = True
        self.rng_name = None
        self._build_configs()

    @property
    def quantized(self) -> bool:
        return isinstance(self.recipe, NVFP4Recipe)

    def set_rng_name(self, name: str) -> None:
        """Give the layer its stable identity (its fully-qualified name in the model): its SR seed is a hash
        of the recipe seed, this name and the TP rank."""
        self.rng_name = name
        self._build_configs()

    def set_tensor_parallel(self, group, rank: int) -> None:
        """The TP group (the amax and gather group of a sequence-parallel input) and this rank in it."""
        self.sr_group, self.sr_rank = group, rank
        self._build_configs()

    def _build_configs(self) -> None:
        """{sequence parallel: config}; built here, not while torch.compile traces the forward."""
        self._nvfp4_configs = {}
        if self.quantized:
            r, stream = self.recipe, zlib.crc32(f"{self.rng_name or ''}/tp{self.sr_rank}".encode())
            for sp in (False, True):
                group = self.sr_group if sp else None
                self._nvfp4_configs[sp] = NVFP4LinearConfig(r.input_quantizer(amax_group=group),
                                                            r.weight_quantizer(), r.grad_quantizer(stream),
                                                            sp_group=group)

    def _config(self, sp: bool) -> NVFP4LinearConfig:
        return self._nvfp4_configs[sp]

    def _advance_rng(self) -> None:
        if self.rng_auto_advance and self.training and torch.is_grad_enabled() and not _in_backward():
            self.rng_offset.add_(1)

    def _nvfp4_matmul(self, x: torch.Tensor, weight: torch.Tensor, sp: bool = False,
                      gathered: GatheredInput | None = None) -> torch.Tensor:
        """X W^T (no bias) with this layer's recipe: ``sp`` gathers X's dim-0 shards over ``sr_group``
        first; ``gathered`` is X's record when X is the carrier of an input gathered once."""
        if not self.quantized:
            return torch.nn.functional.linear(x, weight.to(x.dtype))
        self._advance_rng()
        return nvfp4_linear(x, weight, self.rng_offset, self._config(sp), gathered)


def nvfp4_modules(module: nn.Module, prefix: str = ""):
    """(fully-qualified name, layer) of every NVFP4 layer in ``module``."""
    return [(n, m) for n, m in module.named_modules(prefix=prefix) if isinstance(m, NVFP4ModuleMixin)]


def set_rng_step(module: nn.Module, step: int, microbatch: int = 0) -> None:
    """Make every NVFP4 layer in ``module`` draw its SR numbers for (``step``, ``microbatch``).

    The offset ``step * 2^16 + microbatch`` goes into each layer's device buffer (no host sync; a compiled
    or CUDA-graph-captured step reads it there), and the layers stop advancing it themselves. A layer not
    named yet is named by its path in ``module`` (see ``set_rng_name``). A training loop calls this each
    step and microbatch, so that the draws follow the step, not the process.
    """
    if not 0 <= microbatch < MAX_MICROBATCHES:
        raise ValueError(f"microbatch must be in [0, {MAX_MICROBATCHES}), got {microbatch}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    layers = nvfp4_modules(module)
    if not layers:
        return
    for name, m in layers:
        if m.rng_name is None:
            m.set_rng_name(name)
    first, rest = layers[0][1].rng_offset, [m.rng_offset for _, m in layers[1:]]
    first.fill_(step * MAX_MICROBATCHES + microbatch)
    if rest:  # one launch for all the others, not one per layer
        torch._foreach_copy_(rest, [first] * len(rest))
    for _, m in layers:
        m.rng_auto_advance = False


def name_rng_streams(model: nn.Module, prefix: str = "") -> nn.Module:
    """Name every NVFP4 layer of ``model`` by its fully-qualified name (see ``set_rng_name``); returns model."""
    for name, m in nvfp4_modules(model, prefix):
        m.set_rng_name(name)
    return model
