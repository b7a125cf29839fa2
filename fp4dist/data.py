"""Byte-level language-model data from one text file, with batches that are a function of the step.

The default corpus is CPython's own documentation text (``pydoc_data/topics.py``, about 0.75 MB of
English prose and code, present in every CPython install): no download on any machine.
"""

from __future__ import annotations

from pathlib import Path

import pydoc_data.topics
import torch

DEFAULT_CORPUS = Path(pydoc_data.topics.__file__)


class ByteCorpus:
    """The bytes of a file as uint8 tokens (vocab 256), split into train and validation tails."""

    def __init__(self, path: str | Path | None = None, val_fraction: float = 0.05):
        self.path = Path(path) if path else DEFAULT_CORPUS
        if not self.path.is_file():
            raise FileNotFoundError(f"data.path {str(self.path)!r} is not a file")
        data = torch.frombuffer(bytearray(self.path.read_bytes()), dtype=torch.uint8)
        n_val = int(len(data) * val_fraction)
        self.train, self.val = data[:len(data) - n_val], data[len(data) - n_val:]

    def batch(self, step: int, batch_size: int, seq_len: int, seed: int, split: str = "train"):
        """(inputs, targets) int64 [batch_size, seq_len] for ``step``: the same on every rank that asks
        with the same (seed, step), so tensor-parallel ranks see one batch and a resumed run sees the
        batches an uninterrupted one would have."""
        data = self.train if split == "train" else self.val
        if len(data) <= seq_len + 1:
            raise ValueError(f"{self.path} has {len(data)} {split} bytes, fewer than seq_len + 1 = {seq_len + 1}")
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        starts = torch.randint(0, len(data) - seq_len - 1, (batch_size,), generator=g)
        idx = starts[:, None] + torch.arange(seq_len + 1)
        chunk = data[idx].long()
        return chunk[:, :-1], chunk[:, 1:]
