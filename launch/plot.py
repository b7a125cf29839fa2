"""Draw the loss curves of training runs (their metrics.jsonl) into one PNG.

    python launch/plot.py outputs/cpu_nvfp4 outputs/cpu_bf16 -o docs/loss_cpu.png --title "tiny GPT, CPU"

Needs matplotlib (pip install -e '.[plot]'). Prints each run's final loss and the relative gap of
every run to the last one given (the baseline), at the last step that all runs reached.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise SystemExit(f"{path} not found: is {run_dir} a training output_dir?")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def smooth(values: list[float], window: int) -> list[float]:
    out, acc = [], []
    for v in values:
        acc = (acc + [v])[-window:]
        out.append(sum(acc) / len(acc))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="output_dir of each run; the last is the baseline")
    ap.add_argument("-o", "--out", type=Path, required=True, help="PNG to write")
    ap.add_argument("--title", default="NVFP4 vs bf16")
    ap.add_argument("--smooth", type=int, default=5, help="moving-average window over logged steps")
    args = ap.parse_args(argv)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("launch/plot.py needs matplotlib: pip install -e '.[plot]'") from None

    fig, ax = plt.subplots(figsize=(7, 4.2))
    finals = {}
    runs = {run: read_metrics(run) for run in args.runs}
    common = min(records[-1]["step"] for records in runs.values())
    for run, records in runs.items():
        steps = [r["step"] for r in records]
        label = run.name
        line, = ax.plot(steps, smooth([r["loss"] for r in records], args.smooth), label=f"{label} (train)")
        val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
        if val:
            ax.plot(*zip(*val), "o--", color=line.get_color(), label=f"{label} (val)", markersize=4)
        upto = [r for r in records if r["step"] <= common]
        last, val_upto = upto[-max(1, args.smooth):], [v for s, v in val if s <= common]
        finals[label] = (sum(r["loss"] for r in last) / len(last), val_upto[-1] if val_upto else None)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/byte)")
    ax.set_title(args.title)
    ax.grid(alpha=0.3)
    ax.legend()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    base = args.runs[-1].name
    print(f"at step {common} (the last that every run reached):")
    for name, (train_loss, val_loss) in finals.items():
        gap = lambda a, b: f"{100 * (a - b) / b:+.2f}%" if a is not None and b is not None else "n/a"
        print(f"{name}: final train loss {train_loss:.4f} ({gap(train_loss, finals[base][0])} vs {base}), "
              f"val loss {val_loss if val_loss is None else round(val_loss, 4)} ({gap(val_loss, finals[base][1])})")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
