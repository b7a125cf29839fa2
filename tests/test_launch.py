"""The real launch script under torchrun: metrics, restarts after a killed rank, interrupted saves."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model=tiny", "model.d_model=32", "model.n_layers=2", "model.n_heads=2", "model.seq_len=32",
        "train.batch_size=4", "train.log_interval=1", "train.eval_interval=1000", "train.eval_batches=1",
        "optim.warmup_steps=2"]


def torchrun(out_dir: Path, *overrides: str, max_restarts: int = 0, timeout: int = 150,
             expect_success: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           f"--max-restarts={max_restarts}", str(ROOT / "launch" / "train.py"), *TINY,
           f"output_dir={out_dir}", "device=cpu", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if expect_success:
        assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def losses(out_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records]
    assert steps == sorted(set(steps)), f"steps logged twice or out of order: {steps}"
    return {r["step"]: r["loss"] for r in records}


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["nvfp4", "bf16"])
def test_launch_writes_metrics(tmp_path, recipe):
    proc = torchrun(tmp_path, f"recipe={recipe}", "train.steps=6", "parallel.tp=2")
    got = losses(tmp_path)
    assert list(got) == [1, 2, 3, 4, 5, 6]
    assert all(torch.isfinite(torch.tensor(v)) for v in got.values())
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["recipe"] == recipe and summary["tp"] == 2 and summary["steps"] == 6
    assert "step     6/6" in proc.stdout
    assert (tmp_path / "checkpoints" / "step_00000006" / "rank00001.pt").is_file()


@pytest.mark.slow
def test_killed_rank_restarts_with_identical_losses(tmp_path):
    common = ["recipe=nvfp4", "train.steps=10", "checkpoint.interval=3"]
    torchrun(tmp_path / "clean", *common)
    proc = torchrun(tmp_path / "killed", *common, "debug.crash_at_step=8", "debug.crash_rank=1", max_restarts=1)
    assert "killing rank 1 at step of step 8" in proc.stdout + proc.stderr
    assert "resumed from" in proc.stdout and "at step 6" in proc.stdout
    clean, killed = losses(tmp_path / "clean"), losses(tmp_path / "killed")
    assert list(clean) == list(range(1, 11))
    assert killed == clean  # bitwise: same floats at every step


@pytest.mark.slow
def test_kill_during_checkpoint_write_leaves_a_loadable_checkpoint(tmp_path):
    common = ["recipe=nvfp4", "train.steps=8", "checkpoint.interval=3"]
    torchrun(tmp_path / "clean", *common)
    proc = torchrun(tmp_path / "killed", *common, "debug.crash_in_checkpoint_at_step=6", max_restarts=1)
    out = proc.stdout + proc.stderr
    assert "killing rank 1 at checkpoint of step 6" in out
    assert "ignoring incomplete checkpoint" in out and "step_00000006.partial" in out
    assert "at step 3" in out  # resumed from the last complete checkpoint
    assert losses(tmp_path / "killed") == losses(tmp_path / "clean")
    assert not list((tmp_path / "killed" / "checkpoints").glob("*.partial"))


@pytest.mark.slow
def test_resume_refuses_a_checkpoint_of_another_run(tmp_path):
    torchrun(tmp_path, "recipe=nvfp4", "train.steps=3", "checkpoint.interval=3")
    proc = torchrun(tmp_path, "recipe=nvfp4", "train.steps=6", "optim.lr=1e-3", expect_success=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "written by a run with another config" in out and "optim.lr" in out and "train.steps" in out
