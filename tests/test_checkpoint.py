"""Checkpoints: manifests with checksums, loud fall-back past damaged files, refusals that change nothing,
retention that keeps other runs' checkpoints."""

import hashlib
import json
import logging
from pathlib import Path

import pytest
import torch

from fp4dist import checkpoint
from multiproc import run_ranks


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
    return {"w": torch.randn(8, 8, generator=gen), "step": step}


def test_save_writes_a_manifest_and_load_returns_the_newest(tmp_path, gen):
    saved = {s: state(s, gen) for s in (3, 6, 9)}
    for s, st in saved.items():
        checkpoint.save(tmp_path, s, st, keep_last=2, run_id="run-a")
    assert checkpoint.complete_steps(tmp_path) == [6, 9]  # keep_last=2 of this run
    manifest = json.loads((tmp_path / "step_00000009" / "manifest.json").read_text())
    blob = tmp_path / "step_00000009" / "rank00000.pt"
    assert manifest["run_id"] == "run-a" and manifest["world_size"] == 1 and manifest["step"] == 9
    assert manifest["files"]["rank00000.pt"] == {"sha256": hashlib.sha256(blob.read_bytes()).hexdigest(),
                                                 "bytes": blob.stat().st_size}
    got, step = checkpoint.load_latest(tmp_path, run_id="run-a")
    assert step == 9 and torch.equal(got["w"], saved[9]["w"])
    assert checkpoint.load_latest(tmp_path / "none") is None


def test_retention_never_deletes_another_runs_checkpoints(tmp_path, gen):
    checkpoint.save(tmp_path, 1, state(1, gen), keep_last=1, run_id="other")
    for s in (2, 3, 4):
        checkpoint.save(tmp_path, s, state(s, gen), keep_last=1, run_id="mine")
    assert checkpoint.complete_steps(tmp_path) == [1, 4]
    with pytest.raises(RuntimeError, match="not written by this run"):
        checkpoint.save(tmp_path, 1, state(1, gen), run_id="mine")
    assert checkpoint.load_latest(tmp_path, run_id="other")[1] == 1  # another run's id: only its own


def test_corrupt_newest_checkpoint_falls_back_loudly(tmp_path, gen, caplog):
    saved = {s: state(s, gen) for s in (3, 6)}
    for s, st in saved.items():
        checkpoint.save(tmp_path, s, st, keep_last=0, run_id="r")
    bad = tmp_path / "step_00000006" / "rank00000.pt"
    corrupt(bad, gen)
    with caplog.at_level(logging.WARNING, logger="fp4dist"):
        got, step = checkpoint.load_latest(tmp_path, run_id="r")
    assert step == 3 and torch.equal(got["w"], saved[3]["w"])
    assert checkpoint.find_resumable(tmp_path, 1, run_id="r") == 3  # the check before a job starts agrees
    assert any(str(bad) in r.getMessage() and "corrupt" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("damage", ["flip", "manifest", "missing"])
def test_no_usable_checkpoint_refuses_and_changes_nothing(tmp_path, gen, damage):
    for s in (3, 6):
        checkpoint.save(tmp_path, s, state(s, gen), keep_last=0, run_id="r")
        d = tmp_path / f"step_{s:08d}"
        if damage == "flip":
            corrupt(d / "rank00000.pt", gen)
        elif damage == "manifest":
            (d / "manifest.json").write_text("{not json")
        else:
            (d / "rank00000.pt").unlink()
    (tmp_path / "step_00000009.partial").mkdir()  # an interrupted save is left alone too
    before = snapshot(tmp_path)
    for check in (lambda: checkpoint.load_latest(tmp_path, run_id="r"),
                  lambda: checkpoint.find_resumable(tmp_path, 1, run_id="r")):
        with pytest.raises(checkpoint.CheckpointError, match=r"no checkpoint in .* is usable.*Nothing was changed"):
            check()
    assert snapshot(tmp_path) == before and (tmp_path / "step_00000009.partial").is_dir()


def _two_ranks(rank, world, root, seed):
    g = torch.Generator().manual_seed(seed + rank)
    saved = {s: state(s, g) for s in (1, 2)}
    for s, st in saved.items():
        checkpoint.save(root, s, st, keep_last=0, run_id="r")
    torch.distributed.barrier()
    if rank == 0:  # garble one rank's file of the newest checkpoint (today: an UnpicklingError on that rank only)
        path = Path(root) / "step_00000002" / "rank00001.pt"
        data = bytearray(path.read_bytes())
        data[len(data) // 2:len(data) // 2 + 64] = b"garbage!" * 8
        path.write_bytes(bytes(data))
    torch.distributed.barrier()
    warnings = []
    handler = logging.Handler()
    handler.emit = lambda record: warnings.append(record.getMessage())
    logging.getLogger("fp4dist").addHandler(handler)
    got, step = checkpoint.load_latest(root, run_id="r")
    return step, torch.equal(got["w"], saved[1]["w"]), warnings


@pytest.mark.slow
def test_ranks_agree_on_the_previous_step_when_one_rank_file_is_damaged(tmp_path, gen):
    seed = int(torch.randint(0, 2**20, (1,), generator=gen))
    for rank, (step, same, warnings) in enumerate(run_ranks(_two_ranks, 2, str(tmp_path), seed, timeout=120)):
        assert step == 1 and same, f"rank {rank} loaded step {step}"
        assert any("rank00001.pt is corrupt" in w for w in warnings), f"rank {rank} did not warn: {warnings}"
    before = snapshot(tmp_path)  # written by 2 ranks; this process is 1
    with pytest.raises(checkpoint.CheckpointError, match=r"written by 2 ranks and this job has 1.*NPROC=2"):
        checkpoint.load_latest(tmp_path, run_id="r")
    with pytest.raises(checkpoint.CheckpointError, match=r"written by 2 ranks and this job has 1"):
        checkpoint.find_resumable(tmp_path, 1, run_id="r")
    assert checkpoint.find_resumable(tmp_path, 2, run_id="r") == 1  # rank 1's file of step 2 is damaged
    assert snapshot(tmp_path) == before
