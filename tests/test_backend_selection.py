"""Which backend runs where: the CUDA kernels only on a GPU that can run them, the reference backend elsewhere."""

from __future__ import annotations

import pytest
import torch


def test_a_gpu_that_is_not_hopper_declines_the_kernels_with_one_log_line(monkeypatch, caplog):
    """The kernels are sm_90 machine code: on another GPU available() says so once, without building, and "auto"
    falls back to the reference backend (runs on a CPU-only machine: the GPU queries are stubbed)."""
    import fp4dist.backends as backends
    from fp4dist.backends import cuda, reference

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA A100-SXM4-80GB")
    monkeypatch.setattr(cuda, "_ext", None)
    monkeypatch.setattr(cuda, "_build_failed", False)
    monkeypatch.setattr(backends, "_cuda_kernels", [])
    monkeypatch.delenv("FP4DIST_DISABLE_CUDA", raising=False)

    def no_build():
        raise AssertionError("the kernels must not be built for a GPU that cannot run them")

    monkeypatch.setattr(cuda, "_build", no_build)
    with caplog.at_level("WARNING", logger="fp4dist"):
        assert cuda.available() is False
        assert cuda.available() is False
    lines = [r.getMessage() for r in caplog.records if r.name == "fp4dist"]
    assert len(lines) == 1 and "sm_80" in lines[0] and "A100" in lines[0] and "sm_90" in lines[0], lines
    assert backends.select("auto", torch.device("cuda")) is reference
    with pytest.raises(RuntimeError, match="unavailable"):
        backends.select("cuda", torch.device("cuda"))
