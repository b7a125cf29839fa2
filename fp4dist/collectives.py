"""The single-tensor c10d collectives that fp4dist calls, under the name of the installed torch.

torch 2.13 names ``all_gather_into_tensor`` / ``reduce_scatter_tensor`` ``all_gather_single`` /
``reduce_scatter_single`` (same semantics; the old names warn); older torch has only the old names.
The function is looked up at each call, so a monkeypatched ``torch.distributed`` function is the one
that runs, and ``torch.compile`` sees the c10d function itself, which dynamo traces as a functional
collective.

* ``all_gather_single(out, inp, group, async_op)``: out [world * k, ...] = the ranks' inp [k, ...] in
  rank order.
* ``reduce_scatter_single(out, inp, group)``: out [k, ...] = this rank's k rows of the sum of the ranks'
  inp [world * k, ...].
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def all_gather_single(out: torch.Tensor, inp: torch.Tensor, group=None, async_op: bool = False):
    fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    return fn(out, inp, group=group, async_op=async_op)


def reduce_scatter_single(out: torch.Tensor, inp: torch.Tensor, group=None, async_op: bool = False):
    fn = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    return fn(out, inp, group=group, async_op=async_op)
