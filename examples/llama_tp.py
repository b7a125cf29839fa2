"""Train a HuggingFace Llama (random weights from a small LlamaConfig) with the NVFP4 recipe.

    python examples/llama_tp.py                                  # TP=1: convert_to_nvfp4
    torchrun --nproc-per-node 2 examples/llama_tp.py             # TP=2: the NVFP4 TP plan, sequence parallel

Needs ``transformers`` (``pip install 'fp4dist[hf]'``). The fp4dist part is ``nvfp4_tp_plan``,
``to_nvfp4`` and the ``set_rng_step`` call of the loop (14 lines); the rest is the model and an ordinary
training loop. Activations are batch-first
[b, s, h], so the sequence is sharded along dim 1 between the tensor-parallel regions. The embeddings,
the norms and the LM head stay in high precision; every projection of every decoder layer runs NVFP4,
and q, k, v (and gate, up) share one NVFP4 gather of their input.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, SequenceParallel, parallelize_module
from transformers import LlamaConfig, LlamaForCausalLM

from fp4dist import NVFP4Recipe, convert_to_nvfp4
from fp4dist.parallel import NVFP4ColwiseParallel, NVFP4PrepareModuleInput, NVFP4RowwiseParallel, set_rng_step


def build_model(seed: int = 0) -> LlamaForCausalLM:
    """A small Llama with random weights (the same on every rank for one seed)."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=False)
    return LlamaForCausalLM(config)


# ---- the fp4dist part: a TP plan, then convert_to_nvfp4 / parallelize_module / set_rng_step below ----
def nvfp4_tp_plan(recipe: NVFP4Recipe) -> dict:  # batch-first: the sequence is sharded along dim 1
    seq, full, rowwise = Shard(1), Replicate(), NVFP4RowwiseParallel(output_layouts=Shard(1), use_local_output=False)
    layer = {"input_layernorm": SequenceParallel(), "post_attention_layernorm": SequenceParallel(),
             "self_attn": NVFP4PrepareModuleInput(input_kwarg_layouts={"hidden_states": seq},
                                                  desired_input_kwarg_layouts={"hidden_states": full}, recipe=recipe),
             "mlp": NVFP4PrepareModuleInput(input_layouts=seq, desired_input_layouts=full, recipe=recipe),
             "self_attn.[qkv]_proj": NVFP4ColwiseParallel(), "mlp.[gu]*_proj": NVFP4ColwiseParallel(),
             "self_attn.o_proj": rowwise, "mlp.down_proj": rowwise}
    return {"model.embed_tokens": RowwiseParallel(input_layouts=full, output_layouts=seq, use_local_output=False),
            "model.norm": SequenceParallel(), "lm_head": ColwiseParallel(input_layouts=seq, output_layouts=full),
            **{f"model.layers.*.{name}": style for name, style in layer.items()}}


def to_nvfp4(model, tp_mesh=None, recipe: NVFP4Recipe = NVFP4Recipe()):
    """The NVFP4 recipe on every decoder projection (the LM head stays high precision), and at TP > 1 the plan."""
    convert_to_nvfp4(model, recipe, module_filter_fn=lambda module, fqn: fqn != "lm_head")
    if tp_mesh is not None and tp_mesh.size() > 1:
        parallelize_module(model, tp_mesh, nvfp4_tp_plan(recipe))
    return model


def train(model, steps: int, seq_len: int = 32, batch: int = 4, lr: float = 1e-2, seed: int = 0) -> list[float]:
    """``steps`` AdamW steps on one batch of random tokens (the same on every rank); returns the losses."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, foreach=False)
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, model.config.vocab_size, (batch, seq_len), generator=g).to(model.device)
    losses = []
    for step in range(steps):
        set_rng_step(model, step)  # SR draws follow the step
        loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def main() -> None:
    world, cuda = int(os.environ.get("WORLD_SIZE", 1)), torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    mesh = None
    if world > 1:
        dist.init_process_group("nccl" if cuda else "gloo")
        mesh = init_device_mesh(device.type, (world,))
    model = to_nvfp4(build_model().to(device), mesh)
    losses = train(model, steps=5)
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(f"TP={world} losses: " + " ".join(f"{v:.4f}" for v in losses))
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
