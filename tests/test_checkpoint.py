"""Checkpoints: DCP files under a manifest with checksums, loud fall-back past damaged files, refusals that
change nothing, retention that keeps other runs' checkpoints, asynchronous saves."""

import hashlib
import json
import logging
import time
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

from fp4dist import checkpoint
from multiproc import run_ranks

META = {"layout": {"tp": 1, "dp": 1}, "model": {"d_model": 32, "n_layers": 2}, "recipe": {"name": "nvfp4", "seed": 0}}


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (relative path -> sha256): equal snapshots mean nothing changed."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def corrupt(path: Path, gen: torch.Generator) -> None:
    """Flip the bits of a few bytes in the middle of ``path``."""
    data = bytearray(path.read_bytes())
    at = len(data) // 2 + int(torch.randint(-16, 16, (1,), generator=gen))
    for i in range(at, at + 4):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def state(step: int, gen: torch.Generator) -> dict:
    return {"w": torch.randn(8, 8, generator=gen), "train": {"step": step, "note": f"step {step}"}}


def template() -> dict:
    return {"w": torch.full((8, 8), float("nan")), "train": {"step": -1, "note": ""}}


def load(root, **kwargs):
    into = template()
    loaded = checkpoint.load_latest(root, into, **kwargs)
    return (into, loaded.step) if loaded is not None else None


def test_save_writes_a_manifest_and_load_returns_the_newest(tmp_path, gen):
    saved = {s: state(s, gen) for s in (3, 6, 9)}
    for s, st in saved.items():
        checkpoint.save(tmp_path, s, st, keep_last=2, run_id="run-a", meta=META)
    assert checkpoint.complete_steps(tmp_path) == [6, 9]  # keep_last=2 of this run
    d = tmp_path / "step_00000009"
    manifest = json.loads((d / "manifest.json").read_text())
    assert manifest["run_id"] == "run-a" and manifest["world_size"] == 1 and manifest["step"] == 9
    assert manifest["format"] == "dcp" and {k: manifest[k] for k in META} == META
    files = sorted(p.name for p in d.iterdir() if p.name != "manifest.json")
    assert sorted(manifest["files"]) == files and ".metadata" in files  # every DCP file, checksummed
    for name in files:
        assert manifest["files"][name] == {"sha256": hashlib.sha256((d / name).read_bytes()).hexdigest(),
                                           "bytes": (d / name).stat().st_size}
    got, step = load(tmp_path, run_id="run-a", expect={"model": META["model"], "recipe": META["recipe"]})
    assert step == 9 and torch.equal(got["w"], saved[9]["w"]) and got["train"] == saved[9]["train"]
    assert load(tmp_path / "none") is None
    assert checkpoint.verify(d)["step"] == 9


def test_retention_never_deletes_another_runs_checkpoints(tmp_path, gen):
    checkpoint.save(tmp_path, 1, state(1, gen), keep_last=1, run_id="other")
    for s in (2, 3, 4):
        checkpoint.save(tmp_path, s, state(s, gen), keep_last=1, run_id="mine")
    assert checkpoint.complete_steps(tmp_path) == [1, 4]
    before = snapshot(tmp_path / "step_00000001")
    with pytest.raises(RuntimeError, match="not written by this run"):
        checkpoint.save(tmp_path, 1, state(1, gen), run_id="mine")
    assert snapshot(tmp_path / "step_00000001") == before
    assert load(tmp_path, run_id="other")[1] == 1  # another run's id: only its own


def test_corrupt_newest_checkpoint_falls_back_loudly(tmp_path, gen, caplog):
    saved = {s: state(s, gen) for s in (3, 6)}
    for s, st in saved.items():
        checkpoint.save(tmp_path, s, st, keep_last=0, run_id="r")
    bad = tmp_path / "step_00000006" / "__0_0.distcp"
    corrupt(bad, gen)
    with caplog.at_level(logging.WARNING, logger="fp4dist"):
        got, step = load(tmp_path, run_id="r")
    assert step == 3 and torch.equal(got["w"], saved[3]["w"]) and got["train"]["step"] == 3
    assert checkpoint.find_resumable(tmp_path, run_id="r") == 3  # the check before a job starts agrees
    assert any(str(bad) in r.getMessage() and "corrupt" in r.getMessage() for r in caplog.records)
    with pytest.raises(checkpoint.CheckpointError, match="__0_0.distcp is corrupt"):
        checkpoint.verify(tmp_path / "step_00000006")


@pytest.mark.parametrize("damage", ["flip", "manifest", "missing", "metadata"])
def test_no_usable_checkpoint_refuses_and_changes_nothing(tmp_path, gen, damage):
    for s in (3, 6):
        checkpoint.save(tmp_path, s, state(s, gen), keep_last=0, run_id="r")
        d = tmp_path / f"step_{s:08d}"
        if damage == "flip":
            corrupt(d / "__0_0.distcp", gen)
        elif damage == "manifest":
            (d / "manifest.json").write_text("{not json")
        elif damage == "metadata":
            corrupt(d / ".metadata", gen)
        else:
            (d / "__0_0.distcp").unlink()
    (tmp_path / "step_00000009.partial").mkdir()  # an interrupted save is left alone too
    before = snapshot(tmp_path)
    for check in (lambda: load(tmp_path, run_id="r"), lambda: checkpoint.find_resumable(tmp_path, run_id="r")):
        with pytest.raises(checkpoint.CheckpointError, match=r"no checkpoint in .* is usable.*Nothing was changed"):
            check()
    assert snapshot(tmp_path) == before and (tmp_path / "step_00000009.partial").is_dir()


