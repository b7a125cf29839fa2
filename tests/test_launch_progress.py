"""Rank 0's progress report: plain lines with the ETA off a terminal, a tqdm bar on one (where installed)."""

import io
import logging
import sys

import pytest

from launch.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def record(step: int, step_time: float) -> dict:
    return {"step": step, "loss": 2.5, "lr": 1e-3, "tokens_per_s": 512 / step_time, "step_time_s": step_time}


def test_plain_lines_with_the_eta_of_the_mean_step_time(caplog):
    p = Progress(total=100, start=20, enabled=True, stream=io.StringIO())
    assert p.bar is None
    with caplog.at_level(logging.INFO, logger="fp4dist.train"):
        p.report(30, record(30, 0.5), steps_timed=10)  # 70 steps left at 0.5 s
        p.report(40, record(40, 1.5), steps_timed=10)  # mean 1.0 s over the 20 timed steps, 60 steps left
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("step    30/100 | loss 2.5000 | lr 1.00e-03 |") and lines[0].endswith("ETA 0:00:35")
    assert "0.500 s/step" in lines[0] and "1024 tok/s" in lines[0] and lines[1].endswith("ETA 0:01:00")


def test_without_tqdm_a_terminal_gets_plain_lines(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    assert Progress(total=10, start=0, enabled=True, stream=Terminal()).bar is None


def test_tqdm_bar_on_a_terminal():
    pytest.importorskip("tqdm")
    term = Terminal()
    p = Progress(total=10, start=2, enabled=True, stream=term)
    p.update(5)
    p.report(5, record(5, 0.25), steps_timed=3)
    p.close()
    assert p.bar is not None and "5/10" in term.getvalue() and "ETA 0:00:01" in term.getvalue()
