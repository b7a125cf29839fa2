"""The byte corpora: offline, deterministic per step, and the bad-input errors."""

import pytest
import torch

from fp4dist.data import ByteCorpus, read_corpus, stdlib_files


def test_stdlib_corpus_is_the_sorted_stdlib_sources_and_batches_follow_the_step():
    files = stdlib_files()
    assert files == sorted(files) and all(f.suffix == ".py" for f in files)
    data = read_corpus("stdlib")
    assert len(data) == sum(f.stat().st_size for f in files) > 5_000_000
    corpus = ByteCorpus(source="stdlib", val_fraction=0.05)
    assert len(corpus.val) == int(len(data) * 0.05) and len(corpus.train) + len(corpus.val) == len(data)
    x1, y1 = corpus.batch(step=7, batch_size=4, seq_len=64, seed=3)
    x2, y2 = corpus.batch(step=7, batch_size=4, seq_len=64, seed=3)
    x3, _ = corpus.batch(step=8, batch_size=4, seq_len=64, seed=3)
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and not torch.equal(x1, x3)
    assert torch.equal(x1[:, 1:], y1[:, :-1])  # targets are the inputs shifted by one byte


def test_path_and_default_sources(tmp_path):
    f = tmp_path / "t.txt"
    f.write_bytes(bytes(range(256)) * 4)
    assert bytes(ByteCorpus(f, val_fraction=0.25).train.tolist()) == (bytes(range(256)) * 3)
    assert len(ByteCorpus().train) > 500_000  # pydoc_data/topics.py


def test_bad_corpus_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="data.source must be one of"):
        ByteCorpus(source="wikipedia")
    with pytest.raises(FileNotFoundError, match="is not a file"):
        ByteCorpus(source="path", path=tmp_path / "missing.txt")
    f = tmp_path / "short.txt"
    f.write_bytes(b"x" * 100)
    with pytest.raises(ValueError, match="fewer than seq_len"):
        ByteCorpus(f).batch(0, 2, 128, seed=0)
