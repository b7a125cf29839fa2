import os
import random

import pytest
import torch


@pytest.fixture
def gen(request):
    """A torch.Generator with a fresh seed per test (set FP4DIST_TEST_SEED to replay one).

    The seed is printed, so pytest shows it next to any failure.
    """
    seed = int(os.environ.get("FP4DIST_TEST_SEED", random.SystemRandom().randrange(2**31)))
    print(f"[{request.node.name}] FP4DIST_TEST_SEED={seed}")
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="session")
def cuda_kernels():
    """fp4dist.backends.cuda, the kernels' Python launchers (the torch.ops.fp4dist custom ops wrap them); the test
    is skipped where they cannot be built or used."""
    from fp4dist.backends import cuda, cuda_backend

    if cuda_backend() is None:
        pytest.skip("fp4dist CUDA kernels unavailable (see the fp4dist log line)")
    return cuda


def random_tensor(shape, gen, dtype=torch.float32, device="cpu"):
    """Normal values with per-row magnitudes spread over ~6 decades, some zero blocks, signs mixed; finite in
    ``dtype`` (a rare fp16 value beyond its range is clamped to the largest finite one, not cast to inf)."""
    x = torch.randn(shape, generator=gen)
    x = x * torch.exp(torch.randn(*shape[:-1], 1, generator=gen) * 3)
    if dtype.is_floating_point:
        top = torch.finfo(dtype).max
        x = x.clamp(-top, top)
    x2d = x.reshape(-1, shape[-1])
    if x2d.shape[1] >= 32 and x2d.shape[0] >= 2:
        x2d[0, 16:32] = 0.0
    return x.to(dtype).to(device)


def as_bits(t: torch.Tensor) -> torch.Tensor:
    """float8 tensors viewed as their bytes (torch.equal on float8 compares values, not bits)."""
    return t.view(torch.uint8) if t.dtype == torch.float8_e4m3fn else t


def assert_same_bits(a, b) -> None:
    """Two NVFP4Tensors hold the same components, bit for bit, with the same shape and dtype."""
    ca, cb = a.component_tensors(), b.component_tensors()
    assert ca.keys() == cb.keys(), (ca.keys(), cb.keys())
    for k in ca:
        assert torch.equal(as_bits(ca[k]), as_bits(cb[k])), f"{k} differs"
    assert a.shape == b.shape and a.dtype == b.dtype
