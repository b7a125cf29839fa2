"""Bring your own model: a HuggingFace Llama (LlamaConfig, random weights) with convert_to_nvfp4 at TP=1 and
the NVFP4 TP plan (sequence parallel, batch-first) at TP=2, as examples/llama_tp.py runs it."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from multiproc import run_ranks
from fp4dist import NVFP4Linear, NVFP4Recipe

pytest.importorskip("transformers")
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "llama_tp.py"
RECIPE = NVFP4Recipe(backend="reference")


def example():
    if "llama_tp" not in sys.modules:
        spec = importlib.util.spec_from_file_location("llama_tp", EXAMPLE)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules["llama_tp"] = module
    return sys.modules["llama_tp"]


def tp2_trains_like_tp1(rank, world, seed, seq_len):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor

    ex = example()
    mesh = init_device_mesh("cpu", (world,))
    tp1 = ex.to_nvfp4(ex.build_model(seed), None, RECIPE)
    tp2 = ex.to_nvfp4(ex.build_model(seed), mesh, RECIPE)
    proj = tp2.model.layers[0].self_attn.q_proj
    assert isinstance(proj, NVFP4Linear) and isinstance(proj.weight, DTensor)
    assert proj.weight.to_local().shape[0] == tp1.model.layers[0].self_attn.q_proj.weight.shape[0] // world
    l1 = ex.train(tp1, steps=1, seq_len=seq_len, seed=seed)
    l2 = ex.train(tp2, steps=5, seq_len=seq_len, seed=seed)
    assert all(torch.isfinite(torch.tensor(l2))), l2
    assert abs(l2[0] - l1[0]) <= 0.02 * abs(l1[0]), (l1, l2)
    assert l2[-1] < l2[0], l2  # one batch, five steps: it learns
    return l2


@pytest.mark.slow
@pytest.mark.parametrize("seq_len", [32, 14], ids=["aligned", "odd_rows"])  # 14: 7 tokens x 4 = 28 rows per rank
def test_llama_nvfp4_tp_plan_trains_like_tp1(seq_len, gen):
    losses = run_ranks(tp2_trains_like_tp1, 2, int(torch.randint(2**20, (1,), generator=gen)), seq_len, timeout=300)
    assert losses[0] == losses[1]  # every rank computes the same loss


def test_llama_convert_odd_lengths_train_and_generate(gen):
    ex = example()
    seed = int(torch.randint(2**20, (1,), generator=gen))
    model = ex.to_nvfp4(ex.build_model(seed), None, RECIPE)
    assert sum(isinstance(m, NVFP4Linear) for m in model.modules()) == 2 * 7  # 7 projections per layer
    losses = ex.train(model, steps=3, seq_len=13, batch=3, seed=seed)  # 39 rows: padded to 48 for wgrad
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0], losses
    model.eval()
    prompt = torch.randint(0, model.config.vocab_size, (2, 7), generator=gen)
    out = model.generate(prompt, max_new_tokens=4, do_sample=False, pad_token_id=0)  # decode steps: 1 token
    assert out.shape == (2, 11) and torch.equal(out[:, :7], prompt)
    assert ((0 <= out) & (out < model.config.vocab_size)).all()
