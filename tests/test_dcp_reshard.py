"""A checkpoint written at one (tp, dp) layout loads at another: TP=2 -> TP=1, TP=4, TP=2 x DP=2, and
TP=2 x DP=2 -> TP=4. After loading, the consolidated model, AdamW state and scheduler equal those saved,
bit for bit (the launch's own build, state and load functions; gloo on CPUs)."""

import io
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from fp4dist import checkpoint, dcp_state
from fp4dist.parallel import allreduce_sequence_parallel_grads
from launch import train
from launch.preflight import compose_config
from multiproc import run_ranks

# a model that splits 4 ways (NVFP4 needs 16-multiples per shard)
OVERRIDES = ["model=tiny", "model.d_model=64", "model.n_heads=4", "model.n_layers=2", "model.seq_len=32",
             "train.batch_size=4", "optim.warmup_steps=2", "train.steps=10", "device=cpu"]


def build(world: int, rank: int, tp: int, seed: int):
    cfg = compose_config([*OVERRIDES, f"parallel.tp={tp}", f"model.seed={seed}"])
    tp_group, dp_group = train.tp_dp_groups(rank, world, tp)
    _, model, opt, sched = train.build(cfg, torch.device("cpu"), tp_group)
    mesh = dcp_state.training_mesh(tp_group, dp_group, tp, world // tp, "cpu")
    return cfg, model, opt, sched, mesh, tp_group


def train_steps(model, opt, sched, tp_group, steps: range, seed: int):
    """AdamW steps on random tokens (the same on every rank, so DP replicas stay equal)."""
    for step in steps:
        tokens = torch.randint(0, 256, (4, 33), generator=torch.Generator().manual_seed(seed + step))
        train.set_rng_step(model, step)
        logits = model(tokens[:, :-1])
        F.cross_entropy(logits.reshape(-1, 256), tokens[:, 1:].reshape(-1)).backward()
        allreduce_sequence_parallel_grads(model, tp_group)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()


def consolidated(model, opt, sched, mesh) -> dict:
    """Collective: the full model, optimizer moments and steps, param groups and scheduler."""
    groups = [{k: v for k, v in g.items() if k != "params"} for g in opt.state_dict()["param_groups"]]
    return {"model": dcp_state.full_model_state(model, mesh),
            "optimizer": dcp_state.full_optimizer_state(model, opt, mesh),
            "param_groups": groups, "scheduler": sched.state_dict()}


def differences(got: dict, expected: dict) -> list[str]:
    """Names of the entries that are not bitwise equal."""
    out = [f"model.{k}" for k in expected["model"] if not torch.equal(got["model"].get(k), expected["model"][k])]
    out += [f"optimizer.{p}.{k}" for p, entries in expected["optimizer"].items() for k, v in entries.items()
            if not torch.equal(got["optimizer"][p][k], v)]
    out += [k for k in ("param_groups", "scheduler") if got[k] != expected[k]]
    if set(got["model"]) != set(expected["model"]) or set(got["optimizer"]) != set(expected["optimizer"]):
        out.append("the entries differ")
    return out


def save_at(world, rank, tp, root: Path, step: int, start, seed: int) -> None:
    """Train at this layout (from ``start``: a loaded model), checkpoint at ``step``, and write the consolidated
    state to ``root / expected.pt``."""
    cfg, model, opt, sched, mesh, tp_group = start if start is not None else build(world, rank, tp, seed)
    train_steps(model, opt, sched, tp_group, range(sched.last_epoch + 1, step + 1), seed)
    group = checkpoint.checkpoint_group()
    checkpoint.save(root, step, train.train_state(cfg, model, opt, sched, mesh, step), run_id="r", group=group,
                    meta=train.checkpoint_meta(cfg, tp, world // tp))
    expected = consolidated(model, opt, sched, mesh)
    if rank == 0:
        torch.save(expected, root / "expected.pt")
    if dist.is_initialized():
        dist.barrier()


def load_at(world, rank, tp, root: Path, seed: int):
    """Build at this layout and load the newest checkpoint in ``root``; (its step, the build, differences
    between the consolidated loaded state and the saved one)."""
    built = cfg, model, opt, sched, mesh, _ = build(world, rank, tp, seed)  # step-0 weights, then loaded
    state = train.train_state(cfg, model, opt, sched, mesh, 0)
    loaded = checkpoint.load_latest(root, state, run_id="r", expect=train.checkpoint_expectation(cfg),
                                    group=checkpoint.checkpoint_group() if world > 1 else None)
    train.check_train_state(cfg, state["train"], loaded.step, str(root))
    dcp_state.load_model_and_optimizer_state(model, opt, state)
    sched.load_state_dict(state["scheduler"])
    got = consolidated(model, opt, sched, mesh)
    expected = torch.load(root / "expected.pt", weights_only=False)
    return loaded.step, built, differences(got, expected)


def _save_tp2(rank, world, root, seed):
    save_at(world, rank, 2, Path(root), 2, None, seed)


def _on_four_ranks(rank, world, tp2_root, tp2dp2_root, seed):
    results = {}
    for name, tp in (("tp2->tp4", 4), ("tp2->tp2xdp2", 2)):
        step, built, diffs = load_at(world, rank, tp, Path(tp2_root), seed)
        results[name] = (step, diffs)
    # the TP=2 x DP=2 build trains one more step and saves: that checkpoint loads at TP=4
    save_at(world, rank, 2, Path(tp2dp2_root), 3, built, seed)
    step, _, diffs = load_at(world, rank, 4, Path(tp2dp2_root), seed)
    results["tp2xdp2->tp4"] = (step, diffs)
    return results


@pytest.mark.slow
def test_a_tp2_checkpoint_loads_at_tp1_tp4_and_tp2xdp2_and_a_tp2xdp2_one_at_tp4(tmp_path, gen):
    seed = int(torch.randint(0, 2**20, (1,), generator=gen))
    tp2, tp2dp2 = tmp_path / "tp2", tmp_path / "tp2dp2"
    run_ranks(_save_tp2, 2, str(tp2), seed, timeout=180)
    step, _, diffs = load_at(1, 0, 1, tp2, seed)  # this process, no process group: plain full tensors
    assert step == 2 and not diffs, f"tp2->tp1: {diffs}"
    for rank, results in enumerate(run_ranks(_on_four_ranks, 4, str(tp2), str(tp2dp2), seed, timeout=300)):
        for name, (step, diffs) in results.items():
            assert step == (3 if name == "tp2xdp2->tp4" else 2) and not diffs, f"{name}, rank {rank}: {diffs}"
    manifest = checkpoint.read_manifest(tp2dp2 / "step_00000003")
    assert manifest["layout"] == {"tp": 2, "dp": 2, "sequence_parallel": True} and manifest["world_size"] == 4


def test_init_optimizer_state_keeps_parameters_and_a_tensor_lr_where_it_lives():
    """The state-less optimizer's first state comes from a zero-lr step whose lr is a zero of the lr's own kind
    (a fused CUDA optimizer takes no CPU lr); parameters stay bit for bit, the lr object comes back."""
    from fp4dist.dcp_state import init_optimizer_state

    model = torch.nn.Linear(32, 16)
    before = [p.detach().clone() for p in model.parameters()]
    lr = torch.tensor(1e-2, dtype=torch.float64)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    seen = []
    step = opt.step
    opt.step = lambda *a, **k: (seen.append(opt.param_groups[0]["lr"]), step(*a, **k))[1]
    init_optimizer_state(opt)
    assert len(seen) == 1 and isinstance(seen[0], torch.Tensor) and seen[0].dtype == lr.dtype and seen[0] == 0
    assert opt.param_groups[0]["lr"] is lr and set(opt.state) == set(model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.grad is None for p in model.parameters())
