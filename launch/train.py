"""Train a tensor-parallel byte-level GPT with NVFP4 (or bf16) under torchrun; see configs/train.yaml.

    bash launch/train.sh                       # 2 ranks, tiny model, NVFP4, CPU (gloo) or GPUs (NCCL)
    bash launch/train.sh recipe=bf16           # the baseline
    bash launch/train.sh --help                # the job, its outputs and the main overrides

Each run writes into its own directory (``output_dir``, default ``outputs/<recipe>/<timestamp>``):
``run.json``, ``metrics.jsonl``, ``health.jsonl``, ``summary.json``, ``tensorboard/`` and
``checkpoints/`` (see launch/rundir.py). A restarted job resumes from the newest good checkpoint
with the same losses it would have had (data order and SR draws are functions of the step).
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import signal
import sys
import time
from contextlib import nullcontext
from datetime import timedelta
from pathlib import Path

if __package__ in (None, ""):  # run as a script (torchrun launch/train.py): import the launch package by name
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hydra
import torch
import torch.distributed as dist
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from fp4dist import HighPrecisionRecipe, NVFP4Recipe, checkpoint
from fp4dist.health import HealthMonitor, flatten
from fp4dist.metrics import FINAL_LOSS_WINDOW, JsonlLog, TensorBoardLog, atomic_write_text, final_loss, read_jsonl
from fp4dist.model import GPT, GPTConfig
from fp4dist.graphs import CapturedStep
from fp4dist.parallel import allreduce_sequence_parallel_grads, clip_grad_norm_, set_rng_step

from launch import checks, rundir
from launch.progress import Progress

log = logging.getLogger("fp4dist.train")

# keys in torchrun's store, which outlives a restart of the ranks: what the job's first attempt decided
OUTPUT_DIR_KEY, RUN_ID_KEY, FATAL_KEY = "fp4dist/output_dir", "fp4dist/run_id", "fp4dist/fatal"
# metrics.jsonl key -> TensorBoard tag
TENSORBOARD_TAGS = {"loss": "train/loss", "lr": "train/lr", "grad_norm": "train/grad_norm", "val_loss": "val/loss",
                    "tokens_per_s": "perf/tokens_per_s", "step_time_s": "perf/step_time_s",
                    "peak_mem_gib": "perf/peak_mem_gib", "tflops_per_gpu": "perf/tflops_per_gpu"}


def job_store(rank: int, world: int) -> dist.Store | None:
    """torchrun's store (None outside torchrun); it lives as long as the job, across restarts."""
    if "MASTER_ADDR" not in os.environ:
        return None
    agent_hosts_it = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "False") == "True"
    return dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                         is_master=rank == 0 and not agent_hosts_it, timeout=timedelta(minutes=5))


