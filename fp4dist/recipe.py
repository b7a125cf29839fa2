"""Training recipes: which operands a Linear layer quantizes and how (the spec's recipe table).

| GEMM                | operand | layout     | blocks | RHT | SR  |
| fprop  Y = X W^T    | X       | rowwise    | 1x16   | no  | no  |
|                     | W       | rowwise    | 16x16  | no  | no  |
| dgrad  dX = dY W    | dY      | rowwise    | 1x16   | no  | yes |
|                     | W       | columnwise | 16x16  | no  | no  |
| wgrad  dW = dY^T X  | dY      | columnwise | 1x16   | yes | yes |
|                     | X       | columnwise | 1x16   | yes | no  |
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist

from fp4dist.quantizer import NVFP4Quantizer
from fp4dist.rng import mix32_int


@dataclass(frozen=True)
class HighPrecisionRecipe:
    """No quantization: the layers compute in the input dtype (bf16 or fp32); the baseline."""


@dataclass(frozen=True)
class NVFP4Recipe:
    """The NVFP4 recipe. ``rht``: RHT on the wgrad operands; ``stochastic_rounding``: SR on dY;
    ``block_2d_weights``: 16x16 weight tiles (else 1x16); ``seed``: base of every layer's SR seed;
    ``backend``: quantization backend ("auto", "reference", "cuda")."""

    rht: bool = True
    stochastic_rounding: bool = True
    block_2d_weights: bool = True
    seed: int = 0
    backend: str = "auto"

    def input_quantizer(self, amax_group: dist.ProcessGroup | None = None) -> NVFP4Quantizer:
        """X: rowwise for fprop and columnwise (RHT) for wgrad, both from one quantization."""
        return NVFP4Quantizer(rowwise=True, columnwise=True, rht=self.rht, amax_group=amax_group,
                              backend=self.backend)

    def weight_quantizer(self) -> NVFP4Quantizer:
        """W: rowwise for fprop, columnwise for dgrad; 16x16 tiles make the two exact transposes."""
        return NVFP4Quantizer(rowwise=True, columnwise=True, block_2d=self.block_2d_weights, backend=self.backend)

    def grad_quantizer(self, stream_id: int) -> NVFP4Quantizer:
        """dY: rowwise (dgrad) and columnwise with RHT (wgrad), SR with a seed of its own per ``stream_id``."""
        seed = mix32_int((self.seed ^ mix32_int(stream_id & 0xFFFFFFFF)) & 0xFFFFFFFF)
        return NVFP4Quantizer(rowwise=True, columnwise=True, rht=self.rht,
                              stochastic_rounding=self.stochastic_rounding, seed=seed, backend=self.backend)
