"""Start-up validation of the training config: every problem found before the first step.

:func:`validate` checks types and ranges of every key the job reads, the shapes the model and the
NVFP4 recipe need (head and tensor-parallel divisibility, 16-multiples), the devices, and
:func:`check_data` the corpus against ``model.seq_len`` (both the train and the eval split).
Problems are collected and raised together as one :class:`ConfigError`, whose message is meant to
be printed alone (no traceback).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fp4dist.backends import BACKENDS
from fp4dist.data import SOURCES, ByteCorpus


class ConfigError(ValueError):
    """The config cannot run; the message names each offending key and what it must be."""


def _kind(v) -> str:
    return f"{v!r} ({type(v).__name__})"


def integer(lo: int | None = None) -> Callable:
    def check(v):
        if isinstance(v, bool) or not isinstance(v, int):
            return f"must be an integer, got {_kind(v)}"
        if lo is not None and v < lo:
            return f"must be >= {lo}, got {v}"
    return check


def number(lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> Callable:
    def check(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return f"must be a number, got {_kind(v)}"
        if lo is not None and (v <= lo if lo_open else v < lo):
            return f"must be {'>' if lo_open else '>='} {lo}, got {v}"
        if hi is not None and v > hi:
            return f"must be <= {hi}, got {v}"
    return check


def boolean(v):
    if not isinstance(v, bool):
        return f"must be true or false, got {_kind(v)}"


def text(v):
    if not isinstance(v, str) or not v:
        return f"must be a non-empty string, got {_kind(v)}"


def choice(*options) -> Callable:
    def check(v):
        if v not in options:
            return f"must be one of {', '.join(map(str, options))}, got {_kind(v)}"
    return check


def optional(rule: Callable) -> Callable:
    return lambda v: None if v is None else rule(v)


def betas(v):
    if not isinstance(v, (list, tuple, ListConfig)) or len(v) != 2 or any(number(0, 1)(b) or b == 1 for b in v):
        return f"must be two numbers in [0, 1), got {v!r}"


#: key -> rule; a rule returns None or what is wrong with the value
RULES: dict[str, Callable] = {
    "output_dir": optional(text),
    "overwrite": boolean,
    "device": choice("auto", "cpu", "cuda"),
    "dist_backend": choice("auto", "nccl", "gloo"),
    "train.steps": integer(1),
    "train.batch_size": integer(1),
    "train.log_interval": integer(1),
    "train.eval_interval": integer(1),
    "train.eval_batches": integer(1),
    "train.health_interval": integer(0),
    "train.dtype": choice("auto", "bf16", "fp32"),
    "train.seed": integer(0),
    "train.compile": boolean,
    "train.cuda_graph": boolean,
    "model.vocab_size": integer(256),
    "model.seq_len": integer(1),
    "model.d_model": integer(1),
    "model.n_layers": integer(1),
    "model.n_heads": integer(1),
    "model.ffn_mult": integer(1),
    "model.init_std": number(0, lo_open=True),
    "model.seed": integer(0),
    "parallel.tp": optional(integer(1)),
    "parallel.sequence_parallel": boolean,
    "recipe.name": choice("nvfp4", "bf16"),
    "data.source": optional(choice(*SOURCES)),
    "data.path": optional(text),
    "data.val_fraction": number(0, 1, lo_open=True),
    "optim.lr": number(0, lo_open=True),
    "optim.betas": betas,
    "optim.weight_decay": number(0),
    "optim.warmup_steps": integer(0),
    "optim.min_lr_ratio": number(0, 1),
    "optim.grad_clip": number(0, lo_open=True),
    "checkpoint.dir": optional(text),
    "checkpoint.interval": integer(1),
    "checkpoint.keep_last": integer(0),
    "checkpoint.resume": boolean,
    "checkpoint.async_save": boolean,
    "checkpoint.init_from": optional(text),
    "debug.crash_rank": integer(0),
    "debug.crash_at_step": optional(integer(1)),
    "debug.crash_in_checkpoint_at_step": optional(integer(1)),
}
NVFP4_RULES: dict[str, Callable] = {
    "recipe.rht": boolean,
    "recipe.stochastic_rounding": boolean,
    "recipe.block_2d_weights": boolean,
    "recipe.seed": integer(0),
    "recipe.backend": choice(*BACKENDS),
}


def _value(cfg: DictConfig, key: str):
    try:
        return OmegaConf.select(cfg, key, throw_on_missing=True), None
    except OmegaConfBaseException as e:
        return None, f"{key} cannot be read: {e}".splitlines()[0]


def _shape_problems(cfg: DictConfig, world: int | None) -> list[str]:
    """What the model, the parallel layout and the NVFP4 recipe need of each other."""
    m, problems = cfg.model, []
    if m.d_model % m.n_heads:
        problems.append(f"model.d_model = {m.d_model} must be a multiple of model.n_heads = {m.n_heads}")
    if cfg.train.cuda_graph and world not in (None, 1):
        problems.append(f"train.cuda_graph=true runs on one process (one GPU) for now; this job has {world}")
    tp = cfg.parallel.tp or world
    if world is not None and world % tp:
        problems.append(f"parallel.tp = {tp} must divide the number of processes {world}")
    if tp is None:
        return problems
    if m.n_heads % tp:
        problems.append(f"model.n_heads = {m.n_heads} must be a multiple of the tensor-parallel size {tp}")
    ffn = m.ffn_mult * m.d_model
    for what, value in (("3 * model.d_model", 3 * m.d_model), ("model.d_model", m.d_model),
                        ("model.ffn_mult * model.d_model", ffn)):
        if value % tp:
            problems.append(f"{what} = {value} must be a multiple of the tensor-parallel size {tp}")
    sp = cfg.parallel.sequence_parallel and tp > 1
    if sp and m.seq_len % tp:
        problems.append(f"model.seq_len = {m.seq_len} must be a multiple of parallel.tp = {tp} for sequence "
                        f"parallelism (or parallel.sequence_parallel=false)")
    if cfg.recipe.name == "nvfp4" and not problems:
        rows = (m.seq_len // tp if sp else m.seq_len) * cfg.train.batch_size
        if rows % 16:
            problems.append(f"NVFP4 quantizes activations in 16-row blocks: (model.seq_len{' / tp' if sp else ''}) * "
                            f"train.batch_size = {rows} rows per rank must be a multiple of 16")
        for what, value in (("model.d_model", m.d_model), ("model.d_model / tp", m.d_model // tp),
                            ("3 * model.d_model / tp", 3 * m.d_model // tp), ("ffn / tp", ffn // tp)):
            if value % 16:
                problems.append(f"NVFP4 quantizes weight shards in 16x16 tiles: {what} = {value} must be a "
                                f"multiple of 16")
    return problems


def _hp_block_problems(cfg: DictConfig) -> list[str]:
    blocks, n = cfg.recipe.high_precision_blocks, cfg.model.n_layers
    if not isinstance(blocks, (list, ListConfig)) or any(isinstance(b, bool) or not isinstance(b, int) for b in blocks):
        return [f"recipe.high_precision_blocks must be a list of block indices, got {blocks!r}"]
    bad = [b for b in blocks if not -n <= b < n]
    if bad:
        return [f"recipe.high_precision_blocks {list(blocks)}: {bad} outside the model's {n} blocks "
                f"(indices {-n}..{n - 1})"]
    return []


def _device_problems(cfg: DictConfig) -> list[str]:
    cuda = torch.cuda.is_available()
    problems = []
    if cfg.device == "cuda" and not cuda:
        why = "this PyTorch is a CPU build" if torch.version.cuda is None else "no CUDA GPU is visible"
        problems.append(f"device=cuda but {why} (torch.cuda.is_available() is False): use device=cpu or device=auto")
    if cfg.dist_backend == "nccl" and not (cuda and cfg.device != "cpu"):
        problems.append("dist_backend=nccl needs CUDA GPUs: use dist_backend=gloo (or auto) on CPUs")
    if cfg.recipe.name == "nvfp4" and cfg.recipe.backend == "cuda" and not (cuda and cfg.device != "cpu"):
        problems.append("recipe.backend=cuda needs the model on a CUDA GPU: use recipe.backend=auto or reference")
    if cfg.train.cuda_graph:
        if not (cuda and cfg.device != "cpu"):
            problems.append("train.cuda_graph=true needs a CUDA GPU (CUDA graphs exist on GPUs only)")
        if cfg.train.health_interval:
            problems.append("train.cuda_graph=true replays a captured step, which cannot run the NVFP4 health hooks: "
                            "set train.health_interval=0")
    return problems


def _init_from_problems(cfg: DictConfig) -> list[str]:
    path = cfg.checkpoint.init_from
    if path is None:
        return []
    if not path.endswith((".safetensors", ".pt")):
        return [f"checkpoint.init_from = {path!r} must be a .safetensors or .pt file (python -m fp4dist.export writes "
                f"one from a checkpoint)"]
    if not Path(path).is_file():
        return [f"checkpoint.init_from = {path!r} is not a file"]
    return []


def validate(cfg: DictConfig, world: int | None = None) -> None:
    """Raise :class:`ConfigError` listing every problem of ``cfg`` (``world``: the number of processes,
    when known, for the parallel-layout checks)."""
    rules = dict(RULES, **(NVFP4_RULES if OmegaConf.select(cfg, "recipe.name") == "nvfp4" else {}))
    problems = []
    for key, rule in rules.items():
        value, unreadable = _value(cfg, key)
        why = unreadable or rule(value)
        if why:
            problems.append(why if unreadable else f"{key} {why}")
    if not problems:  # the cross-key checks assume well-typed values
        problems += _device_problems(cfg) + _shape_problems(cfg, world)
        if cfg.recipe.name == "nvfp4":
            problems += _hp_block_problems(cfg)
        problems += _init_from_problems(cfg)
        if cfg.data.source not in (None, "path") and cfg.data.path is not None:
            problems.append(f"data.path is set but data.source={cfg.data.source}: use data.source=path (or null)")
    if problems:
        raise ConfigError(_message(problems))


def check_data(cfg: DictConfig) -> ByteCorpus:
    """The run's corpus, checked to hold a sequence of ``model.seq_len`` in each split (ConfigError if not)."""
    try:
        corpus = ByteCorpus(cfg.data.path, cfg.data.val_fraction, source=cfg.data.source)
        corpus.check(cfg.model.seq_len)
    except (OSError, ValueError) as e:
        raise ConfigError(_message([str(e)])) from None
    return corpus


def _message(problems: list[str]) -> str:
    lines = "\n".join(f"  - {p}" for p in problems)
    return f"invalid training config ({len(problems)} problem{'s' * (len(problems) > 1)}):\n{lines}"
