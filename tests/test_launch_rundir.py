"""Run directories: a new run, its resumption, a finished run, and the refusals that change no file."""

import json

import pytest
import torch
from omegaconf import OmegaConf

from fp4dist import checkpoint
from launch import rundir
from launch.preflight import compose_config
from test_checkpoint import snapshot


def config(out, *overrides):
    cfg = compose_config([f"output_dir={out}", *overrides])
    rundir.set_dirs(cfg, cfg.output_dir)
    return cfg


def start(cfg) -> rundir.Plan:
    plan = rundir.plan(cfg)
    rundir.carry_out(plan, cfg)
    return plan


def test_a_new_run_then_resumes_as_itself_and_completes(tmp_path):
    cfg = config(tmp_path / "run")
    first = start(cfg)
    assert first.action == "new" and json.loads((tmp_path / "run" / "run.json").read_text())["run_id"] == first.run_id
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 1, "loss": 5.0}\n')
    checkpoint.save(cfg.checkpoint.dir, 1, {"x": torch.zeros(1)}, run_id=first.run_id)
    # the same command again, with changes a resumed run may make
    again = rundir.plan(config(tmp_path / "run", "train.log_interval=1", "checkpoint.interval=7", "device=cpu"))
    assert (again.action, again.run_id) == ("resume", first.run_id)
    (tmp_path / "run" / "summary.json").write_text(json.dumps({"run_id": first.run_id, "steps": 300}))
    done = rundir.plan(cfg)
    assert done.action == "complete" and "already complete (300 steps)" in done.note


def test_overwrite_deletes_the_earlier_runs_files_only(tmp_path):
    cfg = config(tmp_path / "run")
    first = start(cfg)
    checkpoint.save(cfg.checkpoint.dir, 5, {"x": torch.zeros(1)}, run_id=first.run_id)
    (tmp_path / "run" / "notes.txt").write_text("mine")
    plan = start(config(tmp_path / "run", "overwrite=true", "optim.lr=1e-3"))
    assert plan.action == "new" and plan.run_id != first.run_id
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoints", "notes.txt", "run.json"]
    assert checkpoint.complete_steps(cfg.checkpoint.dir) == []
    # a torchrun restart of that job resumes it, although its command still says overwrite=true
    restart = rundir.plan(config(tmp_path / "run", "overwrite=true", "optim.lr=1e-3"), restart_of=plan.run_id)
    assert (restart.action, restart.run_id) == ("resume", plan.run_id)


def refusal(cfg, match: str, root):
    before = snapshot(root)
    with pytest.raises(rundir.RunDirError, match=match) as e:
        rundir.plan(cfg)
    assert "Nothing was changed" in str(e.value) and "overwrite=true" in str(e.value)
    assert snapshot(root) == before
    return str(e.value)


def test_refuses_another_config_files_without_run_json_and_foreign_checkpoints(tmp_path):
    cfg = config(tmp_path / "run")
    first = start(cfg)
    text = refusal(config(tmp_path / "run", "optim.lr=1e-3", "train.steps=10"), "with another config", tmp_path)
    assert "optim.lr: 0.003 there, 0.001 now" in text and "train.steps: 300 there, 10 now" in text

    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "metrics.jsonl").write_text("{}\n")
    refusal(config(tmp_path / "bare"), r"holds another run's files \(metrics.jsonl\) with no run.json", tmp_path)

    checkpoint.save(tmp_path / "shared_ckpt", 4, {"x": torch.zeros(1)}, run_id="someone-else")
    cfg2 = config(tmp_path / "run", f"checkpoint.dir={tmp_path / 'shared_ckpt'}")
    refusal(cfg2, r"holds checkpoints that run .* did not write \(step_00000004: someone-else\)", tmp_path)

    checkpoint.save(cfg.checkpoint.dir, 2, {"x": torch.zeros(1)}, run_id=first.run_id)
    refusal(config(tmp_path / "run", "checkpoint.resume=false"), r"checkpoint.resume=false but .* holds checkpoints",
            tmp_path)


def test_timestamped_directories_are_never_shared(tmp_path):
    a, b = rundir.claim_timestamped_dir("nvfp4", tmp_path), rundir.claim_timestamped_dir("nvfp4", tmp_path)
    assert a != b and a.is_dir() and b.is_dir() and a.parent == tmp_path / "nvfp4"


def test_another_layout_resumes_and_a_checkpoint_of_another_model_is_refused(tmp_path):
    cfg = config(tmp_path / "run", "parallel.tp=2")
    first = start(cfg)
    meta = {"layout": {"tp": 2, "dp": 1}, "model": OmegaConf.to_container(cfg.model, resolve=True),
            "recipe": OmegaConf.to_container(cfg.recipe, resolve=True)}
    checkpoint.save(cfg.checkpoint.dir, 3, {"x": torch.zeros(1)}, run_id=first.run_id, meta=meta)
    for layout in ("parallel.tp=1", "parallel.tp=4", "parallel.sequence_parallel=false"):
        again = rundir.plan(config(tmp_path / "run", layout))
        assert (again.action, again.run_id) == ("resume", first.run_id), layout
    meta["model"]["d_model"] = 256  # the manifest disagrees with run.json: the checkpoint is not this model's
    checkpoint.save(cfg.checkpoint.dir, 6, {"x": torch.zeros(1)}, run_id=first.run_id, meta=meta)
    text = refusal(config(tmp_path / "run", "parallel.tp=1"), "was written for another model or recipe", tmp_path)
    assert "step_00000006" in text and "model.d_model: 256 there, 128 now" in text
