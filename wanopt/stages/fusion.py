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
epilogue saves it depends on the GEMM cuBLASLt picks with it: 2.76 ms against 3.03 for GEMM + GELU at
1.3B-480p on the H200, but 34.2 against 32.4 at A14B-720p on the H100 (traces/*/capture.json: `choices` in the
H200 run, `ffn_gelu` in the H100 runs); so `choose_fusion` measures it at the workload's shape.

On a machine without CUDA the kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1, which wanopt sets
on import, before Triton is loaded) so that CI tests them against the eager reference; under torch.compile on
the CPU, or when Triton is missing, the eager functions run instead.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from ..models.layers import AutocastLinear
from ..kernels import use_triton  # importing it registers the wanopt:: custom ops
from ..measure import median_ms, rel_l2
from .mg2_lean import LeanActionModule, LeanCausalSelfAttention, set_parts
from .dtype_hygiene import LeanCrossAttention, LeanSelfAttention, norm_modulate, qk_norm_rope


def triton_norm_modulate(x, mul, add, eps):
    """Triton version of dtype_hygiene.norm_modulate. x [B, L, D]; mul/add [B, 1, D] (per sample) or [D]."""
    if not use_triton(x) or (mul.dim() == 3 and mul.size(1) != 1):
        return norm_modulate(x, mul, add, eps)
    return torch.ops.wanopt.norm_modulate(x, mul, add, eps)


def triton_qk_norm_rope(x, weight, eps, rope, heads):
    """Triton version of dtype_hygiene.qk_norm_rope. x [B, L, D] -> [B, L, heads, D/heads]."""
    if not use_triton(x):
        return qk_norm_rope(x, weight, eps, rope, heads)
    cos, sin = rope if rope is not None else (None, None)
    return torch.ops.wanopt.rmsnorm_rope(x, weight, eps, cos, sin, heads).unflatten(-1, (heads, -1))


TRITON_KERNELS = SimpleNamespace(norm_modulate=triton_norm_modulate, qk_norm_rope=triton_qk_norm_rope,
                                 name="triton")


# -- fused projections ------------------------------------------------------------------------------------------


def _fused_linear(*linears: torch.nn.Linear) -> torch.nn.Linear:
    """One Linear of the same kind (AutocastLinear keeps its compute dtype) computing the given ones side by side:
    their outputs concatenated."""
    first, out = linears[0], sum(m.out_features for m in linears)
    bias = first.bias is not None
    if isinstance(first, AutocastLinear):
        fused = AutocastLinear(first.in_features, out, bias, compute_dtype=first.compute_dtype)
    else:
        fused = torch.nn.Linear(first.in_features, out, bias)
    fused.to(device=first.weight.device, dtype=first.weight.dtype)
    with torch.no_grad():
        fused.weight.copy_(torch.cat([m.weight for m in linears]))
        if bias:
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
        dtype = getattr(up, "compute_dtype", None) or x.dtype
        h = torch._addmm_activation(up.bias.to(dtype), x.to(dtype).flatten(0, -2), up.weight.to(dtype).t(),
                                    use_gelu=True)
        return down(h.unflatten(0, x.shape[:-1]))


def gelu_epilogue_timings(rows: int, dim: int, ffn_dim: int, repeats: int = 10, device: str = "cuda") -> dict:
    """The FFN up-projection + GELU at the workload's shape on this GPU, both ways, median ms: the capture passes
    `gelu_epilogue` to this stage from it (cuBLASLt may pick another GEMM kernel when an epilogue is attached).
    `device="cpu"` is for the unit test of this bookkeeping only (host clock, and ATen's CPU epilogue is erf GELU)."""
    bf16 = dict(device=device, dtype=torch.bfloat16)
    x, bias = torch.randn(rows, dim, **bf16), torch.randn(ffn_dim, **bf16)
    w = torch.randn(ffn_dim, dim, **bf16) / dim**0.5
    ways = {"separate": lambda: torch.nn.functional.gelu(torch.nn.functional.linear(x, w, bias), approximate="tanh"),
            "epilogue": lambda: torch._addmm_activation(bias, x, w.t(), use_gelu=True)}
    ms = {f"{name}_ms": median_ms(fn, n=repeats) for name, fn in ways.items()}
    return {**ms, "shape": [rows, dim, ffn_dim], "relative_l2": rel_l2(ways["epilogue"](), ways["separate"]()),
            "gelu_epilogue": ms["epilogue_ms"] < ms["separate_ms"]}


def choose_fusion(ctx):
    """GELU in the epilogue where it measures faster at the workload's FFN shape (rows = CFG batch × tokens) on
    this GPU; without CUDA the FFN runs as it is (the epilogue is cuBLASLt's)."""
    from .base import Choice

    if ctx.device != "cuda":
        return Choice({"gelu_epilogue": False}, {"measured": False})
    sh = ctx.shapes
    timings = gelu_epilogue_timings(sh.get("cfg_batch", 1) * sh["tokens"], sh["dim"], sh["ffn_dim"])
    return Choice({"gelu_epilogue": timings["gelu_epilogue"]}, {"measured": True, "ffn_gelu": timings})


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


# -- Matrix-Game-2 ----------------------------------------------------------------------------------------------


class FusedCausalSelfAttention(LeanCausalSelfAttention):
    def project_qkv(self, x):
        return self.qkv(x).chunk(3, dim=-1)


class FusedActionModule(LeanActionModule):
    def mouse_hidden(self, x, windows):
        """[hidden ‖ window] @ W.T as hidden @ W_h.T + (window @ W_w.T + b): the window part is one row per frame,
        broadcast over its tokens, so no [F·S, dim + 24] concatenation is built and the GEMM's K is dim."""
        f = windows.size(0)
        per_frame_bias = torch.nn.functional.linear(windows, self.mouse_in_window, self.mouse_mlp[0].bias)
        return torch.nn.functional.linear(x.view(f, -1, x.size(-1)), self.mouse_in_hidden) + per_frame_bias[:, None]


def fuse_causal_kernels(pipe, gelu_epilogue: bool = True):
    """Matrix-Game-2 on the lean model (stage 03): the Triton norm+modulate (per frame) and RMSNorm+RoPE kernels,
    one QKV GEMM per self-attention, the mouse MLP's input GEMM without its concatenation, and where it measures
    faster the FFN's GELU in the up-projection's epilogue."""
    model = pipe.model
    for block in model.blocks:
        sa = block.self_attn
        sa.qkv = _fused_linear(sa.q, sa.k, sa.v)
        del sa.q, sa.k, sa.v
        sa.__class__ = FusedCausalSelfAttention
        if gelu_epilogue:
            block.ffn.__class__ = GeluEpilogueFFN
        action = block.action_model
        if action is not None and action.config.enable_mouse:
            first = action.mouse_mlp[0]
            dim = first.in_features - action.window * action.config.mouse_dim_in
            action.mouse_in_hidden = first.weight[:, :dim].detach().contiguous()
            action.mouse_in_window = first.weight[:, dim:].detach().contiguous()
            action.__class__ = FusedActionModule
        elif action is not None:
            action.__class__ = FusedActionModule
    set_parts(model, kernels=TRITON_KERNELS)
    pipe.gelu_epilogue = gelu_epilogue
    return pipe
