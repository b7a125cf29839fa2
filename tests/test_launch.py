"""The real launch script under torchrun: outputs, restarts after a killed rank or an interrupted save,
damaged checkpoints and metrics, and the refusals that leave an earlier run's files as they were."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fp4dist import checkpoint
from fp4dist.metrics import final_loss
from test_checkpoint import corrupt, snapshot

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model=tiny", "model.d_model=32", "model.n_layers=2", "model.n_heads=2", "model.seq_len=32",
        "train.batch_size=4", "train.log_interval=1", "train.eval_interval=1000", "train.eval_batches=1",
        "optim.warmup_steps=2", "train.health_interval=0", "device=cpu"]
# the run that the fault-injection tests compare with: checkpoints at steps 3, 6, 9 and 10
COMMON = ["recipe=nvfp4", "train.steps=10", "checkpoint.interval=3", "checkpoint.keep_last=3"]


def torchrun(out_dir: Path | None, *overrides: str, nproc: int = 2, max_restarts: int = 0, timeout: int = 150,
             expect_success: bool = True, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """launch/train.py under torchrun (``out_dir`` None: the default, a new timestamped directory)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           f"--max-restarts={max_restarts}", str(ROOT / "launch" / "train.py"), *TINY,
           *([f"output_dir={out_dir}"] if out_dir else []), *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if expect_success:
        assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def train_sh(*args: str, cwd: Path = ROOT, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "launch" / "train.sh"), *TINY, *args], cwd=cwd,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, capture_output=True, text=True,
                          timeout=120)


def losses(out_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records]
    assert steps == sorted(set(steps)), f"steps logged twice or out of order: {steps}"
    return {r["step"]: r["loss"] for r in records}


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    """An uninterrupted run of COMMON."""
    out = tmp_path_factory.mktemp("clean") / "run"
    torchrun(out, *COMMON)
    assert list(losses(out)) == list(range(1, 11))
    return out


@pytest.fixture(scope="module")
def crashed(tmp_path_factory) -> Path:
    """COMMON killed at step 8 without a restart: checkpoints of steps 3 and 6, metrics up to step 7."""
    out = tmp_path_factory.mktemp("crashed") / "run"
    proc = torchrun(out, *COMMON, "debug.crash_at_step=8", expect_success=False)
    assert proc.returncode != 0 and "killing rank 1 at step of step 8" in proc.stdout + proc.stderr
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000003", "step_00000006"]
    return out


def copy_of(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["nvfp4", "bf16"])
def test_launch_writes_its_outputs(tmp_path, recipe):
    proc = torchrun(tmp_path, f"recipe={recipe}", "train.steps=6", "parallel.tp=2", "train.health_interval=2")
    got = losses(tmp_path)
    assert list(got) == [1, 2, 3, 4, 5, 6] and all(torch.isfinite(torch.tensor(v)) for v in got.values())
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {"lr", "grad_norm", "tokens_per_s", "step_time_s", "peak_mem_gib"} <= set(records[0])
    summary = json.loads((tmp_path / "summary.json").read_text())
    run = json.loads((tmp_path / "run.json").read_text())
    assert summary["recipe"] == recipe and summary["tp"] == 2 and summary["steps"] == 6
    assert summary["run_id"] == run["run_id"] and summary["final_loss"] == final_loss(records)
    assert "step     6/6" in proc.stdout and "ETA" in proc.stdout
    for what in ("metrics.jsonl", "summary.json", "checkpoints", "launch/plot.py", "tensorboard"):
        assert what in proc.stdout.split("done:")[-1], what  # the closing summary says where everything went
    manifest = json.loads((tmp_path / "checkpoints" / "step_00000006" / "manifest.json").read_text())
    assert manifest["layout"] == {"tp": 2, "dp": 1, "sequence_parallel": True} and manifest["recipe"]["name"] == recipe
    assert {".metadata", "__0_0.distcp", "__1_0.distcp"} <= set(manifest["files"])
    assert [r["step"] for r in records if "checkpoint_s" in r] == [6] and records[-1]["checkpoint_s"] >= 0
    if recipe == "nvfp4":
        health = [json.loads(line) for line in (tmp_path / "health.jsonl").read_text().splitlines()]
        assert [h["step"] for h in health] == [2, 4, 6]
        assert set(health[0]["layers"]) == {f"blocks.{b}.{m}" for b in (0, 1)
                                           for m in ("attn.qkv", "attn.out", "mlp.up", "mlp.down")}
        stats = health[0]["layers"]["blocks.0.mlp.up"]["X"]
        assert stats["amax"] > 0 and 0 < stats["rel_err"] < 0.5 and 0 <= stats["zeroed"] < 1
    else:
        assert not (tmp_path / "health.jsonl").exists()
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        assert "tensorboard is not installed" in proc.stdout
    else:
        assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_killed_rank_restarts_in_the_same_directory_with_identical_losses(tmp_path, clean):
    proc = torchrun(None, *COMMON, "debug.crash_at_step=8", "debug.crash_rank=1", max_restarts=1, cwd=tmp_path)
    assert "killing rank 1 at step of step 8" in proc.stdout + proc.stderr
    runs = list((tmp_path / "outputs" / "nvfp4").iterdir())
    assert len(runs) == 1, f"the restart started another directory: {runs}"
    assert "resumed run" in proc.stdout and "at step 6" in proc.stdout
    assert losses(runs[0]) == losses(clean)  # bitwise: same floats at every step


