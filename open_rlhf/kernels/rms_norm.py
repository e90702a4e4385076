"""Fused RMSNorm: a Triton forward/backward kernel, its autograd.Function, a drop-in nn.Module, a model patcher.

RMSNorm (Zhang & Sennrich 2019, https://arxiv.org/abs/1910.07467, Eq. 4) normalises each row of hidden states
by its root mean square, with no mean subtraction and no bias:

    rstd = 1 / sqrt(mean(x**2, over H) + eps)        x_hat = x * rstd        y = x_hat * (offset + w)

``offset`` is 0 for Llama/Qwen2/Mistral and 1 for Gemma, whose weight is stored zero-centred (``1 + w``).

Why our own code: TRL 1.16 has no RMSNorm kernel of its own (its ``use_liger_kernel`` flag hands the whole model
to the external Liger-Kernel package). This module is the project's kernel (issue 5); the anchor to beat is
Liger-Kernel 0.8.5's RMSNorm. Layering follows Liger: kernel -> launcher -> `RMSNormFunction` -> `FusedRMSNorm`,
every layer tested against the pure-torch `rms_norm_reference` (``tests/test_rms_norm_kernel.py``).

What the kernels actually do:

- Forward: one program per block of ``BLOCK_ROWS`` rows; a row is one tile of ``BLOCK_SIZE`` (next power of two
  >= H) columns, so each row is read once and written once. The sum of squares, ``rstd`` and the product with
  the weight are computed in fp32 whatever the input dtype; the per-row ``rstd`` (fp32, shape ``(N,)``) is
  saved for the backward so it never recomputes the reduction.
- Backward: one program per streaming multiprocessor (SM). Each program walks a contiguous range of rows,
  writes ``dX`` for them and accumulates its share of ``dW`` in fp32 registers; the ``(programs, H)`` partial
  sums are added by one ``torch.sum`` afterwards. This is the two-stage reduction of the Triton layer-norm
  tutorial (https://triton-lang.org/main/getting-started/tutorials/05-layer-norm.html), with one partial row
  per program instead of a lock-protected buffer, so the result is deterministic.

Numerics: inputs are loaded in their dtype and upcast to fp32; the mean square, ``rstd`` (``rsqrt``), the
weight product and both backward reductions (``mean(g * x_hat)`` per row, ``dW`` over rows) are fp32, and each
result is rounded once to its output dtype. In ``"llama"`` casting mode ``x_hat`` is rounded to the input dtype
before the weight product, exactly as LlamaRMSNorm does, so bf16 forward outputs equal eager's except where the
two fp32 ``rstd`` differ in the last bit. The backward reduces in fp32 where eager bf16 first rounds ``dy * w``
and ``dy * x_hat`` to bf16; against fp64 the two have errors of the same few ulps (kernels/README.md).
Element offsets are int64 (N * H can pass 2**31).

Triton is imported lazily: ``import open_rlhf.kernels`` works without Triton or a GPU. `fused_rms_norm` (and so
`FusedRMSNorm`) runs the Triton kernel when the input is on a CUDA device, or anywhere when ``TRITON_INTERPRET=1``
(Triton's numpy interpreter; slow, for tests). Otherwise it falls back to `rms_norm_reference` and warns once
per process.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import os
import types
import warnings
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:  # at run time `_kernels()` imports these on first use and hands them to the kernels
    import triton.language as tl
    from triton.language.standard import _sum_combine

__all__ = [
    "CASTING_MODES",
    "MAX_FUSED_SIZE",
    "FusedRMSNorm",
    "RMSNormFunction",
    "patch_rms_norm",
    "fused_rms_norm",
    "rms_norm_reference",
]

# "llama": x_hat is rounded to the input dtype before the weight multiply (LlamaRMSNorm, Qwen2RMSNorm, ...).
# "gemma": the weight multiply is done in fp32 and only the result is rounded (GemmaRMSNorm and its kin).
CASTING_MODES = ("llama", "gemma")
# One row must fit in one program's registers: the tile is the next power of two >= H (as in Liger-Kernel).
MAX_FUSED_SIZE = 65536
# Target elements per tile; small hidden sizes pack several rows into one tile.
_TILE_ELEMENTS = 4096
_MAX_BLOCK_ROWS = 16

_fallback_warned = False


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _next_power_of_2(n: int) -> int:
    return 1 << (n - 1).bit_length() if n > 1 else 1


def _check_casting_mode(casting_mode: str) -> None:
    if casting_mode not in CASTING_MODES:
        raise ValueError(f"casting_mode={casting_mode!r} is not one of {CASTING_MODES}.")


def rms_norm_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float = 1e-6,
    offset: float = 0.0,
    casting_mode: str = "llama",
) -> torch.Tensor:
    """Pure-torch RMSNorm with the exact dtype behaviour of transformers' LlamaRMSNorm or GemmaRMSNorm.

    With ``offset=0, casting_mode="llama"`` this is transformers 5.23's ``LlamaRMSNorm.forward`` (also
    Qwen2RMSNorm, MistralRMSNorm): normalise in fp32, round ``x_hat`` to the input dtype, then multiply by
    the weight in the promoted dtype. With ``offset=1, casting_mode="gemma"`` it is ``GemmaRMSNorm.forward``:
    ``x_hat * (1 + w)`` entirely in fp32, rounded to the input dtype at the end.

    Args:
        x (`torch.Tensor` of shape `(B, T, H)`, `(N, H)` or any `(..., H)`): hidden states; fp32, bf16 or fp16.
        weight (`torch.Tensor` of shape `(H,)`): the learned scale; any float dtype.
        eps (`float`): added to the mean square before the square root.
        offset (`float`): added to the weight before the multiply (0 for Llama, 1 for Gemma).
        casting_mode (`str`): ``"llama"`` or ``"gemma"``, see above.

    Returns:
        `torch.Tensor` of the shape of ``x``. Dtype: ``torch.promote_types(x.dtype, weight.dtype)`` in
        ``"llama"`` mode (as LlamaRMSNorm: bf16 input with an fp32 weight gives fp32), ``x.dtype`` in
        ``"gemma"`` mode.

    Raises:
        ValueError: when ``casting_mode`` is unknown.

    Source: RMSNorm, Zhang & Sennrich 2019, https://arxiv.org/abs/1910.07467, Eq. 4.
    """
    _check_casting_mode(casting_mode)
    input_dtype = x.dtype
    x_fp32 = x.to(torch.float32)
    x_hat = x_fp32 * torch.rsqrt(x_fp32.pow(2).mean(-1, keepdim=True) + eps)
    if casting_mode == "gemma":
        return (x_hat * (offset + weight.to(torch.float32))).to(input_dtype)
    if offset == 0.0:
        return weight * x_hat.to(input_dtype)
    # Llama rounding with an offset: multiply in fp32 and round once to the output dtype, which is what
    # `weight * x_hat` above does (a product of two bf16/fp16 values is exact in fp32).
    out_dtype = torch.promote_types(input_dtype, weight.dtype)
    return ((offset + weight.to(torch.float32)) * x_hat.to(input_dtype).to(torch.float32)).to(out_dtype)


# The three functions below are Triton kernels written as plain functions so that this module imports without
# Triton; `_kernels()` compiles them. Row sums are `tl.reduce(v, axis, _sum_combine)`, which is what `tl.sum`
# lowers to for floats, rather than `tl.sum` itself: Triton decorates its own library (`tl.sum`, `tl.zeros`,
# ...) once, when it is first imported, so if anything imported Triton before TRITON_INTERPRET=1 was set
# (transformers does), interpreted kernels could not call them. Builtins such as `tl.reduce` work either way,
# and the interpreter recognises `_sum_combine` and reduces with numpy.


def _cast(x, dtype: tl.constexpr, RTNE_BF16: tl.constexpr):
    # Triton's interpreter truncates fp32 -> bf16 (round toward zero) where GPUs round to nearest even; under
    # TRITON_INTERPRET=1 we pre-round the fp32 bits so that the CPU tests see the GPU's numerics.
    if RTNE_BF16 and dtype == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
        x = bits.to(tl.float32, bitcast=True)
    return x.to(dtype)


def _rms_norm_fwd_kernel(
    Y, X, W, RSTD,  # pointers: (N, H), (N, H), (H,), (N,)
    stride_y, stride_x,  # row strides; the column stride is 1
    n_rows, n_cols, eps, offset,
    CASTING_MODE: tl.constexpr,  # 0 = llama, 1 = gemma
    RTNE_BF16: tl.constexpr,  # True only under the interpreter, see _cast
    BLOCK_SIZE: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    cols = tl.arange(0, BLOCK_SIZE)
    row_mask = rows < n_rows
    col_mask = cols < n_cols
    mask = row_mask[:, None] & col_mask[None, :]
    # int64 offsets: N * H passes 2**31 at e.g. 65536 tokens x H=32768.
    rows64 = rows.to(tl.int64)
    x = tl.load(X + rows64[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    w = tl.load(W + cols, mask=col_mask, other=0.0).to(tl.float32)
    # Padded columns load 0, so they add nothing to the sum; divide by the true H.
    rstd = tl.math.rsqrt(tl.reduce(x * x, 1, _sum_combine) / n_cols + eps)
    tl.store(RSTD + rows, rstd, mask=row_mask)
    x_hat = x * rstd[:, None]
    if CASTING_MODE == 0:
        x_hat = _cast(x_hat, X.dtype.element_ty, RTNE_BF16).to(tl.float32)
    y = x_hat * (offset + w)[None, :]
    tl.store(Y + rows64[:, None] * stride_y + cols[None, :], _cast(y, Y.dtype.element_ty, RTNE_BF16), mask=mask)


def _rms_norm_bwd_kernel(
    DX, DY, X, W, RSTD, DW_PARTIAL,  # pointers: (N, H) x3, (H,), (N,), (programs, H) fp32
    stride_dx, stride_dy, stride_x,
    n_rows, n_cols, rows_per_program, offset,
    CASTING_MODE: tl.constexpr,
    RTNE_BF16: tl.constexpr,
    COMPUTE_DW: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_SIZE)
    col_mask = cols < n_cols
    w = tl.load(W + cols, mask=col_mask, other=0.0).to(tl.float32) + offset
    dw_acc = tl.full((BLOCK_SIZE,), 0.0, tl.float32)
    row_start = pid * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, n_rows)
    for block_start in range(row_start, row_end, BLOCK_ROWS):
        rows = block_start + tl.arange(0, BLOCK_ROWS)
        row_mask = rows < row_end
        mask = row_mask[:, None] & col_mask[None, :]
        rows64 = rows.to(tl.int64)
        dy = tl.load(DY + rows64[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        x = tl.load(X + rows64[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + rows, mask=row_mask, other=0.0)
        x_hat = x * rstd[:, None]
        # dL/dx_hat; the round of x_hat to the input dtype in llama mode has an identity gradient.
        g = dy * w[None, :]
        # dx = rstd * (g - x_hat * mean(g * x_hat)): the Jacobian of x -> x * rstd(x), applied to g.
        c = tl.reduce(g * x_hat, 1, _sum_combine) / n_cols
        dx = rstd[:, None] * (g - x_hat * c[:, None])
        tl.store(DX + rows64[:, None] * stride_dx + cols[None, :], _cast(dx, DX.dtype.element_ty, RTNE_BF16), mask=mask)
        if COMPUTE_DW:
            if CASTING_MODE == 0:
                # The forward multiplied the weight by the rounded x_hat; its gradient sees the same value.
                x_hat = _cast(x_hat, X.dtype.element_ty, RTNE_BF16).to(tl.float32)
            dw_acc += tl.reduce(dy * x_hat, 0, _sum_combine)
    if COMPUTE_DW:
        tl.store(DW_PARTIAL + pid * n_cols + cols, dw_acc, mask=col_mask)


@functools.lru_cache(maxsize=2)
def _kernels(interpret: bool) -> tuple[Any, Any]:
    """Import Triton and JIT the forward and backward kernels; one set per value of ``TRITON_INTERPRET``.

    ``triton.jit`` reads ``TRITON_INTERPRET`` when it decorates, hence the decoration here, after the caller
    had a chance to set it. Each set gets its own globals (``tl``, ``_sum_combine`` and its own jitted
    ``_cast``), so an interpreted and a compiled set can coexist in one process (CPU tests and GPU tests in one
    pytest session).
    """
    import triton
    import triton.language
    from triton.language.standard import _sum_combine

    namespace = {"__builtins__": builtins, "__name__": __name__, "tl": triton.language, "_sum_combine": _sum_combine}

    def jit(fn):
        rebound = types.FunctionType(fn.__code__, namespace, fn.__name__, fn.__defaults__)
        rebound.__annotations__ = fn.__annotations__  # Triton finds tl.constexpr parameters here
        rebound.__qualname__ = fn.__qualname__
        return triton.jit(rebound)

    namespace["_cast"] = jit(_cast)
    return jit(_rms_norm_fwd_kernel), jit(_rms_norm_bwd_kernel)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _launch_settings(n_rows: int, n_cols: int, backward: bool = False) -> tuple[int, int, int]:
    """``(BLOCK_SIZE, BLOCK_ROWS, num_warps)`` for an ``(N, H)`` problem.

    BLOCK_SIZE is the next power of two >= H: a row is one tile, read once. BLOCK_ROWS packs rows of a small H
    into tiles of ~4096 elements (1 row from H = 4096 up). Warps follow the Liger/Unsloth table (4 up to
    H = 2048, 8 up to 8192, 16, then 32 from 32768) so that a thread holds about 32 fp32 values of a row; the
    backward, which keeps dy, x and a dW accumulator live, gets 32 warps from H > 8192 because ptxas (sm_90,
    Triton 3.9) then reports 96 instead of 384 bytes of register spill per thread at H = 16384. These are
    static choices; GPU timings are pending (kernels/README.md).

    Raises:
        ValueError: when ``n_cols`` (H) exceeds `MAX_FUSED_SIZE`.
    """
    block_size = _next_power_of_2(n_cols)
    if block_size > MAX_FUSED_SIZE:
        raise ValueError(
            f"Hidden size H={n_cols} needs a tile of {block_size} > MAX_FUSED_SIZE={MAX_FUSED_SIZE} elements; "
            "use rms_norm_reference for such rows."
        )
    num_warps = 32 if block_size >= 32768 else 16 if block_size >= 8192 else 8 if block_size >= 2048 else 4
    if backward and block_size > 8192:
        num_warps = 32
    block_rows = max(1, min(_TILE_ELEMENTS // block_size, _MAX_BLOCK_ROWS, _next_power_of_2(n_rows)))
    return block_size, block_rows, num_warps


def _num_programs_backward(device: torch.device) -> int:
    # One program per SM keeps the (programs, H) partial-dW buffer small; on CPU (interpreter) any small
    # number > 1 exercises the partial-sum path.
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def _on_device(t: torch.Tensor) -> contextlib.AbstractContextManager:
    # Triton launches on the current CUDA device; make it the tensor's (e.g. x on cuda:1 while cuda:0 is current).
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _as_rows(t: torch.Tensor) -> torch.Tensor:
    """(..., H) -> (N, H) with unit column stride (a copy only when the input is not already so)."""
    t2d = t.reshape(-1, t.shape[-1])
    return t2d if t2d.stride(-1) == 1 else t2d.contiguous()


def _rms_norm_forward(
    x: torch.Tensor, weight: torch.Tensor, eps: float, offset: float, casting_mode: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the forward kernel. Returns ``(y (N, H), x2d (N, H), rstd (N,) fp32)``."""
    fwd_kernel, _ = _kernels(_interpret())
    x2d = _as_rows(x)
    n_rows, n_cols = x2d.shape
    block_size, block_rows, num_warps = _launch_settings(n_rows, n_cols)
    out_dtype = torch.promote_types(x.dtype, weight.dtype) if casting_mode == "llama" else x.dtype
    y = torch.empty((n_rows, n_cols), dtype=out_dtype, device=x.device)
    rstd = torch.empty(n_rows, dtype=torch.float32, device=x.device)
    if n_rows > 0:
        grid = (_cdiv(n_rows, block_rows),)
        fwd_kernel[grid](
            y, x2d, weight, rstd, y.stride(0), x2d.stride(0), n_rows, n_cols, eps, offset,
            CASTING_MODE=CASTING_MODES.index(casting_mode), RTNE_BF16=_interpret(),
            BLOCK_SIZE=block_size, BLOCK_ROWS=block_rows, num_warps=num_warps,
        )
    return y, x2d, rstd


