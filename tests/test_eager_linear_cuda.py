"""The eager NVFP4 linear's one-call path (fp4dist.parallel.eager_linear) against the Python path: the same bits
for Y, dX and dW, and the calls that qualify are the ones that take it."""

import pytest
import torch

from fp4dist import NVFP4Recipe
from fp4dist.parallel import ColumnParallelLinear, eager_linear, set_rng_step

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def bits(t):
    return t.contiguous().view(torch.uint8 if t.element_size() == 1 else {2: torch.int16, 4: torch.int32}[t.element_size()])


def run(layer, x, dy, step, x_grad, enabled, monkeypatch):
    """(y, dx, dw) of one forward + backward at SR step ``step``, and how many forwards took the one-call path."""
    monkeypatch.setattr(eager_linear, "ENABLED", enabled)
    taken = []
    real = eager_linear.forward
    monkeypatch.setattr(eager_linear, "forward", lambda *a, **k: taken.append(1) or real(*a, **k))
    set_rng_step(layer, step)
    layer.weight.grad = None
    xi = x.detach().requires_grad_(x_grad)  # x's own storage (and alignment)
    y = layer(xi)
    y.backward(dy)
    dw = layer.weight.grad if layer.weight.requires_grad else None
    return y.detach(), (xi.grad if x_grad else None), dw, len(taken)


CASES = [  # (x shape, out features, x dtype, weight dtype)
    ((2, 256, 512), 1024, torch.bfloat16, torch.float32),
    ((4096, 1024), 3072, torch.bfloat16, torch.float32),
    ((3, 160, 256), 768, torch.bfloat16, torch.bfloat16),
    ((512, 384), 256, torch.float16, torch.float16),
    ((512, 384), 256, torch.float16, torch.float32),
]


@pytest.mark.parametrize("shape,out,dtype,wdtype", CASES, ids=lambda c: str(c).replace("torch.", ""))
@pytest.mark.parametrize("grads", ["both", "weight_only", "input_only"])
def test_one_call_path_gives_the_python_paths_bits(cuda_kernels, gen, monkeypatch, shape, out, dtype, wdtype, grads):
    layer = ColumnParallelLinear(shape[-1], out, bias=False, recipe=NVFP4Recipe(backend="cuda")).cuda().to(wdtype)
    layer.weight.requires_grad_(grads != "input_only")
    x = (torch.randn(shape, generator=gen) * torch.exp(torch.randn(*shape[:-1], 1, generator=gen))).to(dtype).cuda()
    dy = (torch.randn(*shape[:-1], out, generator=gen) * 1e-3).to(dtype).cuda()
    x_grad = grads != "weight_only"
    for step in (0, 5):  # two SR offsets: dY's draws follow the layer's device offset on both paths
        fast = run(layer, x, dy, step, x_grad, True, monkeypatch)
        slow = run(layer, x, dy, step, x_grad, False, monkeypatch)
        assert fast[3] == 1 and slow[3] == 0
        for name, f, s in zip(("y", "dx", "dw"), fast[:3], slow[:3]):
            assert (f is None) == (s is None), name
            if f is not None:
                assert f.dtype == s.dtype and f.shape == s.shape, name
                assert torch.equal(bits(f), bits(s)), f"{name} differs at step {step} ({shape}, {grads})"


@pytest.mark.parametrize("why", ["k_not_16", "rows_not_16", "misaligned"])
def test_calls_that_do_not_qualify_take_the_python_path(cuda_kernels, gen, monkeypatch, why):
    k, rows, dtype = (520 if why == "k_not_16" else 512), (200 if why == "rows_not_16" else 256), torch.bfloat16
    layer = ColumnParallelLinear(k, 256, bias=False, recipe=NVFP4Recipe(backend="cuda")).cuda()
    flat = torch.randn(rows * k + 8, generator=gen).to(dtype).cuda()
    x = flat[8:].view(rows, k) if why != "misaligned" else flat[1:rows * k + 1].view(rows, k)
    dy = torch.randn(rows, 256, generator=gen).to(dtype).cuda() * 1e-3
    y, dx, dw, taken = run(layer, x, dy, 1, True, True, monkeypatch)
    assert taken == 0
    y2, dx2, dw2, _ = run(layer, x, dy, 1, True, False, monkeypatch)
    assert torch.equal(bits(y), bits(y2)) and torch.equal(bits(dx), bits(dx2)) and torch.equal(bits(dw), bits(dw2))