def test_another_model_or_recipe_refuses_at_once_and_changes_nothing(tmp_path, gen):
    for s in (3, 6):
        checkpoint.save(tmp_path, s, state(s, gen), keep_last=0, run_id="r", meta=META)
    before = snapshot(tmp_path)
    other = {"model": {**META["model"], "d_model": 64}, "recipe": {**META["recipe"], "name": "bf16"}}
    into = template()
    for check in (lambda: checkpoint.load_latest(tmp_path, into, run_id="r", expect=other),
                  lambda: checkpoint.find_resumable(tmp_path, run_id="r", expect=other)):
        with pytest.raises(checkpoint.CheckpointError) as e:
            check()
        text = str(e.value)
        assert "step_00000006 was written for another model or recipe" in text
        assert "model.d_model: 32 there, 64 now" in text and "recipe.name: 'nvfp4' there, 'bf16' now" in text
        assert "Nothing was changed" in text and "another output_dir" in text
    assert snapshot(tmp_path) == before and torch.isnan(into["w"]).all()  # nothing was read into the state
    # another layout is no difference: it reshards
    assert checkpoint.find_resumable(tmp_path, run_id="r", expect={"model": META["model"]}) == 6


def test_async_save_holds_the_state_of_its_step(tmp_path, gen):
    """The state is copied when async_save returns: changing it afterwards does not change the checkpoint."""
    saver = checkpoint.Checkpointer(tmp_path, "r", keep_last=0, async_save=True)
    st = state(1, gen)
    expected = st["w"].clone()
    saver.save(1, st)
    st["w"].add_(1.0)  # training goes on while the write is in flight
    assert checkpoint.complete_steps(tmp_path) == []  # finished at the next save or close
    deadline = time.monotonic() + 60
    while not saver.poll():  # completed once written, without waiting for the next save
        assert time.monotonic() < deadline, "the background save did not complete"
        time.sleep(0.01)
    assert checkpoint.complete_steps(tmp_path) == [1]
    saver.save(2, st)
    saver.close()
    assert checkpoint.complete_steps(tmp_path) == [1, 2]
    into = template()
    assert checkpoint.load_latest(tmp_path, into, run_id="r").step == 2
    first = {"w": torch.empty(8, 8), "train": {"step": -1, "note": ""}}
    dcp.load(first, checkpoint_id=str(tmp_path / "step_00000001"), no_dist=True)
    assert torch.equal(first["w"], expected) and torch.equal(into["w"], expected + 1.0)


def _two_ranks(rank, world, root, seed):
    g = torch.Generator().manual_seed(seed + rank)
    saved = {s: {f"w{rank}": torch.randn(8, 8, generator=g), "train": {"step": s}} for s in (1, 2)}
    group = checkpoint.checkpoint_group()
    for s, st in saved.items():
        checkpoint.save(root, s, st, keep_last=0, run_id="r", group=group)
    torch.distributed.barrier()
    if rank == 0:  # garble rank 1's file of the newest checkpoint
        path = Path(root) / "step_00000002" / "__1_0.distcp"
        data = bytearray(path.read_bytes())
        data[len(data) // 2:len(data) // 2 + 64] = b"garbage!" * 8
        path.write_bytes(bytes(data))
    torch.distributed.barrier()
    warnings = []
    handler = logging.Handler()
    handler.emit = lambda record: warnings.append(record.getMessage())
    logging.getLogger("fp4dist").addHandler(handler)
    into = {f"w{rank}": torch.empty(8, 8), "train": {"step": -1}}
    loaded = checkpoint.load_latest(root, into, run_id="r", group=group)
    return loaded.step, into["train"]["step"], torch.equal(into[f"w{rank}"], saved[1][f"w{rank}"]), warnings


@pytest.mark.slow
def test_ranks_agree_on_the_previous_step_when_one_rank_file_is_damaged(tmp_path, gen):
    seed = int(torch.randint(0, 2**20, (1,), generator=gen))
    for rank, (step, train_step, same, warnings) in enumerate(run_ranks(_two_ranks, 2, str(tmp_path), seed,
                                                                        timeout=120)):
        assert step == 1 and train_step == 1 and same, f"rank {rank} loaded step {step}"
        assert any("__1_0.distcp is corrupt" in w for w in warnings), f"rank {rank} did not warn: {warnings}"
    before = snapshot(tmp_path)
    # written by 2 ranks, read by 1: the other world size loads (both ranks' entries), and changes nothing
    into = {"w0": torch.empty(8, 8), "w1": torch.empty(8, 8), "train": {"step": -1}}
    assert checkpoint.load_latest(tmp_path, into, run_id="r").step == 1 and into["train"]["step"] == 1
    assert checkpoint.find_resumable(tmp_path, run_id="r") == 1
    assert snapshot(tmp_path) == before
