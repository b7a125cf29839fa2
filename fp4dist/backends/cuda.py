"""The CUDA backend: fp4dist's NVFP4 kernels and cuBLAS device-alpha GEMM (csrc/), JIT-built on first use.

Same interface and the same bits as :mod:`fp4dist.backends.reference` (see ``backends/__init__.py``).
Nothing here synchronizes with the host: amax, S_enc/S_dec and the decode scale stay on the device.

``available()`` is False, silently, without a CUDA device or with ``FP4DIST_DISABLE_CUDA=1``.
Otherwise the first call builds the one extension (every .cu / .cpp under csrc/, linked with cuBLAS) with
``torch.utils.cpp_extension.load`` (ninja) into ``$FP4DIST_BUILD_DIR`` (default
``~/.cache/fp4dist/build-<torch version>-<source hash>``, the hash over every file under csrc/ and the flags)
for sm_90; if that fails, or the GPU is not a Hopper (sm_9x) one, it logs one warning line on the ``fp4dist``
logger and returns False, and "auto" backends use the reference backend on the GPU.
"""

from __future__ import annotations

import hashlib
import logging
import numbers
import os
import threading
from pathlib import Path
from types import ModuleType

import torch

from fp4dist import rng
from fp4dist.format import SUPPORTED_DTYPES

log = logging.getLogger("fp4dist")

_CSRC = Path(__file__).resolve().parents[2] / "csrc"
# -fmad=false: no FMA contraction (it would change bits); no fast math / ftz (S_dec may be subnormal).
_CUDA_FLAGS = ["-O3", "-std=c++17", "-fmad=false", "-gencode=arch=compute_90,code=sm_90", "-lineinfo"]
_CXX_FLAGS = ["-O3", "-std=c++17"]
_LD_FLAGS = ["-lcublas"]

_lock = threading.Lock()
_ext: ModuleType | None = None
_build_failed = False

_DTYPES = SUPPORTED_DTYPES


def _csrc_files() -> list[Path]:
    """Every file of the extension's source tree (headers included), in a fixed order."""
    return sorted(p for p in _CSRC.rglob("*") if p.is_file() and p.suffix in (".cu", ".cuh", ".cpp", ".h"))


def _source_hash() -> str:
    h = hashlib.sha256()
    for path in _csrc_files():
        h.update(path.relative_to(_CSRC).as_posix().encode())
        h.update(path.read_bytes())
    h.update(" ".join(_CUDA_FLAGS + _CXX_FLAGS + _LD_FLAGS).encode())
    return h.hexdigest()[:16]


def _build() -> ModuleType:
    from torch.utils.cpp_extension import load

    digest = _source_hash()
    build_dir = os.environ.get("FP4DIST_BUILD_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "fp4dist", f"build-{torch.__version__}-{digest}")
    os.makedirs(build_dir, exist_ok=True)
    sources = [str(p) for p in _csrc_files() if p.suffix in (".cu", ".cpp")]
    return load(name=f"fp4dist_cuda_{digest}", sources=sources, extra_cflags=_CXX_FLAGS,
                extra_cuda_cflags=_CUDA_FLAGS, extra_ldflags=_LD_FLAGS, build_directory=build_dir, verbose=False)


#: the compute capabilities whose machine code the build emits (``_CUDA_FLAGS``): 9.x (Hopper)
_BUILT_FOR_MAJOR = 9


def unsupported_device() -> str | None:
    """Why the current GPU cannot run kernels built for sm_90 (machine code runs only on its own major
    architecture, and the build embeds no PTX), or None when it can."""
    major, minor = torch.cuda.get_device_capability()
    if major == _BUILT_FOR_MAJOR:
        return None
    return (f"they are built for sm_90 (Hopper) only and this GPU, {torch.cuda.get_device_name()}, is "
            f"sm_{major}{minor}")


def available() -> bool:
    """True when the kernels can run here (builds them once per process on the first call)."""
    global _ext, _build_failed
    if os.environ.get("FP4DIST_DISABLE_CUDA") == "1" or not torch.cuda.is_available():
        return False
    if _ext is not None:
        return True
    if _build_failed:
        return False
    problem = unsupported_device()
    if problem:
        _build_failed = True
        log.warning("fp4dist CUDA kernels unavailable (%s); using the reference backend (the same bits, slower)",
                    problem)
        return False
    with _lock:
        if _ext is None and not _build_failed:
            try:
                _ext = _build()
            except Exception as e:  # noqa: BLE001 - any failure means "not available", said once
                _build_failed = True
                first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "")
                log.warning("fp4dist CUDA kernels unavailable (%s: %s); using the reference backend",
                            type(e).__name__, first[:300])
                log.debug("fp4dist CUDA build failure", exc_info=True)
    return _ext is not None


