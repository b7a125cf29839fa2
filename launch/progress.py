"""Rank 0's progress report: step, loss, tokens/s, step time and the time left (ETA).

A tqdm bar where tqdm is installed and stdout is a terminal; plain log lines, one per logged
step, everywhere else (pipes, files, CI). The ETA is the steps left times the mean step time of
the steps logged so far in this process.
"""

from __future__ import annotations

import datetime
import logging
import sys

log = logging.getLogger("fp4dist.train")


def _tqdm():
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm


def format_eta(seconds: float | None) -> str:
    return "?" if seconds is None else str(datetime.timedelta(seconds=round(seconds)))


class Progress:
    """``update(step)`` every step (no host sync), ``report(step, record)`` on the logged steps."""

    def __init__(self, total: int, start: int, enabled: bool, stream=sys.stdout):
        self.total, self.enabled = total, enabled
        self.timed_steps, self.timed_s = 0, 0.0
        tqdm = _tqdm() if enabled and stream.isatty() else None
        self.bar = tqdm(total=total, initial=start, unit="step", file=stream, dynamic_ncols=True) if tqdm else None

    def update(self, step: int) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)

    def eta_s(self, step: int) -> float | None:
        return (self.total - step) * self.timed_s / self.timed_steps if self.timed_steps else None

    def report(self, step: int, record: dict, steps_timed: int) -> None:
        """Show ``record`` (metrics.jsonl's) of ``step``; its step_time_s is the mean over ``steps_timed`` steps."""
        if not self.enabled:
            return
        self.timed_steps += steps_timed
        self.timed_s += record["step_time_s"] * steps_timed
        val = f" | val {record['val_loss']:.4f}" if "val_loss" in record else ""
        fields = (f"loss {record['loss']:.4f}{val} | lr {record['lr']:.2e} | {record['tokens_per_s']:8.0f} tok/s | "
                  f"{record['step_time_s']:.3f} s/step | ETA {format_eta(self.eta_s(step))}")
        if self.bar is not None:
            self.bar.set_postfix_str(fields, refresh=True)
            if val:
                self.bar.write(f"step {step}: {fields}")
        else:
            log.info("step %5d/%d | %s", step, self.total, fields)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
