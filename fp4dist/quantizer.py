"""NVFP4Quantizer: validates input and runs amax pass -> (group MAX all-reduce) -> cast pass."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from fp4dist import backends
from fp4dist.format import SUPPORTED_DTYPES
from fp4dist.tensor import NVFP4Tensor

_CAST_OUTPUTS = ("rowwise_data", "rowwise_scale_inv", "columnwise_data", "columnwise_scale_inv")
BLOCK = 16  #: elements per NVFP4 block; padded dims are rounded up to a multiple of it


def padded_size(n: int) -> int:
    """n rounded up to a multiple of :data:`BLOCK`."""
    return -(-n // BLOCK) * BLOCK


def pad_last_dim(x: torch.Tensor) -> torch.Tensor:
    """``x`` [..., n] zero-padded to [..., padded_size(n)]; ``x`` itself when n is a multiple of 16.

    Zeros change no block amax and add nothing to a product over that dim, so quantizing and
    multiplying the padded tensor gives the unpadded result in the first n columns."""
    n = x.shape[-1]
    return x if n % BLOCK == 0 else F.pad(x, (0, padded_size(n) - n))


def pad_matrix(x2d: torch.Tensor, rows: bool) -> torch.Tensor:
    """``x2d`` [m, n] zero-padded to [padded_size(m) if ``rows`` else m, padded_size(n)] (``rows``: 16x16 tiles
    or the transposed layout block the rows too); ``x2d`` itself when already aligned."""
    x2d = pad_last_dim(x2d)
    return F.pad(x2d, (0, 0, 0, padded_size(x2d.shape[0]) - x2d.shape[0])) if rows and x2d.shape[0] % BLOCK else x2d


@dataclass(frozen=True)
class RowBlocks:
    """The rows of a 2-D operand as ``groups`` shards of ``rows`` rows, each zero-padded to ``padded``
    rows (a multiple of 16 when the transposed layout needs it, else ``rows``): [groups * padded, n].

    ``groups`` is the size of the group a sequence-parallel operand was gathered over (rank-major
    shards), else 1."""

    groups: int
    rows: int
    padded: int

    @classmethod
    def of(cls, groups: int, rows: int, pad: bool) -> "RowBlocks":
        return cls(groups, rows, padded_size(rows) if pad else rows)

    def pad_shard(self, x2d: torch.Tensor) -> torch.Tensor:
        """One shard [rows, n] -> [padded, n]."""
        return x2d if self.padded == self.rows else F.pad(x2d, (0, 0, 0, self.padded - self.rows))

    def pad(self, t2d: torch.Tensor) -> torch.Tensor:
        """[groups * rows, n] -> [groups * padded, n], each shard's rows followed by its zero rows."""
        if self.padded == self.rows:
            return t2d
        t = t2d.reshape(self.groups, self.rows, -1)
        return F.pad(t, (0, 0, 0, self.padded - self.rows)).reshape(self.groups * self.padded, -1)

    def unpad(self, t2d: torch.Tensor) -> torch.Tensor:
        """[groups * padded, n] -> [groups * rows, n] (the inverse of :meth:`pad`)."""
        if self.padded == self.rows:
            return t2d
        return t2d.reshape(self.groups, self.padded, -1)[:, :self.rows].reshape(self.groups * self.rows, -1)