@pytest.mark.slow
@pytest.mark.parametrize("async_save", ["false", "true"])
def test_kill_during_checkpoint_write_leaves_a_loadable_checkpoint(tmp_path, clean, async_save):
    """A rank killed after writing its DCP files of step 6, before the manifest (with async_save=true: when
    that background save is completed, at the save of step 9): the restart resumes from step 3."""
    proc = torchrun(tmp_path, *COMMON, "debug.crash_in_checkpoint_at_step=6", f"checkpoint.async_save={async_save}",
                    max_restarts=1)
    out = proc.stdout + proc.stderr
    assert "killing rank 1 at checkpoint of step 6" in out
    assert "ignoring incomplete checkpoint" in out and "step_00000006.partial" in out
    assert "at step 3" in out  # resumed from the last complete checkpoint
    assert losses(tmp_path) == losses(clean)
    assert not list((tmp_path / "checkpoints").glob("*.partial"))


@pytest.mark.slow
def test_corrupt_newest_checkpoint_resumes_from_the_previous_one(tmp_path, gen, crashed, clean):
    run = copy_of(crashed, tmp_path)
    bad = run / "checkpoints" / "step_00000006" / "__1_0.distcp"
    corrupt(bad, gen)
    proc = torchrun(run, *COMMON)
    for rank in (0, 1):  # loudly, on every rank, naming the file
        assert f"[rank {rank}] checkpoint step 6 is unusable" in proc.stdout, proc.stdout[-3000:]
    assert f"{bad} is corrupt" in proc.stdout and "at step 3" in proc.stdout
    assert losses(run) == losses(clean)


@pytest.mark.slow
def test_torn_metrics_line_is_dropped_on_resume(tmp_path, crashed, clean):
    run = copy_of(crashed, tmp_path)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 8, "loss": 2.')  # the write that a kill cut short
    proc = torchrun(run, *COMMON)
    assert "dropped a torn last line" in proc.stdout and "at step 6" in proc.stdout
    assert losses(run) == losses(clean)


@pytest.mark.slow
def test_every_checkpoint_corrupt_refuses_once_and_changes_nothing(tmp_path, gen, crashed):
    run = copy_of(crashed, tmp_path)
    for step in (3, 6):
        corrupt(run / "checkpoints" / f"step_{step:08d}" / "__0_0.distcp", gen)
    before = snapshot(run)
    proc = torchrun(run, *COMMON, max_restarts=1, expect_success=False)
    assert proc.returncode != 0
    assert "no checkpoint in" in proc.stderr and "Nothing was changed" in proc.stderr
    assert "not retried" in proc.stderr  # the restart stops at once instead of trying again
    proc = train_sh(f"output_dir={run}", *COMMON)  # train.sh finds it before torchrun starts: said once
    assert proc.returncode == 2 and proc.stderr.count("no checkpoint in") == 1 and "[rank" not in proc.stderr
    assert snapshot(run) == before


@pytest.mark.slow
def test_async_save_restarts_with_identical_losses(tmp_path, clean):
    proc = torchrun(tmp_path, *COMMON, "checkpoint.async_save=true", "debug.crash_at_step=8", max_restarts=1)
    assert "written in the background" in proc.stdout
    # step 6's save is complete unless its background write outlasted steps 7 and 8 (then step 3's is the newest)
    assert "at step 6" in proc.stdout or "at step 3" in proc.stdout
    assert losses(tmp_path) == losses(clean)  # the checkpoints hold the state of their step, bit for bit
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "checkpoint_s" in r] == [3, 6, 9, 10]
    assert checkpoint.complete_steps(tmp_path / "checkpoints") == [6, 9, 10]  # the last one completed at exit


def stopped_after(run: Path, step: int, tmp_path: Path) -> Path:
    """A copy of a finished run as if it had stopped right after saving ``step``: its later checkpoints and
    summary.json removed (the resumed run drops metrics.jsonl's later records itself)."""
    copy = copy_of(run, tmp_path)
    (copy / "summary.json").unlink()
    for later in [s for s in checkpoint.complete_steps(copy / "checkpoints") if s > step]:
        shutil.rmtree(checkpoint.step_dir(copy / "checkpoints", later))
    return copy


