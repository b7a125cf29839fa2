"""Bad input raises a clear error naming the problem."""

import pytest
import torch

from fp4dist import NVFP4Quantizer


def test_last_dim_not_multiple_of_16():
    with pytest.raises(ValueError, match=r"last dim must be a multiple of 16 for rowwise=True.*got 40"):
        NVFP4Quantizer().quantize(torch.randn(32, 40))


def test_leading_dims_not_multiple_of_16_for_columnwise():
    with pytest.raises(ValueError, match=r"m = 24.*multiple of 16 for columnwise=True"):
        NVFP4Quantizer().quantize(torch.randn(2, 12, 32))
    # Rowwise alone has no such requirement.
    NVFP4Quantizer(columnwise=False).quantize(torch.randn(2, 12, 32))


def test_2d_blocks_need_both_dims():
    with pytest.raises(ValueError, match=r"block_2d=True"):
        NVFP4Quantizer(block_2d=True, columnwise=False).quantize(torch.randn(24, 32))


@pytest.mark.parametrize("dtype", [torch.int32, torch.float64, torch.float8_e4m3fn])
def test_unsupported_dtype(dtype):
    with pytest.raises(TypeError, match=r"bfloat16, float16 or float32.*" + str(dtype).split(".")[-1]):
        NVFP4Quantizer().quantize(torch.zeros(16, 16).to(dtype))


def test_one_d_and_empty():
    with pytest.raises(ValueError, match=r"at least 2 dims"):
        NVFP4Quantizer().quantize(torch.randn(32))
    with pytest.raises(ValueError, match=r"empty tensor"):
        NVFP4Quantizer().quantize(torch.randn(0, 32))


def test_rht_with_2d_blocks():
    with pytest.raises(ValueError, match=r"rht=True cannot be combined with block_2d=True"):
        NVFP4Quantizer(rht=True, block_2d=True)


def test_bad_backend_and_no_layout():
    with pytest.raises(ValueError, match=r"backend must be one of"):
        NVFP4Quantizer(backend="tpu")
    with pytest.raises(ValueError, match=r"rowwise=True or columnwise=True"):
        NVFP4Quantizer(rowwise=False, columnwise=False)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"backend='cuda' needs a CUDA tensor"):
            NVFP4Quantizer(backend="cuda").quantize(torch.randn(16, 16))


def test_missing_layout_is_none_and_says_so():
    t = NVFP4Quantizer(columnwise=False).quantize(torch.randn(16, 32))
    assert t.columnwise_data is None and t.columnwise_scale_inv is None and t.amax_columnwise is None
    with pytest.raises(ValueError, match=r"no columnwise layout"):
        t.dequantize(columnwise=True)


def test_bad_amax_argument():
    x = torch.randn(16, 32)
    with pytest.raises(ValueError, match=r"amax must be the fp32 \[2\] tensor"):
        NVFP4Quantizer().quantize(x, amax=torch.tensor(3.0))
