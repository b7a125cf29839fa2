"""The run directory: what a run writes, how it knows its own files, and what a start finds there.

    <output_dir>/run.json        {"run_id", "created", "config"}: written when the run starts
    <output_dir>/metrics.jsonl   one JSON object per logged step
    <output_dir>/health.jsonl    NVFP4 health stats every train.health_interval steps
    <output_dir>/summary.json    written when the run completes
    <output_dir>/tensorboard/    TensorBoard event files
    <checkpoint.dir>/step_N/     checkpoints, each with a manifest naming the run id (default
                                 checkpoint.dir: <output_dir>/checkpoints)

:func:`plan` reads (and changes nothing) what is there and decides: a ``new`` run, ``resume`` of
the run whose files these are (same config, except the :data:`RESUMABLE_CHANGES`), ``complete``
(that run has finished), or a :class:`RunDirError` refusal when the files belong to another run
(another config, files without ``run.json``, checkpoints with another run id or for another
model or recipe, or ``checkpoint.resume=false`` where this run's checkpoints are). The parallel
layout is no difference: a checkpoint of any (tp, dp) reshards. With ``overwrite=true`` a start
that finds any of these files is a new run that first deletes them (a torchrun restart of that
job resumes it, as any restart does).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from fp4dist import checkpoint
from fp4dist.metrics import atomic_write_text

from launch.checks import ConfigError

log = logging.getLogger("fp4dist.train")

RUN_FILE, METRICS, HEALTH, SUMMARY, TENSORBOARD = "run.json", "metrics.jsonl", "health.jsonl", "summary.json", "tensorboard"
OUTPUT_NAMES = (RUN_FILE, METRICS, HEALTH, SUMMARY, TENSORBOARD)

#: settings a resumed run may change; any other difference means the files belong to another run
RESUMABLE_CHANGES = ("output_dir", "overwrite", "device", "dist_backend", "parallel", "train.log_interval",
                     "train.eval_interval",
                     "train.eval_batches", "train.health_interval", "train.compile", "train.cuda_graph", "checkpoint",
                     "debug")


class RunDirError(ConfigError):
    """The output_dir / checkpoint.dir holds files this run may not use or replace; nothing was changed."""


@dataclass
class Plan:
    action: str                     # "new" | "resume" | "complete"
    run_id: str
    remove: list[Path] = field(default_factory=list)  # an earlier run's files that overwrite=true deletes
    note: str = ""                  # what to tell the user


def new_run_id() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"


def claim_timestamped_dir(recipe_name: str, root: str | Path = "outputs") -> Path:
    """Create and return ``<root>/<recipe>/<YYYY-mm-dd_HH-MM-SS>`` (``_1``, ``_2``... when taken)."""
    base = Path(root) / recipe_name / time.strftime("%Y-%m-%d_%H-%M-%S")
    base.parent.mkdir(parents=True, exist_ok=True)
    for i in range(1000):
        path = base if i == 0 else base.with_name(f"{base.name}_{i}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a new run directory next to {base}")


def set_dirs(cfg: DictConfig, output_dir: str | Path) -> None:
    """Fix ``output_dir`` and the default ``checkpoint.dir`` (``<output_dir>/checkpoints``) in ``cfg``."""
    cfg.output_dir = str(output_dir)
    if cfg.checkpoint.dir is None:
        cfg.checkpoint.dir = str(Path(output_dir) / "checkpoints")


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
            diffs.append(f"{path}: {a!r} there, {b!r} now")
    return diffs


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _checkpoint_dirs(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_"))


def _mismatched_checkpoint(ckpt_dirs: list[Path], cfg: DictConfig) -> str | None:
    """What differs between this config's model and recipe and those the newest checkpoint's manifest records."""
    complete = [p for p in ckpt_dirs if p.suffix != ".partial" and checkpoint.read_manifest(p) is not None]
    if not complete:
        return None
    manifest = checkpoint.read_manifest(complete[-1])
    diffs = [d for key in ("model", "recipe") if key in manifest
             for d in checkpoint.differences(manifest[key], OmegaConf.to_container(cfg[key], resolve=True), key + ".")]
    if diffs:
        return f"{complete[-1]} was written for another model or recipe ({'; '.join(diffs)})"
    return None


def plan(cfg: DictConfig, restart_of: str | None = None) -> Plan:
    """What this start does in ``cfg.output_dir`` (see the module docstring); reads, never writes.

    ``restart_of``: the run id that an earlier attempt of this same job (a torchrun restart)
    started or resumed: its files are this run's own whatever else the config says.
    """
    out, ckpt_root = Path(cfg.output_dir), Path(cfg.checkpoint.dir)
    info = _read_json(out / RUN_FILE)
    present = [out / n for n in OUTPUT_NAMES if (out / n).exists()]
    ckpt_dirs = _checkpoint_dirs(ckpt_root)
    summary = _read_json(out / SUMMARY)
    complete = info is not None and summary is not None and summary.get("run_id") == info.get("run_id")
    done = Plan("complete", (info or {}).get("run_id"), note=f"run {(info or {}).get('run_id')} in {out} is already "
                f"complete ({(summary or {}).get('steps')} steps); to train again use another output_dir or "
                f"overwrite=true")
    if restart_of is not None and info is not None and info.get("run_id") == restart_of:
        return done if complete else Plan("resume", restart_of)
    if info is None and not present and not ckpt_dirs:
        return Plan("new", new_run_id())
    earlier = present + ckpt_dirs
    if cfg.overwrite:
        return Plan("new", new_run_id(), earlier, f"overwrite=true: deleting the files of the earlier run in {out}")

    def refuse(problem: str) -> RunDirError:
        listing = ", ".join(str(p) for p in earlier[:6]) + (f" and {len(earlier) - 6} more" if len(earlier) > 6 else "")
        return RunDirError(f"{problem}. Nothing was changed. Start the run in another output_dir (leave output_dir "
                           f"unset for a new timestamped one), or pass overwrite=true to delete {listing} and start "
                           f"afresh.")

    if info is None:
        what = "an unreadable run.json" if (out / RUN_FILE).exists() else "no run.json"
        raise refuse(f"{out} holds another run's files ({', '.join(p.name for p in earlier)}) with {what}")
    run_id = info.get("run_id")
    diffs = config_differences(info.get("config") or {}, OmegaConf.to_container(cfg, resolve=True))
    if diffs:
        raise refuse(f"{out} holds run {run_id} with another config ({'; '.join(diffs)})")
    foreign = [p for p in ckpt_dirs if p.suffix != ".partial"
               and (checkpoint.read_manifest(p) or {}).get("run_id") != run_id]
    if foreign:
        ids = {str((checkpoint.read_manifest(p) or {}).get("run_id", "no manifest")) for p in foreign}
        raise refuse(f"{ckpt_root} holds checkpoints that run {run_id} did not write "
                     f"({', '.join(p.name for p in foreign)}: {', '.join(sorted(ids))})")
    mismatched = _mismatched_checkpoint(ckpt_dirs, cfg)
    if mismatched:
        raise refuse(mismatched)
    if complete:
        return done
    if not cfg.checkpoint.resume and checkpoint.complete_steps(ckpt_root):
        raise refuse(f"checkpoint.resume=false but {ckpt_root} holds checkpoints of run {run_id}")
    return Plan("resume", run_id)


def carry_out(plan_: Plan, cfg: DictConfig) -> None:
    """Rank 0: delete what ``plan_.remove`` lists and, for a new run, create the directory and its run.json."""
    for path in plan_.remove:
        log.warning("overwrite=true: deleting %s", path)
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    if plan_.action == "new":
        out = Path(cfg.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        record = {"run_id": plan_.run_id, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "config": OmegaConf.to_container(cfg, resolve=True)}
        atomic_write_text(out / RUN_FILE, json.dumps(record, indent=1) + "\n")


def outputs(cfg: DictConfig) -> dict[str, str]:
    """Where the run's outputs are, by name (for the closing summary and the 'complete' message)."""
    out = Path(cfg.output_dir)
    return {"metrics": str(out / METRICS), "health": str(out / HEALTH), "summary": str(out / SUMMARY),
            "checkpoints": str(cfg.checkpoint.dir), "tensorboard": str(out / TENSORBOARD),
            "plot": f"python launch/plot.py {out} -o {out / 'loss.png'} --health {out / 'health.png'}"}
