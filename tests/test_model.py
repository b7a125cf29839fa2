"""The tensor-parallel GPT equals the same GPT on one rank: loss and every gradient."""

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from multiproc import run_ranks
from fp4dist import HighPrecisionRecipe
from fp4dist.model import GPT, GPTConfig
from fp4dist.parallel import allreduce_sequence_parallel_grads

CFG = GPTConfig(vocab_size=64, seq_len=32, d_model=32, n_layers=2, n_heads=4, ffn_mult=2, init_std=0.1, seed=3)


def loss_and_grads(model, tokens, tp_group):
    logits = model(tokens[:, :-1])
    loss = F.cross_entropy(logits.reshape(-1, CFG.vocab_size), tokens[:, 1:].reshape(-1))
    loss.backward()
    allreduce_sequence_parallel_grads(model, tp_group)
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}


def tp_model_matches_one_rank(rank, world, seed, sp):
    torch.manual_seed(seed)
    tokens = torch.randint(0, CFG.vocab_size, (2, CFG.seq_len + 1))
    singles = [dist.new_group([r]) for r in range(world)]  # every rank creates every group
    ref = GPT(CFG, HighPrecisionRecipe(), tp_group=singles[rank])
    tp = GPT(CFG, HighPrecisionRecipe(), tp_group=dist.group.WORLD, sequence_parallel=sp)
    ref_loss, ref_grads = loss_and_grads(ref, tokens, singles[rank])
    tp_loss, tp_grads = loss_and_grads(tp, tokens, dist.group.WORLD)
    assert torch.allclose(tp_loss, ref_loss, rtol=1e-5, atol=1e-6), (tp_loss, ref_loss)
    for name, g in tp_grads.items():
        full = ref_grads[name]
        if g.shape != full.shape:  # a TP shard: column-parallel splits dim 0, row-parallel dim 1
            dim = 0 if g.shape[0] != full.shape[0] else 1
            full = full.chunk(world, dim=dim)[rank]
        assert torch.allclose(g, full, rtol=1e-4, atol=1e-6), f"rank {rank}: grad of {name} differs"
    return True


@pytest.mark.slow
@pytest.mark.parametrize("sp", [False, True], ids=["tp", "tp_sp"])
@pytest.mark.parametrize("world", [2, 4])
def test_tp_gpt_matches_single_rank(world, sp, gen):
    run_ranks(tp_model_matches_one_rank, world, int(torch.randint(2**31, (1,), generator=gen)), sp, timeout=180)