def _rms_norm_backward(
    dy: torch.Tensor,
    x2d: torch.Tensor,
    weight: torch.Tensor,
    rstd: torch.Tensor,
    offset: float,
    casting_mode: str,
    compute_dw: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Launch the backward kernel. Returns ``(dx (N, H) in x's dtype, dw (H,) in weight's dtype or None)``."""
    _, bwd_kernel = _kernels(_interpret())
    # The autograd engine can hand over expanded (stride-0) or otherwise strided gradients.
    dy2d = _as_rows(dy)
    n_rows, n_cols = x2d.shape
    block_size, block_rows, num_warps = _launch_settings(n_rows, n_cols, backward=True)
    n_programs = max(1, min(_num_programs_backward(x2d.device), _cdiv(n_rows, block_rows)))
    # Whole tiles per program so that no program's last tile spills into its neighbour's range.
    rows_per_program = _cdiv(_cdiv(n_rows, n_programs), block_rows) * block_rows
    n_programs = max(1, _cdiv(n_rows, rows_per_program))
    dx = torch.empty_like(x2d)
    dw_partial = torch.empty((n_programs, n_cols) if compute_dw else (1, 1), dtype=torch.float32, device=x2d.device)
    if n_rows > 0:
        bwd_kernel[(n_programs,)](
            dx, dy2d, x2d, weight, rstd, dw_partial,
            dx.stride(0), dy2d.stride(0), x2d.stride(0),
            n_rows, n_cols, rows_per_program, offset,
            CASTING_MODE=CASTING_MODES.index(casting_mode), RTNE_BF16=_interpret(), COMPUTE_DW=compute_dw,
            BLOCK_SIZE=block_size, BLOCK_ROWS=block_rows, num_warps=num_warps,
        )
    elif compute_dw:
        dw_partial = torch.zeros((1, n_cols), dtype=torch.float32, device=x2d.device)
    dw = dw_partial.sum(0).to(weight.dtype) if compute_dw else None
    return dx, dw


class RMSNormFunction(torch.autograd.Function):
    """Autograd wrapper of the Triton kernels: ``RMSNormFunction.apply(x, weight, eps, offset, casting_mode)``.

    Always launches Triton (compiled on CUDA, or the interpreter under ``TRITON_INTERPRET=1``); use `fused_rms_norm`
    for the version that falls back to `rms_norm_reference` where Triton cannot run.

    Args (of ``apply``):
        x (`torch.Tensor` of shape `(B, T, H)` or `(N, H)`): hidden states, fp32/bf16/fp16, any strides.
        weight (`torch.Tensor` of shape `(H,)`): the scale, any float dtype.
        eps (`float`): added to the mean square.
        offset (`float`): added to the weight (1.0 for Gemma-style zero-centred weights).
        casting_mode (`str`): ``"llama"`` or ``"gemma"``, see `rms_norm_reference`.

    Returns:
        `torch.Tensor` of the shape of ``x``; dtype as `rms_norm_reference`. The backward returns ``dx`` in
        ``x.dtype`` and ``dw`` in ``weight.dtype`` (the ``(programs, H)`` partial sums are reduced in fp32).

    Saved for backward: ``x`` as ``(N, H)`` (a copy only when it was not row-major), the weight and ``rstd``
    (``N`` fp32 values) -- not the normalised activations.

    Source: RMSNorm, Zhang & Sennrich 2019, https://arxiv.org/abs/1910.07467, Eq. 4; backward derived from it:
    dx = rstd * (g - x_hat * mean(g * x_hat)) with g = dy * (offset + w), dw = sum over rows of dy * x_hat.
    """

    @staticmethod
    def forward(ctx, x, weight, eps, offset, casting_mode):
        with _on_device(x):
            y, x2d, rstd = _rms_norm_forward(x, weight, eps, offset, casting_mode)
        ctx.save_for_backward(x2d, weight, rstd)
        ctx.offset = offset
        ctx.casting_mode = casting_mode
        ctx.x_shape = x.shape
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, dy):
        x2d, weight, rstd = ctx.saved_tensors
        with _on_device(x2d):
            dx, dw = _rms_norm_backward(
                dy, x2d, weight, rstd, ctx.offset, ctx.casting_mode, compute_dw=ctx.needs_input_grad[1]
            )
        return dx.view(ctx.x_shape), dw, None, None, None


def _triton_unavailable_reason(x: torch.Tensor) -> str | None:
    """Why the Triton path cannot run for ``x`` (None when it can)."""
    if not _interpret():
        if not torch.cuda.is_available():
            return "no CUDA GPU is available (set TRITON_INTERPRET=1 to run the kernel on CPU, slowly)"
        if x.device.type != "cuda":
            return f"the input is on {x.device}, not a CUDA device"
    try:
        import triton  # noqa: F401
    except ImportError:
        return "Triton is not installed"
    return None


def fused_rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float = 1e-6,
    offset: float = 0.0,
    casting_mode: str = "llama",
) -> torch.Tensor:
    """RMSNorm through the fused Triton kernel, or through `rms_norm_reference` where Triton cannot run.

    The kernel runs when the input is on a CUDA device, or on any device when ``TRITON_INTERPRET=1``. Otherwise
    (no GPU, CPU input, no Triton) the pure-torch reference runs and one `UserWarning` is issued per process.

    Args:
        x (`torch.Tensor` of shape `(B, T, H)` or `(N, H)`): hidden states; fp32, bf16 or fp16; may be
            non-contiguous.
        weight (`torch.Tensor` of shape `(H,)`): the scale.
        eps (`float`): added to the mean square before the square root.
        offset (`float`): added to the weight (0 for Llama/Qwen2, 1 for Gemma).
        casting_mode (`str`): ``"llama"`` or ``"gemma"``, see `rms_norm_reference`.

    Returns:
        `torch.Tensor` of the shape of ``x``, dtype as `rms_norm_reference`.

    Raises:
        ValueError: when ``weight`` is not of shape ``(H,)``, ``casting_mode`` is unknown, or H > 65536.

    Source: RMSNorm, Zhang & Sennrich 2019, https://arxiv.org/abs/1910.07467, Eq. 4.
    """
    global _fallback_warned
    _check_casting_mode(casting_mode)
    if weight.dim() != 1 or x.shape[-1] != weight.shape[0]:
        raise ValueError(
            f"fused_rms_norm: weight of shape {tuple(weight.shape)} does not match the last dimension of x "
            f"{tuple(x.shape)}; it must be (H,) = ({x.shape[-1]},)."
        )
    reason = _triton_unavailable_reason(x)
    if reason is not None:
        if not _fallback_warned:
            _fallback_warned = True
            warnings.warn(
                f"open_rlhf fused RMSNorm: {reason}; using the pure-torch reference instead.",
                UserWarning,
                stacklevel=2,
            )
        return rms_norm_reference(x, weight, eps, offset, casting_mode)
    return RMSNormFunction.apply(x, weight, eps, offset, casting_mode)


class FusedRMSNorm(nn.Module):
    """Drop-in replacement for transformers' LlamaRMSNorm / Qwen2RMSNorm (and GemmaRMSNorm with offset=1).

    Same parameter name (``weight``, so state dicts load unchanged), same ``variance_epsilon`` attribute (``eps``
    is an alias, as Gemma names it), same output dtype rules. See `fused_rms_norm` for when the kernel runs.

    Args:
        hidden_size (`int`): H, the size of the last dimension.
        eps (`float`, defaults to 1e-6): added to the mean square.
        offset (`float`, defaults to 0.0): added to the weight; 1.0 for Gemma-style weights stored as ``w - 1``.
        casting_mode (`str`, *optional*): ``"llama"`` or ``"gemma"``; defaults to ``"llama"`` when ``offset``
            is 0 and ``"gemma"`` otherwise (what transformers' modules with those offsets do).

    Shapes: input `(B, T, H)` or `(N, H)`; output the same shape.

    Raises:
        ValueError: when ``casting_mode`` is unknown.

    Source: RMSNorm, Zhang & Sennrich 2019, https://arxiv.org/abs/1910.07467, Eq. 4.
    """

    def __init__(
        self, hidden_size: int, eps: float = 1e-6, offset: float = 0.0, casting_mode: str | None = None
    ) -> None:
        super().__init__()
        casting_mode = casting_mode or ("llama" if offset == 0.0 else "gemma")
        _check_casting_mode(casting_mode)
        # Initialised so that the module starts as the identity scale, as transformers does for each variant.
        self.weight = nn.Parameter(torch.ones(hidden_size) if offset == 0.0 else torch.zeros(hidden_size))
        self.variance_epsilon = eps
        self.offset = offset
        self.casting_mode = casting_mode

    @property
    def eps(self) -> float:
        return self.variance_epsilon

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return fused_rms_norm(hidden_states, self.weight, self.variance_epsilon, self.offset, self.casting_mode)

    def extra_repr(self) -> str:
        shape = tuple(self.weight.shape)
        return f"{shape}, eps={self.variance_epsilon}, offset={self.offset}, casting_mode={self.casting_mode}"


def _module_eps(module: nn.Module, name: str) -> float:
    for attr in ("variance_epsilon", "eps", "epsilon"):
        value = getattr(module, attr, None)
        if isinstance(value, float | int):
            return float(value)
    raise ValueError(f"patch_rms_norm: {name} ({type(module).__name__}) has no variance_epsilon/eps attribute.")


@torch.no_grad()
def _check_same_function(old: nn.Module, new: FusedRMSNorm, name: str) -> None:
    """Run the original and the replacement (reference path) on a probe; a wrong offset shows up as a gross
    mismatch (e.g. Gemma's ``x_hat * (1 + w)`` patched with offset 0)."""
    weight = new.weight
    if weight.is_meta:
        return
    probe = torch.randn(2, weight.shape[0], generator=torch.Generator().manual_seed(0)).to(weight.device)
    expected = old(probe).float()
    got = rms_norm_reference(probe, weight, new.variance_epsilon, new.offset, new.casting_mode).float()
    if not torch.allclose(got, expected, rtol=2e-2, atol=2e-2):
        raise ValueError(
            f"patch_rms_norm: {name} ({type(old).__name__}) does not compute x_hat * ({new.offset} + weight) "
            f"(max abs diff {(got - expected).abs().max().item():.3g} on a probe input). Gemma-style norms "
            "(weight stored as w - 1) need patch_rms_norm(model, offset=1.0)."
        )


def patch_rms_norm(model: nn.Module, offset: float = 0.0, casting_mode: str | None = None) -> int:
    """Replace, in place, every submodule whose class name ends with ``RMSNorm`` by a `FusedRMSNorm`.

    The new module keeps the very same ``weight`` Parameter (same storage, device, dtype, ``requires_grad``, so
    optimizers and tied references stay valid) and the same epsilon. Each replacement is checked against the
    original on a small probe input before it is installed. Call it after loading the model and before wrapping
    it (``accelerator.prepare``, DDP, FSDP, PEFT); DeepSpeed ZeRO-3-partitioned weights are refused.

    Args:
        model (`torch.nn.Module`): e.g. a ``LlamaForCausalLM``, ``Qwen2ForCausalLM`` or ``GemmaForCausalLM``.
        offset (`float`, defaults to 0.0): 0.0 for Llama/Qwen2/Mistral-style norms, 1.0 for Gemma-style.
        casting_mode (`str`, *optional*): ``"llama"`` or ``"gemma"``; by default ``"llama"`` for offset 0 and
            ``"gemma"`` otherwise.

    Returns:
        `int`: how many modules were replaced (0 on a second call: `FusedRMSNorm` instances are skipped).

    Raises:
        ValueError: when a matching module has no 1-D ``weight`` (e.g. ``with_scale=False`` variants), no epsilon
            attribute, a partitioned (empty) weight, or does not compute ``x_hat * (offset + weight)``.
    """
    # Build and check every replacement first, so that a refused module leaves the model untouched.
    replaced: dict[int, FusedRMSNorm] = {}
    targets: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules(remove_duplicate=False):
        if not name or isinstance(module, FusedRMSNorm) or not type(module).__name__.endswith("RMSNorm"):
            continue
        targets.append((name, module))
        if id(module) in replaced:  # one module registered under two names: one replacement for both
            continue
        weight = getattr(module, "weight", None)
        if not isinstance(weight, nn.Parameter) or weight.dim() != 1 or weight.numel() == 0:
            raise ValueError(
                f"patch_rms_norm: {name} ({type(module).__name__}) has no non-empty 1-D weight Parameter "
                f"(got {None if weight is None else tuple(weight.shape)}); it cannot be replaced."
            )
        new = FusedRMSNorm(weight.shape[0], _module_eps(module, name), offset, casting_mode)
        new.weight = weight
        new.train(module.training)
        _check_same_function(module, new, name)
        replaced[id(module)] = new
    for name, module in targets:
        parent_name, _, child_name = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child_name, replaced[id(module)])
    return len(replaced)
