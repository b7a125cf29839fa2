"""Export: a checkpoint of any layout as one consolidated model file (.safetensors, .pt) with the TP=1 GPT's
names, and the inverse (checkpoint.init_from): the same model at any TP size."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from fp4dist import checkpoint, export
from launch import train
from multiproc import run_ranks
from test_checkpoint import corrupt, snapshot
from test_dcp_reshard import build, consolidated, load_at, save_at

ROOT = Path(__file__).resolve().parents[1]


def _save_export_and_init_at_tp2(rank, world, root, seed):
    """TP=2: train, checkpoint, export (rank 0), then a fresh TP=2 model initialised from the file holds the
    same shards as the trained one. Returns the names of the parameters whose shards differ."""
    root = Path(root)
    start = build(world, rank, 2, seed)
    save_at(world, rank, 2, root / "ckpt", 2, start, seed)
    if rank == 0:
        export.export(root / "ckpt" / "step_00000002", root / "model.pt")
    dist.barrier()
    trained = start[1]
    _, fresh, *_ = build(world, rank, 2, seed)
    export.init_model(fresh, root / "model.pt", start[4])
    return [n for (n, a), b in zip(trained.state_dict().items(), fresh.state_dict().values()) if not torch.equal(a, b)]


def logits(model, seed: int) -> torch.Tensor:
    tokens = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(seed))
    model.eval()
    with torch.no_grad():
        return model(tokens)


@pytest.mark.slow
def test_export_from_tp2_round_trips_into_a_tp1_model(tmp_path, gen):
    seed = int(torch.randint(0, 2**20, (1,), generator=gen))
    for rank, diffs in enumerate(run_ranks(_save_export_and_init_at_tp2, 2, str(tmp_path), seed, timeout=180)):
        assert not diffs, f"rank {rank}: init_from gave other shards of {diffs}"
    step_dir = tmp_path / "ckpt" / "step_00000002"
    expected = torch.load(tmp_path / "ckpt" / "expected.pt", weights_only=False)["model"]  # gathered at TP=2
    pt = torch.load(tmp_path / "model.pt", weights_only=True)
    cfg, tp1, *_ = build(1, 0, 1, seed)
    assert list(pt) == sorted(tp1.state_dict()) and all(torch.equal(pt[k], expected[k]) for k in expected)
    assert all(t.dtype == torch.float32 for t in pt.values())

    st = pytest.importorskip("safetensors.torch")
    before = snapshot(step_dir)
    proc = subprocess.run([sys.executable, "-m", "fp4dist.export", str(step_dir), str(tmp_path / "model.safetensors")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "wrote" in proc.stdout, proc.stderr
    assert snapshot(step_dir) == before
    sft = st.load_file(str(tmp_path / "model.safetensors"))
    assert sft.keys() == pt.keys() and all(torch.equal(sft[k], pt[k]) for k in pt)
    with open(tmp_path / "model.safetensors", "rb") as f:  # the header names the model it holds
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    assert json.loads(header["__metadata__"]["fp4dist.model"]) == train.checkpoint_expectation(cfg)["model"]

    # a TP=1 model from the file computes the same logits, bit for bit in fp32, as a TP=1 model that loaded
    # the TP=2 checkpoint itself (resharded by DCP) and as one given the consolidated state dict
    export.init_model(tp1, tmp_path / "model.safetensors")
    _, (_, resharded, *_), diffs = load_at(1, 0, 1, tmp_path / "ckpt", seed)
    assert not diffs
    _, plain, *_ = build(1, 0, 1, seed)
    plain.load_state_dict(expected)
    want = logits(resharded, seed)
    assert torch.equal(logits(tp1, seed), want) and torch.equal(logits(plain, seed), want)


def test_export_refuses_a_corrupt_checkpoint_and_init_from_a_file_of_another_model(tmp_path, gen):
    cfg, model, opt, sched, _, _ = build(1, 0, 1, 0)
    step_dir = checkpoint.save(tmp_path / "ckpt", 1, train.train_state(cfg, model, opt, sched, None, 1), run_id="r")
    with pytest.raises(export.ModelFileError, match=r"must end in \.safetensors or \.pt"):
        export.export(step_dir, tmp_path / "model.bin")
    export.export(step_dir, tmp_path / "model.pt")
    assert torch.load(tmp_path / "model.pt", weights_only=True).keys() == model.state_dict().keys()
    corrupt(step_dir / "__0_0.distcp", gen)
    with pytest.raises(checkpoint.CheckpointError, match="__0_0.distcp is corrupt"):
        export.export(step_dir, tmp_path / "again.pt")
    assert not (tmp_path / "again.pt").exists()

    full = torch.load(tmp_path / "model.pt", weights_only=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for bad, match in (({k: v for k, v in full.items() if k != "head"}, r"missing head"),
                       ({**full, "extra": torch.zeros(1)}, r"not in the model: extra"),
                       ({**full, "tok_emb": torch.zeros(256, 32)}, r"tok_emb \(256, 32\) in the file, \(256, 64\)")):
        torch.save(bad, tmp_path / "bad.pt")
        with pytest.raises(export.ModelFileError, match=match):
            export.init_model(model, tmp_path / "bad.pt")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing changed
