"""Start-up validation: every bad command is refused before any rank starts, with the key and the reason."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from launch.preflight import FAILED, READY, preflight

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("overrides, message", [
    (["train.steps=abc"], r"train.steps must be an integer, got 'abc' \(str\)"),
    (["train.steps=1.5"], r"train.steps must be an integer, got 1.5"),
    (["train.batch_size=0"], r"train.batch_size must be >= 1, got 0"),
    (["optim.lr=-1e-3"], r"optim.lr must be > 0"),
    (["optim.betas=[0.9]"], r"optim.betas must be two numbers in \[0, 1\)"),
    (["data.val_fraction=1.5"], r"data.val_fraction must be <= 1"),
    (["checkpoint.resume=maybe"], r"checkpoint.resume must be true or false, got 'maybe'"),
    (["train.compile=1"], r"train.compile must be true or false"),
    (["checkpoint.async_save=yes"], r"checkpoint.async_save must be true or false"),
    (["checkpoint.init_from=model.bin"], r"checkpoint.init_from = 'model.bin' must be a .safetensors or .pt file"),
    (["checkpoint.init_from=/nonexistent/model.pt"], r"checkpoint.init_from = '/nonexistent/model.pt' is not a file"),
    (["recipe.backend=tpu"], r"recipe.backend must be one of auto, reference, cuda"),
    (["recipe.high_precision_blocks=[0,4]"], r"recipe.high_precision_blocks \[0, 4\]: \[4\] outside the model's 4 blocks"),
    (["recipe.high_precision_blocks=[-5]"], r"\[-5\] outside the model's 4 blocks \(indices -4..3\)"),
    (["parallel.tp=3"], r"parallel.tp = 3 must divide the number of processes 2"),
    (["model.n_heads=3"], r"model.d_model = 128 must be a multiple of model.n_heads = 3"),
    (["model.d_model=136", "model.n_heads=2", "parallel.tp=1"], r"16x16 tiles: model.d_model = 136"),
    (["model.seq_len=40", "train.batch_size=2"], r"\(model.seq_len / tp\) \* train.batch_size = 40 rows"),
    (["train.cuda_graph=true"], r"train.cuda_graph=true needs a CUDA GPU"),
    (["train.steps=abc", "optim.lr=0"], r"2 problems"),
    (["train.stepz=3"], r"bad command-line override: Could not override 'train.stepz'"),
    (["model=huge"], r"bad command-line override: .*Could not find 'model/huge'.*tiny"),
    (["train.steps=[1"], r"bad command-line override"),
])
def test_bad_config_is_refused_with_the_key_and_the_reason(overrides, message):
    status, text = preflight(2, overrides)
    assert status == FAILED
    assert re.search(message, text, flags=re.S), text


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_device_cuda_without_a_gpu():
    status, text = preflight(2, ["device=cuda"])
    assert status == FAILED and "device=cuda but" in text and "use device=cpu or device=auto" in text
    assert "dist_backend=nccl needs CUDA" in preflight(2, ["dist_backend=nccl"])[1]


def test_data_too_small_for_the_eval_split_or_empty(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    status, text = preflight(2, ["data.source=path", f"data.path={empty}"])
    assert status == FAILED and f"data.path '{empty}' is empty" in text
    short = tmp_path / "short.txt"
    short.write_bytes(b"x" * 2000)  # 100 validation bytes < seq_len + 1: caught before training, not at the eval
    status, text = preflight(2, [f"data.path={short}"])
    assert status == FAILED and "has 100 val bytes, fewer than seq_len + 1 = 129" in text
    assert "raise data.val_fraction" in text
    assert preflight(2, [f"data.path={short}", "model.seq_len=64"])[0] == READY
    assert "is not a file" in preflight(2, [f"data.path={tmp_path / 'missing.txt'}"])[1]


def test_the_default_command_is_ready_and_changes_nothing(tmp_path):
    assert preflight(2, []) == (READY, "")
    assert preflight(2, [f"output_dir={tmp_path / 'run'}"]) == (READY, "")
    assert not (tmp_path / "run").exists()


def train_sh(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "launch" / "train.sh"), *args], cwd=cwd,
                          env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=120)


def test_train_sh_reports_a_bad_override_once_without_starting_torchrun(tmp_path):
    proc = train_sh("train.steps=abc", "optim.lr=0", cwd=tmp_path)
    assert proc.returncode == FAILED
    assert proc.stderr.count("train.steps must be an integer") == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout and "[rank" not in proc.stdout + proc.stderr
    assert not (tmp_path / "outputs").exists()


def test_train_sh_help_describes_the_job():
    proc = train_sh("--help", cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    for needle in ("metrics.jsonl", "health.jsonl", "summary.json", "tensorboard", "checkpoints",
                   "overwrite=true", "already complete", "model=tiny|small|medium", "NPROC", "== Config groups =="):
        assert needle in proc.stdout, needle


def test_preflight_runs_as_a_script_from_any_directory():
    """python launch/preflight.py works from any directory (the launch package is found beside it)."""
    proc = subprocess.run([sys.executable, str(ROOT / "launch" / "preflight.py"), "--nproc", "2", "train.steps=x"],
                          cwd="/", capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == FAILED and "train.steps must be an integer" in proc.stderr
