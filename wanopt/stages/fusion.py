"""Stage 6, fusion: one QKV GEMM, and Triton kernels for norm + modulate and RMSNorm + RoPE.

What changes:
  - self-attention's q, k, v projections become one d→3d GEMM (and cross-attention's k, v one d→2d GEMM on the
    text); the separate weights are freed, so memory does not grow;
  - LayerNorm + `* (1 + scale) + shift` (twice per block) and the cross-attention LN with affine become one
    Triton kernel each: one read of the bf16 row, one write, statistics in fp32;
  - RMSNorm over the full dim + split heads + RoPE on interleaved pairs becomes one Triton kernel (q and k), and
    plain RMSNorm for the cross-attention q and k. The kernel walks the row as pairs; a second form that walked
    it as heads × pairs with contiguous loads measured 1.2-5.4x slower on the H100 at every T2V shape (captures
    20261123T165834Z and 20261123T171751Z) and was dropped;
  - the FFN's GELU moves into the up-projection GEMM's epilogue (cuBLASLt), where the capture measures that it
    pays at the workload's shape.
Exact up to rounding: the kernels keep intermediates in fp32 and round once, where the eager code rounds to
bf16 after each op (differences at the bf16 ulp level, measured against the baseline).
What it should buy: the eager lean block still makes ~8 passes over L×d for each RoPE and ~3 for each modulate;
a pass over a 480p A14B activation (32,760 × 5120 bf16 = 335 MB) costs ~0.2 ms at 3 TB/s, so a few ms per block.
The GELU pass over the FFN activation (ffn_dim wide, 5.8× d at 1.3B) costs ~0.85 ms per 1.3B block; whether the
epilogue saves it depends on the GEMM cuBLASLt picks with it: 2.78 ms against 3.26 for GEMM + GELU at
1.3B-480p, but 34.2 against 32.4 at A14B-720p (traces/*/capture.json, "ffn_gelu").

On a machine without CUDA the kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1, which wanopt sets
on import, before Triton is loaded) so that CI tests them against the eager reference; under torch.compile on
the CPU, or when Triton is missing, the eager functions run instead.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from ..models.layers import AutocastLinear
from .dtype_hygiene import LeanCrossAttention, LeanSelfAttention, norm_modulate, qk_norm_rope

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


def _use_triton(x: torch.Tensor) -> bool:
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


def triton_norm_modulate(x, mul, add, eps):
    """Triton version of dtype_hygiene.norm_modulate. x [B, L, D]; mul/add [B, 1, D] (per sample) or [D]."""
    if not _use_triton(x) or (mul.dim() == 3 and mul.size(1) != 1):
        return norm_modulate(x, mul, add, eps)
    return torch.ops.wanopt.norm_modulate(x, mul, add, eps)


def triton_qk_norm_rope(x, weight, eps, rope, heads):
    """Triton version of dtype_hygiene.qk_norm_rope. x [B, L, D] -> [B, L, heads, D/heads]."""
    if not _use_triton(x):
        return qk_norm_rope(x, weight, eps, rope, heads)
    cos, sin = rope if rope is not None else (None, None)
    return torch.ops.wanopt.rmsnorm_rope(x, weight, eps, cos, sin, heads).unflatten(-1, (heads, -1))


# The launches are custom ops, opaque to torch.compile. Traced by Dynamo instead, Inductor launched these kernels
# through its own launcher, compiled with twice the registers per thread, and they ran 1.7-1.8x slower at A14B's
# width (python -m wanopt.profiling.kernel_bench; H100 output in traces/logs/bench_ops.txt). As ops, Triton's own
# launcher runs them under compile exactly as in eager.
@torch.library.custom_op("wanopt::norm_modulate", mutates_args=())
def _norm_modulate_op(x: torch.Tensor, mul: torch.Tensor, add: torch.Tensor, eps: float) -> torch.Tensor:
    b, l, d = x.shape
    mul, add = mul.contiguous(), add.contiguous()
    x, row_stride = _rows(x)
    out = torch.empty(b, l, d, device=x.device, dtype=x.dtype)
    block = triton.next_power_of_2(d)
    bstride = lambda t: d if t.dim() == 3 and t.size(0) > 1 else 0  # noqa: E731
    _norm_modulate_kernel[(b * l,)](x, mul, add, out, row_stride, l, bstride(mul), bstride(add), d, eps,
                                    BLOCK=block, num_warps=_warps(block))
    return out


@_norm_modulate_op.register_fake
def _(x, mul, add, eps):
    return x.new_empty(x.shape)


@torch.library.custom_op("wanopt::rmsnorm_rope", mutates_args=())
def _rmsnorm_rope_op(x: torch.Tensor, weight: torch.Tensor, eps: float, cos: torch.Tensor | None,
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


@_rmsnorm_rope_op.register_fake
def _(x, weight, eps, cos, sin, heads):
    return x.new_empty(x.shape)


TRITON_KERNELS = SimpleNamespace(norm_modulate=triton_norm_modulate, qk_norm_rope=triton_qk_norm_rope,
                                 name="triton")


# -- fused projections ------------------------------------------------------------------------------------------


def _fused_linear(*linears: AutocastLinear) -> AutocastLinear:
    first = linears[0]
    fused = AutocastLinear(first.in_features, sum(m.out_features for m in linears), compute_dtype=first.compute_dtype)
    fused.to(device=first.weight.device, dtype=first.weight.dtype)
    with torch.no_grad():
        fused.weight.copy_(torch.cat([m.weight for m in linears]))
        fused.bias.copy_(torch.cat([m.bias for m in linears]))
    return fused.requires_grad_(False)


class FusedSelfAttention(LeanSelfAttention):
    def project_qkv(self, x):
        return self.qkv(x).chunk(3, dim=-1)


class FusedCrossAttention(LeanCrossAttention):
    def project_kv(self, context):
        return self.kv(context).chunk(2, dim=-1)


class GeluEpilogueFFN(torch.nn.Sequential):
    """The block's FFN (Linear, GELU(tanh), Linear; same modules and checkpoint keys) with the GELU applied in the
    up-projection GEMM's epilogue: cuBLASLt's GELU_BIAS epilogue through torch._addmm_activation, which is the
    tanh approximation upstream uses, computed on the fp32 accumulator before the one rounding to bf16. The
    [rows, ffn_dim] activation is written once, already activated, instead of written, read back by a GELU kernel
    and written again (1.2 GB each way at 1.3B-480p with batched CFG). cuBLASLt may pick a slower GEMM with the
    epilogue, so the capture times both ways at the workload's shape first (gelu_epilogue_timings).
    Off the GPU it runs the modules as they are: ATen's CPU _addmm_activation uses the exact (erf) GELU.
    """

    def forward(self, x):
        up, _, down = self
        if not x.is_cuda:
            return super().forward(x)
        dtype = up.compute_dtype or x.dtype
        h = torch._addmm_activation(up.bias.to(dtype), x.to(dtype).flatten(0, -2), up.weight.to(dtype).t(),
                                    use_gelu=True)
        return down(h.unflatten(0, x.shape[:-1]))


def gelu_epilogue_timings(rows: int, dim: int, ffn_dim: int, repeats: int = 10, device: str = "cuda") -> dict:
    """The FFN up-projection + GELU at the workload's shape on this GPU, both ways, median ms: the capture passes
    `gelu_epilogue` to this stage from it (cuBLASLt may pick another GEMM kernel when an epilogue is attached).
    `device="cpu"` is for the unit test of this bookkeeping only (host clock, and ATen's CPU epilogue is erf GELU)."""
    from ..profiling.timing import median_ms, rel_l2

    bf16 = dict(device=device, dtype=torch.bfloat16)
    x, bias = torch.randn(rows, dim, **bf16), torch.randn(ffn_dim, **bf16)
    w = torch.randn(ffn_dim, dim, **bf16) / dim**0.5
    ways = {"separate": lambda: torch.nn.functional.gelu(torch.nn.functional.linear(x, w, bias), approximate="tanh"),
            "epilogue": lambda: torch._addmm_activation(bias, x, w.t(), use_gelu=True)}
    ms = {f"{name}_ms": median_ms(fn, n=repeats) for name, fn in ways.items()}
    return {**ms, "shape": [rows, dim, ffn_dim], "relative_l2": rel_l2(ways["epilogue"](), ways["separate"]()),
            "gelu_epilogue": ms["epilogue_ms"] < ms["separate_ms"]}


def fuse_model(model, kernels=TRITON_KERNELS, gelu_epilogue: bool = True):
    """On a lean model (stage 4): fuse the projections and switch the block kernels, in place."""
    for block in model.blocks:
        if gelu_epilogue:
            block.ffn.__class__ = GeluEpilogueFFN
        sa, ca = block.self_attn, block.cross_attn
        sa.qkv = _fused_linear(sa.q, sa.k, sa.v)
        del sa.q, sa.k, sa.v  # the separate weights go: memory stays flat
        ca.kv = _fused_linear(ca.k, ca.v)
        del ca.k, ca.v
        sa.__class__, ca.__class__ = FusedSelfAttention, FusedCrossAttention
        for m in (block, sa, ca):
            m.kernels = kernels
    return model


def fuse_kernels(pipe, gelu_epilogue: bool = True):
    for model in pipe.experts.values():
        fuse_model(model, gelu_epilogue=gelu_epilogue)
    pipe.gelu_epilogue = gelu_epilogue
    return pipe