def attempt_store(store: dist.Store) -> dist.Store:
    """The job store under a prefix of its own for each restart attempt.

    Without the prefix, restarted ranks can read the previous attempt's gloo addresses and fail to
    connect ("Connection refused") or hang.
    """
    return dist.PrefixStore(f"fp4dist/attempt{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def store_get(store: dist.Store | None, key: str) -> str | None:
    return store.get(key).decode() if store is not None and store.check([key]) else None


def setup_distributed(cfg: DictConfig, store: dist.Store | None):
    """Init the process group from torchrun's environment; returns (device, backend, tp_group, dp_group, tp, dp)."""
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
    if store is not None:
        dist.init_process_group(backend, store=attempt_store(store), rank=rank, world_size=world,
                                timeout=timedelta(minutes=5), device_id=device if backend == "nccl" else None)
    tp = cfg.parallel.tp or world
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


def agree_run(cfg: DictConfig, store: dist.Store | None, rank: int) -> rundir.Plan:
    """Rank 0 fixes the output directory and decides the plan; every rank, and every restart of the
    job, gets the same (the directory and run id go into torchrun's store). Sets cfg's dirs."""
    decision = None
    if rank == 0:
        try:
            out = cfg.output_dir or store_get(store, OUTPUT_DIR_KEY)
            if out is None:
                out = str(rundir.claim_timestamped_dir(cfg.recipe.name))
                if store is not None:
                    store.set(OUTPUT_DIR_KEY, out)
            rundir.set_dirs(cfg, out)
            decision = (out, rundir.plan(cfg, restart_of=store_get(store, RUN_ID_KEY)), None)
        except rundir.RunDirError as e:
            decision = (None, None, str(e))
    if dist.is_initialized():
        box = [decision]
        dist.broadcast_object_list(box, src=0)
        decision = box[0]
    out, plan, error = decision
    if error is not None:
        raise rundir.RunDirError(error)
    rundir.set_dirs(cfg, out)
    return plan


def build_recipe(cfg: DictConfig):
    if cfg.recipe.name == "bf16":
        return HighPrecisionRecipe(), ()
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


EAGER_STEPS = 3  # with train.cuda_graph: eager steps before the capture


def make_train_step(cfg: DictConfig, model, opt, sched, tp_group, dp_group, dp: int):
    """``train_step(x, y) -> (loss, grad_norm)``: forward, backward, gradient reductions, clipping and the
    optimizer and scheduler steps, with no host sync of its own (the caller reads the results on
    log steps). x, y: int64 [batch, seq_len] on the model's device; loss: fp32 0-dim device tensor,
    the mean over data-parallel ranks; grad_norm: the pre-clipping global norm (what
    ``clip_grad_norm_`` returns: a 0-dim tensor or a float).
    """
    forward = torch.compile(model) if cfg.train.compile else model

    def step_without_schedule(x: torch.Tensor, y: torch.Tensor):
        logits = forward(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        allreduce_sequence_parallel_grads(model, tp_group)
        loss = loss.detach()
        if dp > 1:
            for p in model.parameters():
                dist.all_reduce(p.grad, group=dp_group)
                p.grad.div_(dp)
            dist.all_reduce(loss, group=dp_group)
            loss = loss / dp
        grad_norm = clip_grad_norm_(model.parameters(), cfg.optim.grad_clip, tp_group)
        opt.step()
        return loss, grad_norm

    if not cfg.train.cuda_graph:
        def train_step(x, y):
            out = step_without_schedule(x, y)
            sched.step()
            return out
        return train_step
    # The first EAGER_STEPS steps run eagerly (they warm up autograd, cuBLAS and the optimizer state); the next
    # one is captured (capture runs nothing) and replayed, then every later step replays the graph. Per-step
    # values live in device memory: the SR offsets (set_rng_step), the lr tensor (the scheduler fills it).
    state = {"calls": 0, "graph": None}

    def graphed_step(x, y):
        state["calls"] += 1
        if state["calls"] <= EAGER_STEPS:
            out = step_without_schedule(x, y)
        else:
            if state["graph"] is None:
                state["graph"] = CapturedStep(step_without_schedule, x, y, optimizer=opt, warmup=0)
            out = tuple(t.clone() for t in state["graph"](x, y))
        sched.step()
        return out
    return graphed_step


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


def model_params(model: torch.nn.Module, tp: int, skip: tuple[str, ...] = ()) -> int:
    """Parameters of the whole model, every TP shard counted, except those named in ``skip``."""
    return sum(p.numel() * (tp if getattr(p, "tensor_parallel", False) else 1)
               for n, p in model.named_parameters() if n not in skip)


def peak_memory_gib(device: torch.device) -> float:
    """GPU: the peak PyTorch allocated on ``device``; CPU: this process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def closing_lines(cfg: DictConfig, tensorboard_written: bool) -> list[str]:
    paths = rundir.outputs(cfg)
    steps = checkpoint.complete_steps(cfg.checkpoint.dir)
    lines = [f"  metrics      {paths['metrics']}", f"  summary      {paths['summary']}",
             f"  checkpoints  {paths['checkpoints']} ({', '.join(f'step {s}' for s in steps) or 'none'})"]
    if cfg.train.health_interval and cfg.recipe.name == "nvfp4":
        lines.insert(1, f"  health       {paths['health']}")
    lines.append(f"  tensorboard  tensorboard --logdir {paths['tensorboard']}" if tensorboard_written
                 else "  tensorboard  not written (pip install tensorboard)")
    lines.append(f"  plot         {paths['plot']}")
    return lines


def build(cfg: DictConfig, device: torch.device, tp_group):
    """(recipe, model, optimizer, LR scheduler) of the config, the model on ``device``. On a GPU the optimizer is
    fused and capturable, its lr a device tensor that the scheduler fills (between replays with
    train.cuda_graph), so eager and captured steps run the same update and give the same losses."""
    fused = device.type == "cuda"
    dtype = {"auto": torch.bfloat16 if device.type == "cuda" else torch.float32,
             "bf16": torch.bfloat16, "fp32": torch.float32}[cfg.train.dtype]
    recipe, hp_blocks = build_recipe(cfg)
    model = GPT(GPTConfig(**OmegaConf.to_container(cfg.model)), recipe, tp_group=tp_group,
                sequence_parallel=cfg.parallel.sequence_parallel, high_precision_blocks=hp_blocks,
                compute_dtype=dtype).to(device)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.optim.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=torch.tensor(cfg.optim.lr, device=device) if fused else cfg.optim.lr,
                            betas=tuple(cfg.optim.betas), capturable=fused, fused=fused or None)
    return recipe, model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))


def begin(cfg: DictConfig, plan: rundir.Plan, model, opt, sched, device, rank: int, store) -> int:
    """Carry out the plan: load the checkpoint to resume from (first, so that a refusal changes no
    file), then on rank 0 delete what overwrite=true removes and write run.json. Returns the step."""
    out, start = Path(cfg.output_dir), 0
    loaded = checkpoint.load_latest(cfg.checkpoint.dir, map_location=device, run_id=plan.run_id) \
        if plan.action == "resume" else None  # raises CheckpointError (nothing changed) when none is usable
    if rank == 0:
        if plan.note:
            log.warning("%s", plan.note)
        rundir.carry_out(plan, cfg)
        if store is not None:
            store.set(RUN_ID_KEY, plan.run_id)  # a restart of this job continues this run
    if loaded is not None:
        state, start = loaded
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        log.info("resumed run %s from %s at step %d", plan.run_id, cfg.checkpoint.dir, start)
    elif plan.action == "resume":
        log.info("run %s in %s has no checkpoint yet: starting at step 0", plan.run_id, out)
    else:
        log.info("new run %s in %s", plan.run_id, out)
    if dist.is_initialized():
        dist.barrier()  # run.json is written and the earlier run's files are gone before any rank writes
    return start


def write_summary(cfg: DictConfig, plan: rundir.Plan, start: int, tokens_per_step: int, elapsed: float,
                  device: torch.device, tp: int, tensorboard_written: bool) -> dict:
    """Rank 0: summary.json (atomically) from the whole metrics.jsonl, and the closing lines."""
    out = Path(cfg.output_dir)
    records, _ = read_jsonl(out / rundir.METRICS)
    vals = [r["val_loss"] for r in records if "val_loss" in r]
    ran, world = cfg.train.steps - start, int(os.environ.get("WORLD_SIZE", 1))
    summary = {"run_id": plan.run_id, "recipe": cfg.recipe.name, "steps": cfg.train.steps, "resumed_from": start,
               "final_loss": final_loss(records), "final_loss_window": FINAL_LOSS_WINDOW,
               "val_loss": vals[-1] if vals else None,
               "tokens_per_s": tokens_per_step * ran / elapsed if ran else None, "wall_s": elapsed,
               "world": world, "tp": tp, "dp": world // tp, "device": str(device), "outputs": rundir.outputs(cfg)}
    atomic_write_text(out / rundir.SUMMARY, json.dumps(summary, indent=2) + "\n")
    log.info("done: run %s, %d steps | final loss %.4f (mean of the last %d logged steps) | val loss %s\n%s",
             plan.run_id, cfg.train.steps, summary["final_loss"], FINAL_LOSS_WINDOW,
             "n/a" if summary["val_loss"] is None else f"{summary['val_loss']:.4f}",
             "\n".join(closing_lines(cfg, tensorboard_written)))
    return summary


def train(cfg: DictConfig, store: dist.Store | None = None) -> dict:
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    checks.validate(cfg, world)
    corpus = checks.check_data(cfg)
    device, backend, tp_group, dp_group, tp, dp = setup_distributed(cfg, store)
    dp_rank = rank // tp
    plan = agree_run(cfg, store, rank)
    out = Path(cfg.output_dir)
    if plan.action == "complete":
        if rank == 0:
            log.info("%s; its outputs:\n%s", plan.note, "\n".join(closing_lines(cfg, (out / rundir.TENSORBOARD).is_dir())))
        return {"complete": True, "run_id": plan.run_id}

    recipe, model, opt, sched = build(cfg, device, tp_group)
    start = begin(cfg, plan, model, opt, sched, device, rank, store)
    metrics = JsonlLog(out / rundir.METRICS, rank == 0, resume_step=start)
    monitor = HealthMonitor(model, tp_group) if cfg.train.health_interval and isinstance(recipe, NVFP4Recipe) else None
    health_log = JsonlLog(out / rundir.HEALTH, rank == 0 and monitor is not None, resume_step=start)
    tb = TensorBoardLog(out / rundir.TENSORBOARD, rank == 0, resume_step=start)
    n_matmul = model_params(model, tp, skip=("tok_emb", "pos_emb"))  # those that multiply activations: 6N FLOPs
    log.info("%s | world %d = tp %d x dp %d | %s %s | %s | %.2fM params (%.2fM on this rank) | steps %d..%d",
             cfg.recipe.name, world, tp, dp, device.type, backend, model.compute_dtype, model_params(model, tp) / 1e6,
             sum(p.numel() for p in model.parameters()) / 1e6, start + 1, cfg.train.steps)

    train_step = make_train_step(cfg, model, opt, sched, tp_group, dp_group, dp)
    progress = Progress(cfg.train.steps, start, enabled=rank == 0)
    tokens_per_step = cfg.train.batch_size * cfg.model.seq_len * dp
    t_run = t_mark = time.perf_counter()
    timed, extra_s = 0, 0.0  # steps since the last log step; time spent outside train_step in them
    for step in range(start + 1, cfg.train.steps + 1):
        maybe_crash(cfg, rank, "step", step)
        set_rng_step(model, step)
        x, y = corpus.batch(step, cfg.train.batch_size, cfg.model.seq_len, cfg.train.seed * 1000 + dp_rank)
        health = monitor is not None and step % cfg.train.health_interval == 0
        with monitor.capture() if health else nullcontext():
            loss_t, grad_norm = train_step(x.to(device), y.to(device))
        timed += 1
        progress.update(step)
        if health:
            t0 = time.perf_counter()
            stats = monitor.collect()
            health_log.write({"step": step, "layers": stats})
            tb.scalars(step, flatten(stats))
            extra_s += time.perf_counter() - t0
        log_step = step % cfg.train.log_interval == 0 or step == cfg.train.steps
        save_step = step % cfg.checkpoint.interval == 0 or step == cfg.train.steps
        if log_step or save_step:
            loss = float(loss_t)  # the host sync: never inside train_step
            if not math.isfinite(loss):
                raise FloatingPointError(f"loss is {loss} at step {step}")
        if log_step:
            dt = (time.perf_counter() - t_mark - extra_s) / timed
            record = {"step": step, "loss": loss, "lr": float(sched.get_last_lr()[0]), "grad_norm": float(grad_norm),
                      "tokens_per_s": tokens_per_step / dt, "step_time_s": dt,
                      "peak_mem_gib": peak_memory_gib(device)}
            if device.type == "cuda":  # achieved TFLOP/s per GPU: 6 * params * tokens / step time / GPUs
                record["tflops_per_gpu"] = 6 * n_matmul * tokens_per_step / dt / world / 1e12
            if step % cfg.train.eval_interval == 0 or step == cfg.train.steps:
                record["val_loss"] = evaluate(model, corpus, cfg, device)
            metrics.write(record)
            tb.scalars(step, {tag: record.get(key) for key, tag in TENSORBOARD_TAGS.items()})
            progress.report(step, record, timed)
            t_mark, timed, extra_s = time.perf_counter(), 0, 0.0
        if save_step:
            t0 = time.perf_counter()
            state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                     "step": step, "config": OmegaConf.to_container(cfg)}
            checkpoint.save(cfg.checkpoint.dir, step, state, cfg.checkpoint.keep_last, run_id=plan.run_id,
                            crash_hook=lambda: maybe_crash(cfg, rank, "checkpoint", step))
            extra_s += time.perf_counter() - t0
    progress.close()
    elapsed = time.perf_counter() - t_run
    metrics.close()
    health_log.close()
    tb.close()
    return write_summary(cfg, plan, start, tokens_per_step, elapsed, device, tp, tb.log_dir.is_dir()) if rank == 0 else {}


def run(cfg: DictConfig) -> int:
    """The job on this rank: 0 when done (or already complete), 2 after a refusal that no restart can fix."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"[rank {rank}] %(message)s", stream=sys.stdout, force=True)
    store = job_store(rank, world)
    fatal = store_get(store, FATAL_KEY)
    if fatal is not None:  # an earlier attempt of this job refused: repeating it cannot help
        print(f"[rank {rank}] error (not retried; the job's first attempt stopped with it): {fatal}",
              file=sys.stderr, flush=True)
        return 2
    try:
        train(cfg, store)
    except (checks.ConfigError, checkpoint.CheckpointError) as e:
        if store is not None:
            store.set(FATAL_KEY, str(e))
        print(f"[rank {rank}] error: {e}", file=sys.stderr, flush=True)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


@hydra.main(config_path="../configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    code = run(cfg)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