# Losses of a run resumed at another layout start from the same master weights and moments (test_dcp_reshard),
# but NVFP4's SR streams follow the TP rank and the reductions add in another order; where dp changes, each step
# also averages another set of batches (batch_size is per data-parallel rank). Measured on these runs (which
# are deterministic): at most 5e-4 after a TP change, 0.07 after a DP change; the bounds leave room for that.
TP_CHANGE_TOL = 0.01   # |loss - loss of the run that never stopped| at each step after a TP change (same dp)
DP_CHANGE_TOL = 0.15   # the same where dp changes (the global batch changes)


def assert_close_losses(resumed: dict, unstopped: dict, resumed_at: int, tol: float) -> None:
    assert list(resumed) == list(unstopped)
    assert all(resumed[s] == unstopped[s] for s in resumed if s <= resumed_at)  # the steps before: as written
    far = {s: (resumed[s], unstopped[s]) for s in resumed if s > resumed_at and abs(resumed[s] - unstopped[s]) > tol}
    assert not far, f"losses differ by more than {tol}: {far}"


@pytest.mark.slow
def test_resume_at_another_world_size_reshards(tmp_path, clean):
    """TP=2 -> TP=1: the same directory resumes (no refusal, no skipped checkpoint), and nothing of the TP=2
    run is deleted but what its retention would delete."""
    run = stopped_after(clean, 6, tmp_path)
    before = snapshot(run / "checkpoints")
    proc = torchrun(run, *COMMON, nproc=1)
    assert "at step 6 (written at tp 2 x dp 1)" in proc.stdout and "unusable" not in proc.stdout
    assert_close_losses(losses(run), losses(clean), 6, TP_CHANGE_TOL)
    assert {k: v for k, v in snapshot(run / "checkpoints").items() if k.startswith("step_00000006")} == \
        {k: v for k, v in before.items() if k.startswith("step_00000006")}
    assert json.loads((run / "checkpoints" / "step_00000010" / "manifest.json").read_text())["layout"]["tp"] == 1
    proc = train_sh(f"output_dir={stopped_after(clean, 6, tmp_path / 'again')}", *COMMON, env={"NPROC": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]  # train.sh's check before torchrun agrees


WIDE = ["model.d_model=64", "model.n_heads=4", "recipe=nvfp4", "train.steps=6", "checkpoint.interval=3",
        "checkpoint.keep_last=0"]  # a model that splits 4 ways


@pytest.fixture(scope="module")
def wide_tp2(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wide_tp2") / "run"
    torchrun(out, *WIDE, "parallel.tp=2", nproc=2)
    return out


@pytest.fixture(scope="module")
def wide_tp2_dp2(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wide_tp2_dp2") / "run"
    torchrun(out, *WIDE, "parallel.tp=2", nproc=4, timeout=240)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("source, tp, tol", [("wide_tp2", 4, TP_CHANGE_TOL), ("wide_tp2", 2, DP_CHANGE_TOL),
                                             ("wide_tp2_dp2", 4, DP_CHANGE_TOL)],
                         ids=["tp2-to-tp4", "tp2-to-tp2xdp2", "tp2xdp2-to-tp4"])
def test_resume_on_four_ranks_reshards(tmp_path, request, source, tp, tol):
    unstopped = request.getfixturevalue(source)
    run = stopped_after(unstopped, 3, tmp_path)
    proc = torchrun(run, *WIDE, f"parallel.tp={tp}", nproc=4, timeout=240)
    was = json.loads((unstopped / "summary.json").read_text())
    assert f"at step 3 (written at tp {was['tp']} x dp {was['dp']})" in proc.stdout
    assert f"world 4 = tp {tp} x dp {4 // tp}" in proc.stdout
    assert_close_losses(losses(run), losses(unstopped), 3, tol)


@pytest.mark.slow
def test_a_directory_of_another_run_is_refused_and_nothing_changes(tmp_path, crashed):
    run = copy_of(crashed, tmp_path)
    before = snapshot(run)
    proc = torchrun(run, *COMMON, "optim.lr=1e-3", expect_success=False)  # the job's own check, on every rank
    assert proc.returncode != 0
    assert "with another config" in proc.stderr and "optim.lr: 0.003 there, 0.001 now" in proc.stderr
    proc = train_sh(f"output_dir={run}", *COMMON, "checkpoint.resume=false")  # train.sh: once, before torchrun
    assert proc.returncode == 2 and proc.stderr.count("checkpoint.resume=false but") == 1
    assert "[rank" not in proc.stdout + proc.stderr
    assert snapshot(run) == before


@pytest.mark.slow
def test_a_finished_run_is_already_complete(tmp_path, clean):
    run = copy_of(clean, tmp_path)
    before = snapshot(run)
    for proc in (train_sh(f"output_dir={run}", *COMMON), torchrun(run, *COMMON)):
        assert proc.returncode == 0
        assert "is already complete (10 steps)" in proc.stdout and str(run / "summary.json") in proc.stdout
    assert snapshot(run) == before
