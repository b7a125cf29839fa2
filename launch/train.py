"""Train a tensor-parallel byte-level GPT with NVFP4 (or bf16) under torchrun; see configs/train.yaml.

    bash launch/train.sh                       # 2 ranks, tiny model, NVFP4, CPU (gloo) or GPUs (NCCL)
    bash launch/train.sh recipe=bf16           # the baseline
    python launch/plot.py outputs/nvfp4 outputs/bf16 -o docs/loss.png

Writes ``<output_dir>/metrics.jsonl`` (one JSON object per logged step), ``summary.json`` and
checkpoints; a restarted job resumes from the newest checkpoint with the same losses it would have
had (data order and SR draws are functions of the step).
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import time
from datetime import timedelta
from pathlib import Path

import hydra
import torch
import torch.distributed as dist
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from fp4dist import HighPrecisionRecipe, NVFP4Recipe, checkpoint
from fp4dist.data import ByteCorpus
from fp4dist.model import GPT, GPTConfig
from fp4dist.parallel import allreduce_sequence_parallel_grads, clip_grad_norm_, set_rng_step

log = logging.getLogger("fp4dist.train")


def attempt_store(rank: int, world: int) -> dist.Store:
    """torchrun's store, under a prefix of its own for each restart attempt.

    The store outlives a restart; without the prefix, restarted ranks can read the previous
    attempt's gloo addresses and fail to connect ("Connection refused") or hang.
    """
    agent_hosts_it = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "False") == "True"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                          is_master=rank == 0 and not agent_hosts_it, timeout=timedelta(minutes=5))
    return dist.PrefixStore(f"fp4dist/attempt{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def setup_distributed(cfg: DictConfig):
    """Init the process group from torchrun's environment; returns (device, tp_group, dp_group, tp, dp)."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", local_rank % torch.cuda.device_count()) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    backend = cfg.dist_backend
    if backend == "auto":
        one_gpu_each = use_cuda and torch.cuda.device_count() >= int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        backend = "nccl" if one_gpu_each else "gloo"
    if "RANK" in os.environ:
        dist.init_process_group(backend, store=attempt_store(rank, world), rank=rank, world_size=world,
                                timeout=timedelta(minutes=5), device_id=device if backend == "nccl" else None)
    tp = cfg.parallel.tp or world
    if world % tp:
        raise ValueError(f"parallel.tp = {tp} does not divide the number of processes {world}")
    dp = world // tp
    tp_group = dp_group = None
    if world > 1:
        for d in range(dp):  # every rank creates every group, in the same order
            g = dist.new_group(list(range(d * tp, (d + 1) * tp)))
            if rank // tp == d:
                tp_group = g
        for t in range(tp):
            g = dist.new_group(list(range(t, world, tp)))
            if rank % tp == t:
                dp_group = g
    return device, backend, tp_group, dp_group, tp, dp


def build_recipe(cfg: DictConfig):
    if cfg.recipe.name == "bf16":
        return HighPrecisionRecipe(), ()
    if cfg.recipe.name != "nvfp4":
        raise ValueError(f"recipe.name must be nvfp4 or bf16, got {cfg.recipe.name!r}")
    r = cfg.recipe
    return (NVFP4Recipe(rht=r.rht, stochastic_rounding=r.stochastic_rounding, block_2d_weights=r.block_2d_weights,
                        seed=r.seed, backend=r.backend), tuple(r.high_precision_blocks))


def lr_lambda(cfg: DictConfig):
    warmup, steps, floor = cfg.optim.warmup_steps, cfg.train.steps, cfg.optim.min_lr_ratio

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, steps - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return f


def maybe_crash(cfg: DictConfig, rank: int, when: str, step: int) -> None:
    """Fault injection for the restart tests: SIGKILL on the first attempt only."""
    target = cfg.debug.crash_at_step if when == "step" else cfg.debug.crash_in_checkpoint_at_step
    first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
    if target is not None and step == target and rank == cfg.debug.crash_rank and first_attempt:
        log.warning("debug: killing rank %d at %s of step %d", rank, when, step)
        os.kill(os.getpid(), signal.SIGKILL)


@torch.no_grad()
def evaluate(model, corpus, cfg, device) -> float:
    model.eval()
    losses = []
    for i in range(cfg.train.eval_batches):
        x, y = corpus.batch(i, cfg.train.batch_size, cfg.model.seq_len, cfg.train.seed + 1, split="val")
        logits = model(x.to(device))
        losses.append(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.to(device).reshape(-1)).item())
    model.train()
    return sum(losses) / len(losses)


# settings a resumed run may change; any other difference means the checkpoint belongs to another run
RESUMABLE_CHANGES = ("output_dir", "device", "dist_backend", "train.log_interval", "train.eval_interval",
                     "train.eval_batches", "checkpoint", "debug")


