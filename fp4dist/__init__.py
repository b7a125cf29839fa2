"""fp4dist: NVFP4 (4-bit) tensor-parallel training for PyTorch."""

from fp4dist.convert import convert_to_nvfp4
from fp4dist.gemm import nvfp4_gemm
from fp4dist.nn import NVFP4Linear
from fp4dist.quantizer import NVFP4Quantizer
from fp4dist.recipe import HighPrecisionRecipe, NVFP4Recipe
from fp4dist.tensor import NVFP4Tensor

__all__ = ["NVFP4Linear", "NVFP4Quantizer", "NVFP4Tensor", "NVFP4Recipe", "HighPrecisionRecipe", "convert_to_nvfp4",
           "nvfp4_gemm"]
__version__ = "0.1.0"
