"""launch/plot.py: loss curves and the health figure render, and the final loss is metrics.final_loss."""

import json

import pytest
import torch

from fp4dist.health import OPERANDS, STATS
from fp4dist.metrics import final_loss

pytest.importorskip("matplotlib")
from launch import plot  # noqa: E402


def write_run(path, gen, steps: int, health: bool):
    path.mkdir()
    losses = (torch.rand(steps, generator=gen) + torch.linspace(3, 1, steps)).tolist()
    recs = [{"step": s + 1, "loss": loss} | ({"val_loss": loss} if (s + 1) % 10 == 0 else {})
            for s, loss in enumerate(losses)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    if health:
        layers = ["blocks.0.attn.qkv", "blocks.0.mlp.down"]
        rows = [{"step": s, "layers": {name: {op: {k: float(torch.rand((), generator=gen)) + 1e-3 for k in STATS}
                                              for op in OPERANDS} for name in layers}} for s in range(5, steps + 1, 5)]
        (path / "health.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return recs


def test_plot_writes_the_curves_and_the_health_figure(tmp_path, gen, capsys):
    nvfp4 = write_run(tmp_path / "nvfp4", gen, 40, health=True)
    write_run(tmp_path / "bf16", gen, 30, health=False)
    plot.main([str(tmp_path / "nvfp4"), str(tmp_path / "bf16"), "-o", str(tmp_path / "loss.png"),
               "--health", str(tmp_path / "health.png")])
    out = capsys.readouterr().out
    assert f"final train loss {final_loss([r for r in nvfp4 if r['step'] <= 30]):.4f}" in out  # up to step 30
    for png in ("loss.png", "health.png"):
        data = (tmp_path / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, png
    with pytest.raises(SystemExit, match="health.jsonl not found.*health_interval"):
        plot.main([str(tmp_path / "bf16"), "-o", str(tmp_path / "x.png"), "--health", str(tmp_path / "h.png")])