def config_differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts, except the RESUMABLE_CHANGES."""
    diffs = []
    for key in sorted(set(saved) | set(current)):
        path = f"{prefix}{key}"
        if path in RESUMABLE_CHANGES:
            continue
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += config_differences(a, b, path + ".")
        elif a != b:
            diffs.append(f"{path}: checkpoint {a!r}, now {b!r}")
    return diffs


class MetricsLog:
    """Rank 0's JSONL metrics; on resume it drops records past the checkpoint's step."""

    def __init__(self, path: Path, enabled: bool, resume_step: int):
        self.path, self.enabled = path, enabled
        if enabled and path.exists():
            kept = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= resume_step]
            path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def train(cfg: DictConfig) -> dict:
    device, backend, tp_group, dp_group, tp, dp = setup_distributed(cfg)
    rank = dist.get_rank() if dist.is_initialized() else 0
    dp_rank = rank // tp
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"[rank {rank}] %(message)s", stream=sys.stdout, force=True)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    dtype = {"auto": torch.bfloat16 if device.type == "cuda" else torch.float32,
             "bf16": torch.bfloat16, "fp32": torch.float32}[cfg.train.dtype]
    recipe, hp_blocks = build_recipe(cfg)
    model_cfg = GPTConfig(**OmegaConf.to_container(cfg.model))
    model = GPT(model_cfg, recipe, tp_group=tp_group, sequence_parallel=cfg.parallel.sequence_parallel,
                high_precision_blocks=hp_blocks, compute_dtype=dtype).to(device)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.optim.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg.optim.lr, betas=tuple(cfg.optim.betas))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
    corpus = ByteCorpus(cfg.data.path, cfg.data.val_fraction, source=cfg.data.get("source"))

    start = 0
    state = checkpoint.load_latest(cfg.checkpoint.dir, map_location=device) if cfg.checkpoint.resume else None
    if state is not None:
        diffs = config_differences(state["config"], OmegaConf.to_container(cfg))
        if diffs:
            raise ValueError(f"the checkpoint in {cfg.checkpoint.dir} was written by a run with another config "
                             f"({'; '.join(diffs)}); use a fresh checkpoint.dir, or checkpoint.resume=false")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start = state["step"]
        log.info("resumed from %s at step %d", cfg.checkpoint.dir, start)
    metrics = MetricsLog(out / "metrics.jsonl", rank == 0, start)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("%s | world %d = tp %d x dp %d | %s %s | %s | %.2fM params/rank | %d steps", cfg.recipe.name,
             tp * dp, tp, dp, device.type, backend, dtype, n_params / 1e6, cfg.train.steps)

    tokens_per_step = cfg.train.batch_size * cfg.model.seq_len * dp
    t_run, tokens_run, loss = time.perf_counter(), 0, float("nan")
    for step in range(start + 1, cfg.train.steps + 1):
        maybe_crash(cfg, rank, "step", step)
        t0 = time.perf_counter()
        set_rng_step(model, step)
        x, y = corpus.batch(step, cfg.train.batch_size, cfg.model.seq_len, cfg.train.seed * 1000 + dp_rank)
        logits = model(x.to(device))
        loss_t = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.to(device).reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss_t.backward()
        allreduce_sequence_parallel_grads(model, tp_group)
        if dp > 1:
            for p in model.parameters():
                dist.all_reduce(p.grad, group=dp_group)
                p.grad.div_(dp)
            dist.all_reduce(loss_t.detach(), group=dp_group)
            loss_t = loss_t / dp
        grad_norm = float(clip_grad_norm_(model.parameters(), cfg.optim.grad_clip, tp_group))
        opt.step()
        sched.step()
        loss = loss_t.item()
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss is {loss} at step {step}")
        dt = time.perf_counter() - t0
        tokens_run += tokens_per_step
        if step % cfg.train.log_interval == 0 or step == cfg.train.steps:
            record = {"step": step, "loss": loss, "lr": sched.get_last_lr()[0], "grad_norm": grad_norm,
                      "tokens_per_s": tokens_per_step / dt, "step_time_s": dt}
            if step % cfg.train.eval_interval == 0 or step == cfg.train.steps:
                record["val_loss"] = evaluate(model, corpus, cfg, device)
            metrics.write(record)
            log.info("step %5d/%d | loss %.4f%s | lr %.2e | %8.0f tok/s | %.3f s/step", step, cfg.train.steps, loss,
                     f" | val {record['val_loss']:.4f}" if "val_loss" in record else "", record["lr"],
                     record["tokens_per_s"], dt)
        if step % cfg.checkpoint.interval == 0 or step == cfg.train.steps:
            state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                     "step": step, "config": OmegaConf.to_container(cfg)}
            checkpoint.save(cfg.checkpoint.dir, step, state, cfg.checkpoint.keep_last,
                            crash_hook=lambda: maybe_crash(cfg, rank, "checkpoint", step))

    elapsed = time.perf_counter() - t_run
    summary = {"recipe": cfg.recipe.name, "steps": cfg.train.steps, "resumed_from": start, "final_loss": loss,
               "tokens_per_s": tokens_run / elapsed if elapsed > 0 else None, "wall_s": elapsed,
               "world": tp * dp, "tp": tp, "device": str(device)}
    if start < cfg.train.steps and rank == 0:
        summary["val_loss"] = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1]).get("val_loss")
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        log.info("done: %s", json.dumps(summary))
    if dist.is_initialized():
        dist.destroy_process_group()
    return summary


@hydra.main(config_path="../configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    main()
