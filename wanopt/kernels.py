"""Triton kernels shared by the optimization stages of both model families, launched as custom ops.

  - `torch.ops.wanopt.norm_modulate(x, mul, add, eps)`: LayerNorm without affine, then `* mul + add`
    (per-sample or shared modulation), one read and one write of each bf16 row, statistics in fp32;
  - `torch.ops.wanopt.rmsnorm_rope(x, weight, eps, cos, sin, heads)`: RMSNorm over the full dim with its
    weight, then RoPE on interleaved pairs per head (cos/sin None: RMSNorm only).
The eager references are wanopt.stages.dtype_hygiene.norm_modulate and qk_norm_rope; tests compare them.

On a machine without CUDA the kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1, which wanopt sets on
import, before Triton is loaded) so that CI tests them against the eager reference.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction
except ImportError:  # pragma: no cover - triton ships with CUDA torch; CI installs it for the interpreter
    triton = None

# On the CPU the kernels need the interpreter, chosen before Triton was first imported (wanopt/__init__ does it).
INTERPRETER = triton is not None and isinstance(tl.sum, InterpretedFunction)


if triton is not None:

    @triton.jit
    def _norm_modulate_kernel(x_ptr, mul_ptr, add_ptr, out_ptr, x_row_stride, rows_per_batch, mul_bstride,
                              add_bstride, D, eps, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)  # row · stride passes 2^31 at 720p with batched CFG
        b = row // rows_per_batch
        cols = tl.arange(0, BLOCK)
        m = cols < D
        x = tl.load(x_ptr + row * x_row_stride + cols, mask=m, other=0.0).to(tl.float32)
        mean = tl.sum(x, axis=0) / D
        xc = tl.where(m, x - mean, 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=0) / D + eps)
        mul = tl.load(mul_ptr + b * mul_bstride + cols, mask=m, other=0.0).to(tl.float32)
        add = tl.load(add_ptr + b * add_bstride + cols, mask=m, other=0.0).to(tl.float32)
        y = xc * rstd * mul + add
        tl.store(out_ptr + row * D + cols, y.to(out_ptr.dtype.element_ty), mask=m)

    @triton.jit
    def _rmsnorm_rope_kernel(x_ptr, w_ptr, cos_ptr, sin_ptr, out_ptr, x_row_stride, tokens, D, HALF_HD, eps,
                             HAS_ROPE: tl.constexpr, BLOCK_HALF: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)  # row · stride passes 2^31 at 720p with batched CFG
        i = tl.arange(0, BLOCK_HALF)  # pair index over the whole row (all heads)
        m = i < D // 2
        base = x_ptr + row * x_row_stride
        xe = tl.load(base + 2 * i, mask=m, other=0.0).to(tl.float32)
        xo = tl.load(base + 2 * i + 1, mask=m, other=0.0).to(tl.float32)
        rstd = 1.0 / tl.sqrt((tl.sum(xe * xe, axis=0) + tl.sum(xo * xo, axis=0)) / D + eps)
        ye = xe * rstd * tl.load(w_ptr + 2 * i, mask=m, other=0.0).to(tl.float32)
        yo = xo * rstd * tl.load(w_ptr + 2 * i + 1, mask=m, other=0.0).to(tl.float32)
        if HAS_ROPE:
            tok = row % tokens
            j = i % HALF_HD  # pair index within the head: every head turns by the same angles
            c = tl.load(cos_ptr + tok * HALF_HD + j, mask=m, other=1.0).to(tl.float32)
            s = tl.load(sin_ptr + tok * HALF_HD + j, mask=m, other=0.0).to(tl.float32)
            ye, yo = ye * c - yo * s, ye * s + yo * c
        out = out_ptr + row * D
        tl.store(out + 2 * i, ye.to(out_ptr.dtype.element_ty), mask=m)
        tl.store(out + 2 * i + 1, yo.to(out_ptr.dtype.element_ty), mask=m)


def use_triton(x: torch.Tensor) -> bool:
    if triton is None:
        return False
    if x.is_cuda:
        return True
    return INTERPRETER and not torch.compiler.is_compiling()


def _rows(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """x as evenly spaced rows with unit inner stride (a chunk view of a wider tensor is fine), and the row stride;
    anything else is copied to contiguous first."""
    b, l, d = x.shape
    if x.stride(2) != 1 or (b > 1 and x.stride(0) != l * x.stride(1)):
        x = x.contiguous()
    return x, x.stride(1)


def _warps(block: int) -> int:
    return 8 if block >= 4096 else 4


# The launches are custom ops, opaque to torch.compile. Traced by Dynamo instead, Inductor launched these kernels
# through its own launcher, compiled with twice the registers per thread, and they ran 1.7-1.8x slower at A14B's
# width (python -m wanopt.profiling.microbench; H100 output in traces/logs/bench_ops.txt). As ops, Triton's own
# launcher runs them under compile exactly as in eager.
@torch.library.custom_op("wanopt::norm_modulate", mutates_args=())
def norm_modulate_op(x: torch.Tensor, mul: torch.Tensor, add: torch.Tensor, eps: float) -> torch.Tensor:
    b, l, d = x.shape
    mul, add = mul.contiguous(), add.contiguous()
    x, row_stride = _rows(x)
    out = torch.empty(b, l, d, device=x.device, dtype=x.dtype)
    block = triton.next_power_of_2(d)
    bstride = lambda t: d if t.dim() == 3 and t.size(0) > 1 else 0  # noqa: E731
    _norm_modulate_kernel[(b * l,)](x, mul, add, out, row_stride, l, bstride(mul), bstride(add), d, eps,
                                    BLOCK=block, num_warps=_warps(block))
    return out


@norm_modulate_op.register_fake
def _(x, mul, add, eps):
    return x.new_empty(x.shape)


@torch.library.custom_op("wanopt::rmsnorm_rope", mutates_args=())
def rmsnorm_rope_op(x: torch.Tensor, weight: torch.Tensor, eps: float, cos: torch.Tensor | None,
                     sin: torch.Tensor | None, heads: int) -> torch.Tensor:
    b, l, d = x.shape
    x, row_stride = _rows(x)
    out = torch.empty(b, l, d, device=x.device, dtype=x.dtype)
    has_rope = cos is not None
    cos, sin = (cos.contiguous(), sin.contiguous()) if has_rope else (weight, weight)  # unused without RoPE
    block = triton.next_power_of_2(d // 2)
    _rmsnorm_rope_kernel[(b * l,)](x, weight, cos, sin, out, row_stride, l, d, d // heads // 2, eps,
                                   HAS_ROPE=has_rope, BLOCK_HALF=block, num_warps=_warps(block))
    return out


@rmsnorm_rope_op.register_fake
def _(x, weight, eps, cos, sin, heads):
    return x.new_empty(x.shape)


