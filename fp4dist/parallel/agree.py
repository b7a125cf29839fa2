"""Cross-rank agreement on a collective's inputs: validate locally, agree, raise on every rank.

A check that fails on one rank only (a wrong input width, a flag that differs between ranks) would raise
there and leave the other ranks blocked in the next collective. Instead, the first time a layer (or a
collective) sees a **signature** (a tuple of the input's shape, dtype and the flags that decide which
collectives run), every rank of the group runs its local checks, and the ranks exchange
``(signature, error or None)`` with one small ``all_gather_object``. If any rank's check failed, or the
signatures differ, every rank raises the same ``ValueError``, which names each rank's problem. Otherwise
the signature is cached, and later calls with it cost one tuple lookup: no collective, no host sync.

Limit of the design: the caches stay identical on every rank (a signature enters them only when all ranks
agreed on it), so a later call agrees again exactly when its signature is new. If one rank alone later
changes its signature to a new one while the others repeat a cached one, only that rank enters the
agreement and the ranks' collectives no longer pair up (a hang or a mismatched-collective error, as
without agreement). The first call of each signature is protected, and so is every call where all ranks
see a new one (a new sequence length on every rank, a flag flipped everywhere). Setting ``FP4DIST_AGREE=always``
agrees on every call (one small collective per call; for debugging). Under ``torch.compile`` only the local
checks run, at trace time.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable

import torch
import torch.distributed as dist

MAX_CACHED = 256  #: signatures remembered per owner; beyond that the cache starts over (on every rank alike)


class AgreementCache:
    """The signatures an owner (a layer, a collective) has agreed on with its group."""

    def __init__(self):
        self.agreed: set[Hashable] = set()


def _group_size(group) -> int:
    return dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1


def _local_error(check: Callable[[], None]) -> str | None:
    try:
        check()
    except (ValueError, TypeError) as err:
        return f"{type(err).__name__}: {err}"
    return None


def _differences(fields: tuple[str, ...], signatures: list[tuple]) -> list[str]:
    lines = []
    for i, name in enumerate(fields):
        values = [sig[i] for sig in signatures]
        if any(v != values[0] for v in values):
            lines.append(f"{name} differs between ranks: " + ", ".join(f"rank {r}: {v}" for r, v in enumerate(values)))
    return lines


def agree(cache: AgreementCache, what: str, fields: tuple[str, ...], signature: tuple,
          check: Callable[[], None], group) -> None:
    """Run ``check`` (raises ValueError / TypeError on bad input) and agree with ``group`` on its outcome and on
    ``signature`` (values named by ``fields``, equal on every rank when the inputs are consistent).

    Raises ValueError on every rank if any rank's check failed or the signatures differ; ``what`` names the
    owner in the message. Cached signatures return at once.
    """
    always = os.environ.get("FP4DIST_AGREE", "") == "always"
    if signature in cache.agreed and not always:
        return
    if torch.compiler.is_compiling():
        check()
        return
    world = _group_size(group)
    if world == 1:
        check()  # its own exception, unchanged
        _remember(cache, signature)
        return
    error = _local_error(check)
    gathered: list = [None] * world
    dist.all_gather_object(gathered, (signature, error), group=group)
    problems = [f"rank {r}: {err}" for r, (_, err) in enumerate(gathered) if err is not None]
    problems += _differences(fields, [sig for sig, _ in gathered])
    if problems:
        me = dist.get_rank(group)
        raise ValueError(f"{what} (raised on every rank of its group; this is rank {me}): "
                         + "; ".join(problems))
    _remember(cache, signature)


def _remember(cache: AgreementCache, signature: tuple) -> None:
    if len(cache.agreed) >= MAX_CACHED:
        cache.agreed.clear()
    cache.agreed.add(signature)


def tensor_signature(x: torch.Tensor) -> tuple:
    """(shape, dtype) of a tensor as hashable, printable values."""
    return tuple(x.shape), str(x.dtype).removeprefix("torch.")
