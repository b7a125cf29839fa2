"""Byte-level language-model data from local text, with batches that are a function of the step.

Corpora (``data.source``), all present on any machine with CPython, no download:

* ``topics``: CPython's documentation text ``pydoc_data/topics.py`` (about 0.75 MB of English prose
  and code); the default, sized for the short CPU run.
* ``stdlib``: every ``*.py`` file of CPython's standard library outside ``site-packages``,
  concatenated in sorted path order (about 30 MB): enough that a GPU run of a few thousand steps
  does not repeat its data.
* ``path``: the file ``data.path``.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

import pydoc_data.topics
import torch

DEFAULT_CORPUS = Path(pydoc_data.topics.__file__)
SOURCES = ("topics", "stdlib", "path")


def stdlib_files() -> list[Path]:
    """The standard library's ``*.py`` files outside ``site-packages``, sorted by path."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.rglob("*.py") if "site-packages" not in p.relative_to(root).parts)


def read_corpus(source: str = "topics", path: str | Path | None = None) -> bytes:
    """The bytes of the corpus ``source`` (see the module docstring); ``path`` is used by ``path``."""
    if source == "topics":
        return DEFAULT_CORPUS.read_bytes()
    if source == "stdlib":
        return b"".join(p.read_bytes() for p in stdlib_files())
    if source == "path":
        if path is None or not Path(path).is_file():
            raise FileNotFoundError(f"data.path {str(path)!r} is not a file (data.source=path needs one)")
        return Path(path).read_bytes()
    raise ValueError(f"data.source must be one of {SOURCES}, got {source!r}")


class ByteCorpus:
    """A corpus as uint8 tokens (vocab 256), split into train and validation tails.

    ``path`` alone (no ``source``) reads that file, as ``source="path"``; neither reads ``topics``.
    """

    def __init__(self, path: str | Path | None = None, val_fraction: float = 0.05, source: str | None = None):
        if source is None:
            source = "path" if path else "topics"
        self.source, self.path = source, path
        raw = read_corpus(source, path)
        if not raw:
            what = f"data.path {str(path)!r}" if source == "path" else f"the {source} corpus"
            raise ValueError(f"{what} is empty: there is nothing to train on")
        data = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
        n_val = int(len(data) * val_fraction)
        self.train, self.val = data[:len(data) - n_val], data[len(data) - n_val:]

    def check(self, seq_len: int) -> None:
        """Raise ValueError unless both splits hold more than ``seq_len + 1`` bytes (one sequence and its
        targets): the check a training run makes before its first step rather than at its first eval."""
        self._split("train", seq_len)
        self._split("val", seq_len)

    def _split(self, split: str, seq_len: int) -> torch.Tensor:
        data = self.train if split == "train" else self.val
        if len(data) <= seq_len + 1:
            hint = "raise data.val_fraction or use a longer corpus" if split == "val" else "use a longer corpus"
            raise ValueError(f"the {self.source} corpus has {len(data)} {split} bytes, fewer than seq_len + 1 = "
                             f"{seq_len + 1} ({hint})")
        return data

    def batch(self, step: int, batch_size: int, seq_len: int, seed: int, split: str = "train"):
        """(inputs, targets) int64 [batch_size, seq_len] for ``step``: the same on every rank that asks
        with the same (seed, step), so tensor-parallel ranks see one batch and a resumed run sees the
        batches an uninterrupted one would have."""
        data = self._split(split, seq_len)
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        starts = torch.randint(0, len(data) - seq_len - 1, (batch_size,), generator=g)
        idx = starts[:, None] + torch.arange(seq_len + 1)
        chunk = data[idx].long()
        return chunk[:, :-1], chunk[:, 1:]