class NVFP4Quantizer:
    """Quantizes high-precision tensors to :class:`NVFP4Tensor`.

    Args:
        rowwise: produce the rowwise layout (X quantized along rows, 1x16 blocks or 16x16 tiles).
        columnwise: produce the columnwise layout (X^T quantized along its rows).
        block_2d: 16x16 tiles (weights) instead of 1x16 blocks; needs both matrix dims % 16.
        rht: Random Hadamard Transform of the columnwise layout (not with ``block_2d``).
        stochastic_rounding: SR instead of round-to-nearest-even (gradients).
        seed: SR seed; together with ``rng_offset`` and each element's position it fixes the draws.
        amax_group: a process group whose MAX-reduced amax every member uses (sequence-parallel
            shards that will be gathered); ``None`` uses the local amax.
        backend: "reference", "cuda" or "auto" (CUDA kernels for CUDA tensors when they load).

    Input: bf16/fp16/fp32, at least 2-D, viewed as X [m, n] with m the product of the leading dims.
    Rowwise needs n % 16 == 0, columnwise needs m % 16 == 0, block_2d needs both.
    """

    def __init__(self, rowwise: bool = True, columnwise: bool = True, block_2d: bool = False,
                 rht: bool = False, stochastic_rounding: bool = False, seed: int = 0,
                 amax_group: dist.ProcessGroup | None = None, backend: str = "auto"):
        if not (rowwise or columnwise):
            raise ValueError("NVFP4Quantizer needs rowwise=True or columnwise=True (or both)")
        if rht and block_2d:
            raise ValueError("rht=True cannot be combined with block_2d=True: the spec applies the RHT "
                             "to 1x16-block activations and gradients only, never to 16x16-tile weights")
        if backend not in backends.BACKENDS:
            raise ValueError(f"backend must be one of {backends.BACKENDS}, got {backend!r}")
        self.rowwise, self.columnwise = rowwise, columnwise
        self.block_2d, self.rht = block_2d, rht
        self.stochastic_rounding, self.seed = stochastic_rounding, seed
        self.amax_group, self.backend = amax_group, backend

    def __repr__(self) -> str:
        return (f"NVFP4Quantizer(rowwise={self.rowwise}, columnwise={self.columnwise}, block_2d={self.block_2d}, "
                f"rht={self.rht}, stochastic_rounding={self.stochastic_rounding}, seed={self.seed}, "
                f"backend={self.backend!r})")

    def check_input(self, x: torch.Tensor, rowwise: bool | None = None, columnwise: bool | None = None) -> None:
        """Raise TypeError/ValueError naming the problem if ``x`` cannot be quantized with these options."""
        rowwise = self.rowwise if rowwise is None else rowwise
        columnwise = self.columnwise if columnwise is None else columnwise
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"NVFP4Quantizer.quantize takes a torch.Tensor, got {type(x).__name__}")
        if x.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"NVFP4 quantization takes bfloat16, float16 or float32 input, got {x.dtype}")
        if x.dim() < 2:
            raise ValueError(f"NVFP4 quantization needs a tensor of at least 2 dims, got shape {tuple(x.shape)}")
        if x.numel() == 0:
            raise ValueError(f"cannot quantize an empty tensor (shape {tuple(x.shape)})")
        m, n = x.numel() // x.shape[-1], x.shape[-1]
        if (rowwise or self.block_2d) and n % 16:
            why = "block_2d=True" if self.block_2d else "rowwise=True"
            raise ValueError(f"the last dim must be a multiple of 16 for {why} (1x16 blocks along it), "
                             f"got {n} in shape {tuple(x.shape)}")
        if (columnwise or self.block_2d) and m % 16:
            why = "block_2d=True" if self.block_2d else "columnwise=True"
            raise ValueError(f"the product of the leading dims (m = {m}, shape {tuple(x.shape)}) must be a "
                             f"multiple of 16 for {why}: blocks run along it in the transposed layout")

    def compute_amax(self, x: torch.Tensor, *, rowwise: bool | None = None,
                     columnwise: bool | None = None) -> torch.Tensor:
        """Pass 1: fp32 [2] = (rowwise amax, columnwise amax), MAX-reduced over ``amax_group`` if set.
        ``rowwise`` / ``columnwise`` override the layouts this quantizer was built for (None keeps them)."""
        columnwise = self.columnwise if columnwise is None else columnwise
        self.check_input(x, rowwise, columnwise)
        x2d = x.detach().reshape(-1, x.shape[-1]).contiguous()
        return self._amax_2d(x2d, backends.select(self.backend, x.device), columnwise)

    def _amax_2d(self, x2d: torch.Tensor, backend, columnwise: bool) -> torch.Tensor:
        """compute_amax of the checked, contiguous 2-D view ``x2d`` on ``backend``."""
        amax = backend.compute_amax(x2d, rht=self.rht and columnwise)
        if self.amax_group is not None:
            dist.all_reduce(amax, op=dist.ReduceOp.MAX, group=self.amax_group)
        return amax

    def quantize(self, x: torch.Tensor, *, amax: torch.Tensor | None = None,
                 rng_offset: int | torch.Tensor = 0, row_offset: int = 0, rowwise: bool | None = None,
                 columnwise: bool | None = None, out: dict[str, torch.Tensor] | None = None) -> NVFP4Tensor:
        """Quantize ``x`` into the layouts this quantizer was built for.

        Args:
            amax: fp32 [2] from :meth:`compute_amax` (computed, and group-reduced, when None).
            rng_offset: SR stream offset (e.g. the training step), so each call draws fresh numbers: an int,
                or an int64 tensor of one element on x's device (read there, so a compiled or captured step
                can change it without retracing).
            row_offset: index in the full tensor of this shard's first row of the 2-D view; SR draws
                depend on the global position, so shards gathered later match the full tensor.
            rowwise, columnwise: override the layouts this quantizer was built for (None keeps them), e.g.
                rowwise only where no backward pass will need the transposed layout.
            out: preallocated tensors by NVFP4Tensor field name (``rowwise_data`` ... ``amax_columnwise``,
                the shapes and dtypes of the class table, contiguous) that the result's components are
                written into and become; a component not named is allocated.
        """
        return self._quantize(x, amax, rng_offset, row_offset, rowwise, columnwise, out, None)[0]

    def quantize_with_operands(self, x: torch.Tensor, *, operand_dtype: torch.dtype,
                               amax: torch.Tensor | None = None, rng_offset: int | torch.Tensor = 0,
                               row_offset: int = 0, rowwise: bool | None = None, columnwise: bool | None = None,
                               operands: tuple[bool, bool] = (True, True)
                               ) -> tuple[NVFP4Tensor, torch.Tensor | None, torch.Tensor | None]:
        """:meth:`quantize`, and its layouts decoded as GEMM operands for
        :func:`fp4dist.gemm.nvfp4_gemm`'s ``a_operand``: (tensor, rowwise operand [m, n], columnwise operand
        [n, m]) in ``operand_dtype``, each value e2m1(code) * float(scale) (exact in bf16, fp16 and fp32), None
        for a layout not made or not asked for in ``operands`` (rowwise, columnwise). On a GPU the cast kernel
        writes them in its own pass (bf16/fp16 input of the operands' dtype with 1x16 blocks), so the GEMM reads
        them without a decode launch."""
        tensor, rop, cop, _ = self._quantize(x, amax, rng_offset, row_offset, rowwise, columnwise, None,
                                             (operand_dtype, *operands, (None, None), (True, True)))
        return tensor, rop, cop

    def quantize_for_gemm(self, x: torch.Tensor, *, operand_dtype: torch.dtype, partner_amax,
                          amax: torch.Tensor | None = None, rng_offset: int | torch.Tensor = 0,
                          row_offset: int = 0, rowwise: bool | None = None, columnwise: bool | None = None,
                          keep_codes: tuple[bool, bool] = (True, True)):
        """X's layouts as operand A of their GEMMs: (tensor, rowwise operand [m, n], columnwise operand [n, m],
        alpha fp32 [2]) for :func:`fp4dist.gemm.operand_gemm`.

        ``partner_amax``: (rowwise, columnwise) the fp32 one-element amax of the other operand of the GEMM each layout
        is operand A of, or None for a layout whose operand is not wanted. Operand i is e2m1(code) * float(scale) *
        shift_i and alpha[i] the GEMM's alpha, (alpha_i, shift_i) = :func:`fp4dist.format.gemm_alpha`(amax_i,
        partner_i) (alpha[i] = 1 without a partner), so that alpha[i] * A_i @ B^T, B decoded with d = 1, is the
        product of the two layouts. ``keep_codes``: False for a layout whose codes no one reads: they are not
        written, and the tensor lacks that layout (its amax included). On a GPU the cast kernel writes the operands
        and alpha in its own pass where it can (as :meth:`quantize_with_operands`), else one decode launch per
        operand follows it."""
        want = (partner_amax[0] is not None, partner_amax[1] is not None)
        return self._quantize(x, amax, rng_offset, row_offset, rowwise, columnwise, None,
                              (operand_dtype, *want, tuple(partner_amax), tuple(keep_codes)))

    def _quantize(self, x, amax, rng_offset, row_offset, rowwise, columnwise, out, operands):
        """(NVFP4Tensor, rowwise operand, columnwise operand, alpha); operands: None, or (dtype, rowwise?,
        columnwise?, partner amaxes, codes kept)."""
        rowwise = self.rowwise if rowwise is None else rowwise
        columnwise = self.columnwise if columnwise is None else columnwise
        if not (rowwise or columnwise):
            raise ValueError("quantize needs rowwise=True or columnwise=True (or both)")
        self.check_input(x, rowwise, columnwise)
        x2d = x.detach().reshape(-1, x.shape[-1]).contiguous()
        backend = backends.select(self.backend, x.device)
        if amax is None:
            amax = self._amax_2d(x2d, backend, columnwise)
        else:
            if not isinstance(amax, torch.Tensor) or amax.numel() != 2 or amax.device != x.device:
                raise ValueError("amax must be the fp32 [2] tensor of compute_amax (rowwise, columnwise amax) on "
                                 f"the input's device {x.device}, got {amax!r}")
            amax = amax.detach().float().reshape(2)
        out = out or {}
        if set(out) - set(_CAST_OUTPUTS) - {"amax_rowwise", "amax_columnwise"}:
            raise ValueError(f"out takes NVFP4Tensor component names, got {sorted(out)}")
        kw = dict(rowwise=rowwise, columnwise=columnwise, block_2d=self.block_2d, rht=self.rht and columnwise,
                  stochastic_rounding=self.stochastic_rounding, seed=self.seed, rng_offset=rng_offset,
                  row_offset=row_offset)
        rop = cop = alpha = None
        if operands is None:
            cast_out = {"out": tuple(out.get(k) for k in _CAST_OUTPUTS)} if out else {}
            rd, rs, cd, cs = backend.cast(x2d, amax, **kw, **cast_out)
        else:
            dtype, want_row, want_col, partners, keep = operands
            rd, rs, cd, cs, rop, cop, alpha = backend.cast_with_operands(
                x2d, amax, **kw, operand_dtype=dtype, rowwise_operand=want_row and rowwise,
                columnwise_operand=want_col and columnwise, partner_amax=partners, keep_codes=keep)
        amaxes = [None, None]
        for i, (k, present) in enumerate((("amax_rowwise", rd is not None), ("amax_columnwise", cd is not None))):
            if present:
                amaxes[i] = out[k].copy_(amax[i]) if k in out else amax[i]
        tensor = NVFP4Tensor(
            rowwise_data=rd, rowwise_scale_inv=rs, columnwise_data=cd, columnwise_scale_inv=cs,
            amax_rowwise=amaxes[0], amax_columnwise=amaxes[1],
            shape=x.shape, dtype=x.dtype, block_2d=self.block_2d, rht=self.rht and columnwise,
            backend=self.backend, stochastic_rounding=self.stochastic_rounding,
            seed=self.seed if self.stochastic_rounding else 0, rng_offset=rng_offset, row_offset=row_offset)
        return tensor, rop, cop, alpha

    __call__ = quantize


def compute_amax_pair(qa: NVFP4Quantizer, a: torch.Tensor, qb: NVFP4Quantizer, b: torch.Tensor, *,
                      columnwise_a: bool, columnwise_b: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(qa.compute_amax(a, columnwise=columnwise_a), qb.compute_amax(b, columnwise=columnwise_b)), each fp32 [2].
    When both quantizers use one backend on one device and neither reduces over a group, the two passes write one
    buffer (on a GPU zeroed by one memset, not two): the same values."""
    backend = backends.select(qa.backend, a.device)
    if (backend is not backends.select(qb.backend, b.device) or a.device != b.device
            or qa.amax_group is not None or qb.amax_group is not None):
        return qa.compute_amax(a, columnwise=columnwise_a), qb.compute_amax(b, columnwise=columnwise_b)
    qa.check_input(a, None, columnwise_a)
    qb.check_input(b, None, columnwise_b)
    a2d, b2d = (t.detach().reshape(-1, t.shape[-1]).contiguous() for t in (a, b))
    both = backend.compute_amax_pair(a2d, b2d, rht_a=qa.rht and columnwise_a, rht_b=qb.rht and columnwise_b)
    return both[0:2], both[2:4]
