"""A decoder-only GPT built from fp4dist's tensor-parallel layers.

Activations are [s, b, d] (sequence first). Per block: LayerNorm -> QKV (ColumnParallel, d -> 3d,
whole heads per rank) -> causal attention on the local heads -> out (RowParallel, d -> d) -> residual;
LayerNorm -> up (ColumnParallel, d -> ffn) -> GELU -> down (RowParallel, ffn -> d) -> residual.
Embeddings, norms and the LM head are replicated and stay in high precision; blocks listed in
``high_precision_blocks`` use the high-precision recipe too. With sequence parallelism the residual
stream between blocks is sharded along s; the LM head sees the gathered sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fp4dist.parallel import ColumnParallelLinear, RowParallelLinear, name_rng_streams
from fp4dist.parallel import comm
from fp4dist.recipe import HighPrecisionRecipe


@dataclass
class GPTConfig:
    vocab_size: int = 256
    seq_len: int = 128
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    ffn_mult: int = 4
    init_std: float = 0.02
    seed: int = 0


class ParallelAttention(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int, recipe, tp_group, sp: bool):
        super().__init__()
        tp = comm.group_size(tp_group)
        if cfg.n_heads % tp:
            raise ValueError(f"n_heads = {cfg.n_heads} is not divisible by the tensor-parallel size {tp}")
        self.local_heads, self.head_dim = cfg.n_heads // tp, cfg.d_model // cfg.n_heads
        seed = cfg.seed * 1000 + layer * 10
        # QKV rows ordered [head, (q, k, v), head_dim] so that a row shard holds whole heads
        self.qkv = ColumnParallelLinear(cfg.d_model, 3 * cfg.d_model, sequence_parallel=sp, recipe=recipe,
                                        tp_group=tp_group, init_seed=seed + 1, init_std=cfg.init_std)
        self.out = RowParallelLinear(cfg.d_model, cfg.d_model, sequence_parallel=sp, recipe=recipe,
                                     tp_group=tp_group, init_seed=seed + 2,
                                     init_std=cfg.init_std / (2 * cfg.n_layers) ** 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(x)  # [s, b, local_heads * 3 * head_dim]
        s, b = qkv.shape[:2]
        q, k, v = qkv.view(s, b, self.local_heads, 3, self.head_dim).permute(3, 1, 2, 0, 4)  # [b, h, s, hd] each
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(attn.permute(2, 0, 1, 3).reshape(s, b, self.local_heads * self.head_dim))


class ParallelMLP(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int, recipe, tp_group, sp: bool):
        super().__init__()
        seed, ffn = cfg.seed * 1000 + layer * 10, cfg.ffn_mult * cfg.d_model
        self.up = ColumnParallelLinear(cfg.d_model, ffn, sequence_parallel=sp, recipe=recipe, tp_group=tp_group,
                                       init_seed=seed + 3, init_std=cfg.init_std)
        self.down = RowParallelLinear(ffn, cfg.d_model, sequence_parallel=sp, recipe=recipe, tp_group=tp_group,
                                      init_seed=seed + 4, init_std=cfg.init_std / (2 * cfg.n_layers) ** 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x)))


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32, returning the input dtype; marked for the SP grad all-reduce."""

    def __init__(self, d: int, sp: bool):
        super().__init__(d)
        for p in self.parameters():
            p.sequence_parallel = sp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), self.normalized_shape, self.weight, self.bias, self.eps).to(x.dtype)


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int, recipe, tp_group, sp: bool):
        super().__init__()
        self.ln1, self.ln2 = LayerNorm(cfg.d_model, sp), LayerNorm(cfg.d_model, sp)
        self.attn = ParallelAttention(cfg, layer, recipe, tp_group, sp)
        self.mlp = ParallelMLP(cfg, layer, recipe, tp_group, sp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """tokens [b, s] int64 -> logits [b, s, vocab] fp32.

    ``recipe`` applies to the transformer blocks' linears except the ``high_precision_blocks``
    (indices, negative counting from the end). ``tp_group``: the tensor-parallel group (None: no tensor
    parallelism, whatever the world). ``compute_dtype``: activation dtype (bf16 on GPUs, fp32 on CPUs);
    parameters stay fp32.
    """

    def __init__(self, cfg: GPTConfig, recipe, tp_group=None, sequence_parallel: bool = False,
                 high_precision_blocks: tuple[int, ...] = (), compute_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.cfg, self.tp_group, self.compute_dtype = cfg, tp_group, compute_dtype
        self.sp = sequence_parallel and comm.group_size(tp_group) > 1
        keep = {i % cfg.n_layers for i in high_precision_blocks}
        g = torch.Generator().manual_seed(cfg.seed)
        self.tok_emb = nn.Parameter(torch.randn(cfg.vocab_size, cfg.d_model, generator=g) * cfg.init_std)
        self.pos_emb = nn.Parameter(torch.randn(cfg.seq_len, cfg.d_model, generator=g) * cfg.init_std)
        self.blocks = nn.ModuleList(
            Block(cfg, i, HighPrecisionRecipe() if i in keep else recipe, tp_group, self.sp) for i in range(cfg.n_layers))
        self.ln_f = LayerNorm(cfg.d_model, self.sp)
        self.head = nn.Parameter(torch.randn(cfg.vocab_size, cfg.d_model, generator=g) * cfg.init_std)
        name_rng_streams(self)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, s = tokens.shape
        if s > self.cfg.seq_len:
            raise ValueError(f"sequence of {s} tokens is longer than model.seq_len = {self.cfg.seq_len}")
        x = (self.tok_emb[tokens.t()] + self.pos_emb[:s, None, :]).to(self.compute_dtype)  # [s, b, d]
        x = comm.scatter_seq_to_sp(x, self.tp_group) if self.sp else x
        for block in self.blocks:
            x = block(x)
        x = self.ln_f(x)
        x = comm.gather_seq_replicated(x, self.tp_group) if self.sp else x
        return (x.float() @ self.head.t()).transpose(0, 1)  # [b, s, vocab]
