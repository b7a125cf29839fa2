"""NVFP4Linear: an ``nn.Linear`` whose matmul runs the NVFP4 recipe (no parallelism of its own).

Y [..., out] = X [..., in] W [out, in]^T + b with X, W and (in backward) dY quantized to NVFP4 as the
recipe says (:mod:`fp4dist.parallel.nvfp4_function`); the parameters are an ``nn.Linear``'s (fp32 or
any dtype; the GEMM output takes X's dtype, the bias is added in it). Any shape works. The tensor-parallel
styles of :mod:`fp4dist.parallel.styles` shard it as torch's styles shard an ``nn.Linear``.
"""

from __future__ import annotations

import torch
from torch import nn

from fp4dist.parallel.nvfp4_module import NVFP4ModuleMixin
from fp4dist.recipe import NVFP4Recipe

__all__ = ["NVFP4Linear"]


def _local(t):
    """A DTensor parameter's local shard (autograd-aware), a plain tensor as it is."""
    return t.to_local() if hasattr(t, "to_local") else t


class NVFP4Linear(NVFP4ModuleMixin, nn.Linear):
    """``nn.Linear(in_features, out_features, bias, device, dtype)`` running ``recipe`` (module docstring).

    ``tp_forward`` is None, or the forward that a tensor-parallel style attached (it receives the module
    and the input, and takes the parameters' local shards).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, recipe=NVFP4Recipe(),
                 device=None, dtype=None):
        nn.Linear.__init__(self, in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._init_nvfp4(recipe, device=self.weight.device)
        self.tp_forward = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, recipe=NVFP4Recipe()) -> "NVFP4Linear":
        """Turn ``linear`` (exactly an ``nn.Linear``) into an NVFP4Linear in place and return it: the same
        module object, with the very same weight and bias Parameters, hooks and attributes."""
        if type(linear) is not nn.Linear:
            raise TypeError(f"NVFP4Linear.from_linear takes an nn.Linear, got {type(linear).__name__}")
        linear.__class__ = cls
        linear._init_nvfp4(recipe, device=linear.weight.device)
        linear.tp_forward = None
        return linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tp_forward is not None:
            return self.tp_forward(self, x)
        if x.shape[-1] != self.in_features:
            raise ValueError(f"NVFP4Linear: input last dim is {x.shape[-1]}, expected in_features={self.in_features}")
        y = self._nvfp4_matmul(x, _local(self.weight))
        return y if self.bias is None else y + _local(self.bias).to(y.dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, recipe={self.recipe}"