def gemm_alpha(a: torch.Tensor, b: torch.Tensor, alpha: torch.Tensor, out_dtype: torch.dtype,
               b_kn: bool = False) -> torch.Tensor:
    """alpha * a [M, K] @ b [N, K]^T (``b_kn``: a @ b [K, N]) in out_dtype; a, b bf16 or fp16, fp32 accumulation,
    alpha an fp32 CUDA scalar."""
    out = torch.empty((a.shape[0], b.shape[1] if b_kn else b.shape[0]), dtype=out_dtype, device=a.device)
    _kernels().gemm_alpha(a.contiguous(), b.contiguous(), alpha.reshape(1).float().contiguous(), out, bool(b_kn))
    return out


def _kernels() -> ModuleType:
    if _ext is not None:
        return _ext
    if not available():
        raise RuntimeError("the fp4dist CUDA kernels are unavailable (see the fp4dist log line for why)")
    return _ext


def _check_x(x2d: torch.Tensor) -> None:
    if not isinstance(x2d, torch.Tensor) or x2d.device.type != "cuda":
        raise ValueError("the CUDA backend needs a CUDA tensor")
    if x2d.dim() != 2:
        raise ValueError(f"x2d must be 2-D, got shape {tuple(x2d.shape)}")
    if x2d.dtype not in _DTYPES:
        raise TypeError(f"NVFP4 quantization takes bfloat16, float16 or float32 input, got {x2d.dtype}")


def _aligned(x: torch.Tensor) -> torch.Tensor:
    """x itself when contiguous and 16-byte aligned, else an aligned contiguous copy."""
    x = x.contiguous()
    return x if x.data_ptr() % 16 == 0 else x.clone()


def _check_amax_input(x2d: torch.Tensor, rht: bool) -> None:
    _check_x(x2d)
    if rht and x2d.shape[0] % 16:
        raise ValueError(f"the RHT runs over 16-row chunks of X: m must be a multiple of 16, got {x2d.shape[0]}")


def compute_amax(x2d: torch.Tensor, *, rht: bool) -> torch.Tensor:
    """fp32 [2]: (max|X|, max|columnwise source|), the second after the RHT when ``rht``. NaN propagates."""
    _check_amax_input(x2d, rht)
    out = torch.empty(2, dtype=torch.float32, device=x2d.device)  # zeroed by the kernels' launcher
    _kernels().amax(_aligned(x2d), out, bool(rht))
    return out


def compute_amax_pair(a2d: torch.Tensor, b2d: torch.Tensor, *, rht_a: bool, rht_b: bool) -> torch.Tensor:
    """fp32 [4]: compute_amax(a2d) then compute_amax(b2d), both passes writing into one buffer zeroed once."""
    _check_amax_input(a2d, rht_a)
    _check_amax_input(b2d, rht_b)
    if a2d.device != b2d.device:
        raise ValueError(f"compute_amax_pair: both inputs must be on one device, got {a2d.device} and {b2d.device}")
    out = torch.empty(4, dtype=torch.float32, device=a2d.device)  # zeroed by the launcher
    _kernels().amax_pair(_aligned(a2d), bool(rht_a), _aligned(b2d), bool(rht_b), out)
    return out


def _out_or_new(t, shape, dtype, device, name):
    if t is None:
        return torch.empty(shape, dtype=dtype, device=device)
    if tuple(t.shape) != tuple(shape) or t.dtype != dtype or t.device != device or not t.is_contiguous():
        raise ValueError(f"out {name} must be a contiguous {dtype} tensor of shape {tuple(shape)} on {device}, "
                         f"got {t.dtype} {tuple(t.shape)} on {t.device}")
    if t.data_ptr() % 16:
        raise ValueError(f"out {name} must be 16-byte aligned")
    return t


