"""Draw the loss curves of training runs (their metrics.jsonl) into one PNG, and a run's NVFP4 health.

    python launch/plot.py outputs/cpu_nvfp4 outputs/cpu_bf16 -o docs/loss_cpu.png --title "tiny GPT, CPU"
    python launch/plot.py outputs/nvfp4/<run> -o loss.png --health health.png

Needs matplotlib (pip install -e '.[plot]'). Prints each run's final loss (fp4dist.metrics.final_loss:
the mean training loss of the last 10 logged steps, here up to the last step that every run
reached) and the relative gap of every run to the last one given (the baseline). ``--health``
draws the first run's health.jsonl: one panel per stat and operand (X, W, dY), one line per
NVFP4 layer over the training steps.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fp4dist.health import OPERANDS, STATS
from fp4dist.metrics import final_loss, read_jsonl


def read_records(run_dir: Path, name: str = "metrics.jsonl") -> list[dict]:
    path = run_dir / name
    if not path.is_file():
        raise SystemExit(f"{path} not found: is {run_dir} a training output_dir"
                         f"{' of a run with train.health_interval > 0' if name == 'health.jsonl' else ''}?")
    return read_jsonl(path)[0]


def plot_health(plt, records: list[dict], out: Path, title: str) -> None:
    """One panel per (stat, operand), one line per layer: the stats of fp4dist.health over the steps."""
    layers = list(records[0]["layers"]) if records else []
    fig, axes = plt.subplots(len(STATS), len(OPERANDS), figsize=(4.2 * len(OPERANDS), 2.3 * len(STATS)),
                             sharex=True, squeeze=False)
    colors = plt.get_cmap("viridis")([i / max(1, len(layers) - 1) for i in range(len(layers))])
    steps = [r["step"] for r in records]
    for row, stat in enumerate(STATS):
        for col, op in enumerate(OPERANDS):
            ax = axes[row][col]
            for layer, color in zip(layers, colors):
                ax.plot(steps, [r["layers"][layer][op][stat] for r in records], color=color, lw=1.2, label=layer)
            if stat == "amax":
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
            ax.set_title(f"{op}: {stat}", fontsize=9)
            if row == len(STATS) - 1:
                ax.set_xlabel("step")
    fig.suptitle(title)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, max(1, len(labels))), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.03 + 0.012 * ((len(labels) + 3) // 4), 1, 0.97))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


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
    ap.add_argument("--smooth", type=int, default=5, help="moving-average window over logged steps (the curves)")
    ap.add_argument("--health", type=Path, help="also draw the first run's NVFP4 health (health.jsonl) into this PNG")
    args = ap.parse_args(argv)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("launch/plot.py needs matplotlib: pip install -e '.[plot]'") from None

    fig, ax = plt.subplots(figsize=(7, 4.2))
    finals = {}
    runs = {run: read_records(run) for run in args.runs}
    common = min(records[-1]["step"] for records in runs.values())
    for run, records in runs.items():
        steps = [r["step"] for r in records]
        label = run.name
        line, = ax.plot(steps, smooth([r["loss"] for r in records], args.smooth), label=f"{label} (train)")
        val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
        if val:
            ax.plot(*zip(*val), "o--", color=line.get_color(), label=f"{label} (val)", markersize=4)
        val_upto = [v for s, v in val if s <= common]
        finals[label] = (final_loss([r for r in records if r["step"] <= common]), val_upto[-1] if val_upto else None)
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
    if args.health:
        run = args.runs[0]
        plot_health(plt, read_records(run, "health.jsonl"), args.health, f"NVFP4 health: {run.name}")


if __name__ == "__main__":
    main()
