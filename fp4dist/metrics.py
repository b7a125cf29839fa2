"""Training metrics that survive a crash: JSONL records on disk, TensorBoard beside them.

* :class:`JsonlLog` appends one JSON object per line and flushes and fsyncs after every
  :meth:`~JsonlLog.write`, so a record that was written is on disk even if the process is killed
  right after. A kill during a write can leave a torn last line (no newline, or not valid JSON);
  on resume that line is dropped, and so are the records past the step the run resumes from,
  and the file is rewritten atomically (temporary file, fsync, rename).
* :class:`TensorBoardLog` writes the same scalars as TensorBoard event files, where the optional
  ``tensorboard`` package is installed (one log line says so where it is not).
* :func:`final_loss` is the one definition of a run's final loss: the mean training loss of the
  last :data:`FINAL_LOSS_WINDOW` logged steps.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger("fp4dist")

#: how many logged steps :func:`final_loss` averages over
FINAL_LOSS_WINDOW = 10


def fsync_dir(path: Path) -> None:
    """fsync a directory, so that a rename or a new file inside it is on disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one rename: a reader sees the old or the new file, never a mix."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def read_jsonl(path: Path) -> tuple[list[dict], bool]:
    """The records of a JSONL file and whether its last line was torn (and left out).

    A torn line is a last line without its newline or that does not parse; an unparsable line
    before the last is damage that no crash of :class:`JsonlLog` makes, and raises ValueError.
    """
    text = Path(path).read_text()
    lines = text.split("\n")
    complete, tail = lines[:-1], lines[-1]  # tail: what follows the last newline ("" if none)
    records = []
    for i, line in enumerate(complete):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(complete) - 1 and not tail:
                return records, True
            raise ValueError(f"{path}: line {i + 1} is not JSON ({e}); the file is damaged, not torn by a crash, "
                             f"and is left as it is") from None
    return records, bool(tail.strip())


class JsonlLog:
    """One JSON object per line in ``path``, on disk after each :meth:`write`.

    ``resume_step``: the step the run resumes from; a torn last line and the records with
    ``step > resume_step`` are removed first (an atomic rewrite, only when something is removed).
    ``enabled=False`` (ranks other than 0) makes every method a no-op.
    """

    def __init__(self, path: str | Path, enabled: bool = True, resume_step: int | None = None):
        self.path, self.enabled, self._file = Path(path), enabled, None
        if not enabled:
            return
        if self.path.exists():
            records, torn = read_jsonl(self.path)
            kept = records if resume_step is None else [r for r in records if r["step"] <= resume_step]
            if torn:
                log.warning("%s: dropped a torn last line (a write was interrupted)", self.path)
            if torn or len(kept) < len(records):
                atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self._file = open(self.path, "a")

    def write(self, record: dict) -> None:
        if self._file is None:
            return
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def final_loss(records: list[dict], window: int = FINAL_LOSS_WINDOW) -> float | None:
    """Mean ``loss`` of the last ``window`` records that have one (None when there are none)."""
    losses = [r["loss"] for r in records if "loss" in r][-window:]
    return sum(losses) / len(losses) if losses else None


class TensorBoardLog:
    """Scalars as TensorBoard event files in ``log_dir`` (``torch.utils.tensorboard``).

    Without the ``tensorboard`` package (``pip install tensorboard``) it logs one line and every
    method is a no-op. ``resume_step``: events past that step, from an earlier attempt of the run,
    are hidden from TensorBoard (its ``purge_step``).
    """

    def __init__(self, log_dir: str | Path, enabled: bool = True, resume_step: int = 0):
        self.writer, self.log_dir = None, Path(log_dir)
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.info("tensorboard is not installed: no event files (pip install tensorboard)")
            return
        self.writer = SummaryWriter(str(self.log_dir), purge_step=resume_step + 1 if resume_step else None)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Add ``{tag: value}`` at ``step`` (None values are left out)."""
        if self.writer is None:
            return
        for tag, value in values.items():
            if value is not None:
                self.writer.add_scalar(tag, value, step)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