def _int64_bits(v: int) -> int:
    """v mod 2^64 as the int64 with the same 64 bits."""
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >= 1 << 63 else v


def _check_rng_offset(rng_offset, device: torch.device) -> None:
    if isinstance(rng_offset, torch.Tensor):
        if rng_offset.device != device or rng_offset.dtype != torch.int64 or rng_offset.numel() != 1:
            raise ValueError(f"a tensor rng_offset must be one int64 element on {device}, got {rng_offset.dtype} "
                             f"{tuple(rng_offset.shape)} on {rng_offset.device}")
    elif not isinstance(rng_offset, numbers.Integral):
        raise TypeError(f"rng_offset must be an int or a one-element int64 CUDA tensor, got {type(rng_offset)}")


def cast(x2d: torch.Tensor, amax: torch.Tensor, *, rowwise: bool, columnwise: bool, block_2d: bool,
         rht: bool, stochastic_rounding: bool, seed: int, rng_offset: int | torch.Tensor, row_offset: int,
         out=None, streams: tuple[int, int] | None = None, operands=None, partners=(None, None), alpha_out=None,
         codes=(True, True)):
    """Quantize X [m, n] into the requested layouts (see reference.cast); ``out`` may hold preallocated
    (rowwise_data, rowwise_scale_inv, columnwise_data, columnwise_scale_inv), None where not requested.

    Stochastic rounding draws from (seed, rng_offset, stream) (fp4dist/rng.py), streams = (rowwise, columnwise)
    defaulting to ``rng.layout_streams(block_2d)``. ``rng_offset`` is an int (the keys are computed here) or a
    one-element int64 tensor on x2d's device, read by the kernels themselves (its 64 bits are the offset): the
    host never waits for it. ``operands``: (rowwise [m, n], columnwise [n, m]) tensors of x2d's dtype, None where
    not wanted, that the kernel also writes the decoded layouts into (GEMM operands, see cast_with_operands); only
    where :func:`operands_fused` holds. ``partners`` / ``alpha_out`` (fp32 [2]): see cast_with_operands.
    ``codes``: (rowwise, columnwise) False for a layout whose operand alone is wanted: its codes are not written and
    None is returned for them.
    """
    _check_x(x2d)
    m, n = x2d.shape
    if (rowwise or block_2d) and n % 16:
        raise ValueError(f"rowwise / block_2d quantization needs n % 16 == 0, got n = {n}")
    if (columnwise or block_2d) and m % 16:
        raise ValueError(f"columnwise / block_2d quantization needs m % 16 == 0, got m = {m}")
    if not (rowwise or columnwise):
        return None, None, None, None
    if stochastic_rounding and (row_offset < 0 or row_offset + m > 2**32 or n > 2**32):
        raise ValueError("stochastic rounding draws from 32-bit (row, col) positions: need "
                         f"0 <= row_offset and row_offset + m <= 2^32, got row_offset={row_offset}, m={m}")
    dev = x2d.device
    _check_rng_offset(rng_offset, dev)
    stream_row, stream_col = rng.layout_streams(block_2d) if streams is None else streams
    if not all(isinstance(s, int) and 0 <= s < 2**32 for s in (stream_row, stream_col)):
        raise ValueError(f"streams must be two ints in [0, 2^32), got {streams!r}")
    if amax.dtype != torch.float32 or amax.device != dev or amax.dim() != 1 or not amax.is_contiguous():
        amax = amax.to(device=dev, dtype=torch.float32).reshape(-1).contiguous()
    if amax.numel() != 2:
        raise ValueError(f"amax must have 2 elements (rowwise, columnwise), got {amax.numel()}")
    o = tuple(out) if out is not None else (None,) * 4
    if len(o) != 4:
        raise ValueError("out must be a tuple of 4 (rowwise_data, rowwise_scale_inv, columnwise_data, "
                         "columnwise_scale_inv)")
    rop, cop = operands if operands is not None else (None, None)
    if (not codes[0] and rowwise and rop is None) or (not codes[1] and columnwise and cop is None):
        raise ValueError("cast: a layout without its codes must have its decoded operand written")
    rd = rs = cd = cs = None
    if rowwise and codes[0]:
        rd = _out_or_new(o[0], (m, n // 2), torch.uint8, dev, "rowwise_data")
        rs = _out_or_new(o[1], (m, n // 16), torch.float8_e4m3fn, dev, "rowwise_scale_inv")
    if columnwise and codes[1]:
        cd = _out_or_new(o[2], (n, m // 2), torch.uint8, dev, "columnwise_data")
        cs = _out_or_new(o[3], (n, m // 16), torch.float8_e4m3fn, dev, "columnwise_scale_inv")
    if x2d.numel():
        empty, no_f = _empty(dev, torch.uint8), _empty(dev, torch.float32)
        no_op = _empty(dev, x2d.dtype)
        args = (_aligned(x2d), amax,
                rd if rd is not None else empty, rs.view(torch.uint8) if rs is not None else empty,
                cd if cd is not None else empty, cs.view(torch.uint8) if cs is not None else empty,
                rop if rop is not None else no_op, cop if cop is not None else no_op,
                _scalar_or_empty(partners[0], dev, "partner amax"), _scalar_or_empty(partners[1], dev, "partner amax"),
                alpha_out if alpha_out is not None else no_f,
                bool(rowwise), bool(columnwise), bool(block_2d), bool(rht), bool(stochastic_rounding))
        if stochastic_rounding and isinstance(rng_offset, torch.Tensor):
            _kernels().cast_device_key(*args, _int64_bits(seed), rng_offset, stream_row, stream_col,
                                       int(row_offset) & 0xFFFFFFFF)
        else:
            key_row = key_col = 0
            if stochastic_rounding:
                key_row = rng.stream_key(seed, rng_offset, stream_row)
                key_col = rng.stream_key(seed, rng_offset, stream_col)
            _kernels().cast(*args, key_row, key_col, int(row_offset) & 0xFFFFFFFF)
    return rd, rs, cd, cs


_WIDE_LIMIT = 0x7FFFFFFF - 512


def operands_fused(x2d: torch.Tensor, block_2d: bool, operand_dtype: torch.dtype) -> bool:
    """Whether the cast kernel itself can write x2d's decoded layouts in ``operand_dtype`` (csrc's
    cast_operands_fused, which the kernels check again): the wide kernel's inputs (bf16/fp16, rows of a multiple of
    16 bytes; x2d is made 16-byte aligned by the cast) with 1x16 blocks, operands of x2d's own dtype."""
    m, n = x2d.shape
    return (operand_dtype == x2d.dtype and x2d.dtype in (torch.bfloat16, torch.float16) and not block_2d
            and n % 8 == 0 and m <= _WIDE_LIMIT and n <= _WIDE_LIMIT)


def cast_with_operands(x2d: torch.Tensor, amax: torch.Tensor, *, rowwise: bool, columnwise: bool, block_2d: bool,
                       rht: bool, stochastic_rounding: bool, seed: int, rng_offset: int | torch.Tensor,
                       row_offset: int, operand_dtype: torch.dtype, rowwise_operand: bool = True,
                       columnwise_operand: bool = True, partner_amax=(None, None), keep_codes=(True, True),
                       out=None):
    """:func:`cast` and the cast layouts decoded as GEMM operands, scaled for their GEMMs' pairs, with the GEMMs'
    alpha (reference.cast_with_operands): in the cast's own pass where :func:`operands_fused` holds, else by a
    decode launch per layout after it."""
    _check_x(x2d)
    _check_out_dtype(operand_dtype)
    m, n = x2d.shape
    dev = x2d.device
    want_row, want_col = rowwise and rowwise_operand, columnwise and columnwise_operand
    partners = tuple(p if want else None for p, want in zip(partner_amax, (want_row, want_col)))
    skip = (want_row and not keep_codes[0], want_col and not keep_codes[1])
    kw = dict(rowwise=rowwise, columnwise=columnwise, block_2d=block_2d, rht=rht,
              stochastic_rounding=stochastic_rounding, seed=seed, rng_offset=rng_offset, row_offset=row_offset,
              out=out)
    if operands_fused(x2d, block_2d, operand_dtype) and x2d.numel():  # alpha written by the cast kernel
        alpha = torch.empty(2, dtype=torch.float32, device=dev)
        rop = torch.empty((m, n), dtype=operand_dtype, device=dev) if want_row else None
        cop = torch.empty((n, m), dtype=operand_dtype, device=dev) if want_col else None
        rd, rs, cd, cs = cast(x2d, amax, operands=(rop, cop), partners=partners, alpha_out=alpha,
                              codes=(not skip[0], not skip[1]), **kw)
        return rd, rs, cd, cs, rop, cop, alpha
    # the cast, then one decode launch per operand; with a partner, decode_operand_b with the roles swapped (the same
    # shift and alpha, format.gemm_alpha), which writes alpha even for an empty X
    layouts = cast(x2d, amax, **kw)
    ops, alphas = [None, None], []
    for i, want in enumerate((want_row, want_col)):
        data, scale = layouts[2 * i], layouts[2 * i + 1]
        if want and partners[i] is not None:
            ops[i], pair_alpha, _ = decode_operand_b(data, scale, partners[i], amax.reshape(2)[i], operand_dtype)
            alphas.append(pair_alpha)
        else:
            ops[i] = dequantize(data, scale, None, operand_dtype) if want else None
            alphas.append(torch.ones((), dtype=torch.float32, device=dev))
    rd, rs, cd, cs = layouts
    if skip[0]:
        rd = rs = None
    if skip[1]:
        cd = cs = None
    return rd, rs, cd, cs, ops[0], ops[1], torch.stack(alphas)


def _check_out_dtype(out_dtype: torch.dtype) -> None:
    if out_dtype not in _DTYPES:
        raise TypeError(f"out_dtype must be bfloat16, float16 or float32, got {out_dtype}")


def _packed(data: torch.Tensor, scale_inv: torch.Tensor, what: str):
    """(data, scale bytes, output rows, row bytes) of one NVFP4 layout as the kernels take it.

    data: uint8 [R, row_bytes], or [G, R, row_bytes] whose slices are row-major but may lie anywhere (stride(0) a
    multiple of 8 bytes); scale_inv: one-byte scales, [G, R, row_bytes / 8] with row-major slices, or any tensor of
    that many elements. What the kernels can not read in place is copied (contiguous, 8-byte aligned).
    """
    if not isinstance(data, torch.Tensor) or data.device.type != "cuda":
        raise ValueError(f"{what}: the CUDA backend needs CUDA tensors")
    if data.dtype != torch.uint8 or data.dim() not in (2, 3):
        raise ValueError(f"{what}: data must be a 2-D or 3-D uint8 tensor, got {data.dtype} {tuple(data.shape)}")
    slices = data.shape[0] if data.dim() == 3 else 1
    rows, row_bytes = data.shape[-2], data.shape[-1]
    if row_bytes % 8:
        raise ValueError(f"{what}: data.shape[-1] must be a multiple of 8 (16 codes per block), got {row_bytes}")
    n_scales = slices * rows * (row_bytes // 8)
    if scale_inv.numel() != n_scales or scale_inv.element_size() != 1 or scale_inv.device != data.device:
        raise ValueError(f"{what}: scale_inv must hold {n_scales} one-byte scales on {data.device}, got "
                         f"{scale_inv.dtype} {tuple(scale_inv.shape)} on {scale_inv.device}")

    def rows_contiguous(t: torch.Tensor) -> bool:
        return t.stride(-1) == 1 and (t.shape[-2] <= 1 or t.stride(-2) == t.shape[-1])

    sliced = data.dim() == 3 and slices > 1
    if not (rows_contiguous(data) and (not sliced or data.stride(0) % 8 == 0) and (sliced or data.is_contiguous())):
        data = data.contiguous()
    if data.data_ptr() % 8:
        data = data.clone()
    scale = scale_inv.view(torch.uint8)
    if not (sliced and scale.dim() == 3 and tuple(scale.shape) == (slices, rows, row_bytes // 8)
            and rows_contiguous(scale)):
        scale = scale.contiguous()
    return data, scale, slices * rows, row_bytes


_EMPTY: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}  # the "not given" argument, per device


def _empty(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    t = _EMPTY.get((device, dtype))
    if t is None:
        t = _EMPTY[(device, dtype)] = torch.empty(0, dtype=dtype, device=device)
    return t


def _scalar_or_empty(t: torch.Tensor | None, device: torch.device, what: str) -> torch.Tensor:
    if t is None:
        return _empty(device, torch.float32)
    if not isinstance(t, torch.Tensor) or t.numel() != 1:
        raise ValueError(f"{what} must be a one-element tensor")
    if t.dtype != torch.float32 or t.device != device:
        t = t.to(device=device, dtype=torch.float32)
    return t.reshape(1)


def dequantize(data: torch.Tensor, scale_inv: torch.Tensor, decode_scale: torch.Tensor | None,
               out_dtype: torch.dtype, *, amax: torch.Tensor | None = None) -> torch.Tensor:
    """[G * R, 2 * row_bytes] in out_dtype: e2m1(code) * float(scale) * d (one rounding to out_dtype after the fp32
    products, as reference.dequantize), d = decode_scale, or S_dec(amax) computed in the kernel (``decode_scale``
    None), or 1 (both None). data [R, row_bytes] or [G, R, row_bytes] slices (see _packed)."""
    _check_out_dtype(out_dtype)
    if decode_scale is not None and amax is not None:
        raise ValueError("dequantize takes decode_scale or amax, not both")
    data, scale, out_rows, row_bytes = _packed(data, scale_inv, "dequantize")
    dev = data.device
    out = torch.empty((out_rows, row_bytes * 2), dtype=out_dtype, device=dev)
    if out.numel():
        _kernels().dequantize(data, scale, _scalar_or_empty(decode_scale, dev, "decode_scale"),
                              _scalar_or_empty(amax, dev, "amax"), out)
    return out


def decode_operands(a_data: torch.Tensor, a_scale: torch.Tensor, b_data: torch.Tensor, b_scale: torch.Tensor,
                    amax_a: torch.Tensor, amax_b: torch.Tensor, out_dtype: torch.dtype):
    """A GEMM's two operands decoded in one launch, without their global scales: (a_op, b_op, alpha, shift).

    a_op = e2m1 * float(scale) * shift, b_op = e2m1 * float(scale), both [G * R, 2 * row_bytes] in out_dtype (exact
    in bf16, fp16 and fp32: a power-of-two shift; with fp16 a shift of 2^110 overflows, which takes
    amax_a * amax_b > ~2.4e45, beyond any fp16 input); (alpha, shift) = format.gemm_alpha(amax_a, amax_b) as fp32
    0-dim tensors, computed on the device, so alpha * a_op @ b_op^T is the product of the two decoded layouts.
    Operands as in dequantize (2-D, or 3-D slices).
    """
    _check_out_dtype(out_dtype)
    a_data, a_scale, a_rows, a_bytes = _packed(a_data, a_scale, "decode_operands: operand A")
    b_data, b_scale, b_rows, b_bytes = _packed(b_data, b_scale, "decode_operands: operand B")
    dev = a_data.device
    if b_data.device != dev:
        raise ValueError(f"decode_operands: the operands are on {dev} and {b_data.device}")
    a_op = torch.empty((a_rows, a_bytes * 2), dtype=out_dtype, device=dev)
    b_op = torch.empty((b_rows, b_bytes * 2), dtype=out_dtype, device=dev)
    alpha = torch.empty(1, dtype=torch.float32, device=dev)  # not views of one tensor: custom ops return them
    shift = torch.empty(1, dtype=torch.float32, device=dev)
    _kernels().decode_operands(a_data, a_scale, a_op, b_data, b_scale, b_op,
                               _scalar_or_empty(amax_a, dev, "amax_a"), _scalar_or_empty(amax_b, dev, "amax_b"),
                               alpha, shift)
    return a_op, b_op, alpha.reshape(()), shift.reshape(())


def decode_operand_b(b_data: torch.Tensor, b_scale: torch.Tensor, amax_a: torch.Tensor, amax_b: torch.Tensor,
                     out_dtype: torch.dtype):
    """(b_op, alpha, shift) for a GEMM whose operand A came decoded from its cast (cast_with_operands): B decoded
    times gemm_alpha's shift, alpha and the shift as fp32 0-dim tensors, in one launch (decode_operands with the
    shift on B; the product alpha * A @ B^T is the same bits)."""
    _check_out_dtype(out_dtype)
    b_data, b_scale, b_rows, b_bytes = _packed(b_data, b_scale, "decode_operand_b: operand B")
    dev = b_data.device
    b_op = torch.empty((b_rows, b_bytes * 2), dtype=out_dtype, device=dev)
    alpha = torch.empty(1, dtype=torch.float32, device=dev)
    shift = torch.empty(1, dtype=torch.float32, device=dev)
    _kernels().decode_operand_b(b_data, b_scale, b_op, _scalar_or_empty(amax_a, dev, "amax_a"),
                                _scalar_or_empty(amax_b, dev, "amax_b"), alpha, shift)
    return b_op, alpha.reshape(()), shift.reshape(())


def swap_first_dims(t: torch.Tensor) -> torch.Tensor:
    """[a, b, ...] -> [b, a, ...], contiguous (trailing dims move together as one row of bytes). ``t`` is read in
    place when each t[i] is contiguous (any stride(0)), else copied first."""
    if t.dim() < 2:
        raise ValueError(f"swap_first_dims needs at least 2 dims, got shape {tuple(t.shape)}")
    a, b = t.shape[0], t.shape[1]
    out = torch.empty((b, a, *t.shape[2:]), dtype=t.dtype, device=t.device)
    if t.numel():
        row_bytes = t.numel() // (a * b) * t.element_size()
        in_place = t[0].is_contiguous() and (a == 1 or t.stride(0) * t.element_size() >= b * row_bytes)
        src = t if in_place else t.contiguous()
        _kernels().swap_first_dims(src, out, a, [0], [src.stride(0) * src.element_size()], [b], [row_bytes], [0])
    return out


def swap_first_dims_parts(src: torch.Tensor, a: int, in_offsets: list[int], in_stride: list[int], rows: list[int],
                          row_bytes: list[int], out_offsets: list[int], out_nbytes: int) -> torch.Tensor:
    """uint8 [out_nbytes]: part k of ``src``'s bytes, [a, rows[k], row_bytes[k]] at byte in_offsets[k] with slice i at
    + i * in_stride[k], written as [rows[k], a, row_bytes[k]] at out_offsets[k]; all parts (at most 2) in one launch.
    Bytes of the output outside the parts are left unwritten."""
    out = torch.empty(out_nbytes, dtype=torch.uint8, device=src.device)
    _kernels().swap_first_dims(src, out, a, in_offsets, in_stride, rows, row_bytes, out_offsets)
    return out


def check_trailers(gathered: torch.Tensor, offset: int, stride: int, rows: int, bad_count: torch.Tensor,
                   record: torch.Tensor) -> None:
    """The gather's device check in one launch: the trailers, ``rows`` rows of 4 int64 at byte ``offset + r * stride``
    of ``gathered``, compared with row 0; on a difference record (int64 [rows, 4]) = them and bad_count += 1."""
    _kernels().check_trailers(gathered, offset, stride, rows, bad_count, record)


_SLOTS = {"rowwise_data": 0, "rowwise_scale_inv": 1, "columnwise_data": 2, "columnwise_scale_inv": 3}


def gather_finisher(where, bad_count: torch.Tensor, record: torch.Tensor):
    """The C++ end of a steady-state gather for ``where`` (a ``fp4dist.gather_buffer.GatheredLayout``): called with
    the gathered bytes it launches the device check (and the columnwise reorder where ``where`` has one) and returns
    (rowwise_data, rowwise_scale_inv, columnwise_data, columnwise_scale_inv, amax_rowwise, amax_columnwise), None
    where absent: the same tensors as ``where.components`` after ``check.update``, in one call."""
    def views(spec):
        return [(_SLOTS[name], list(size), list(stride), off, dtype is torch.float8_e4m3fn)
                for name, size, stride, off, dtype in spec]

    if where.swap is None:
        swap = ([], [], [], [], [], 0)
    else:
        _, in_offsets, in_stride, rows, row_bytes, out_offsets, out_nbytes = where.swap
        swap = (in_offsets, in_stride, rows, row_bytes, out_offsets, out_nbytes)
    return _kernels().GatherFinish(where.nbytes, where.world, views(where.views), views(where.swapped_views), *swap,
                                   where.amax_index, where.layout.rowwise, where.layout.columnwise,
                                   where.trailer_offset, where.trailer_stride, bad_count.reshape(1), record)
