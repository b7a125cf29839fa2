"""fp4dist: NVFP4 (4-bit) tensor-parallel training for PyTorch."""

from fp4dist.quantizer import NVFP4Quantizer
from fp4dist.tensor import NVFP4Tensor

__all__ = ["NVFP4Quantizer", "NVFP4Tensor"]
__version__ = "0.1.0"
