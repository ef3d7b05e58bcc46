"""Stage 5, attention kernel: pick the fastest attention kernel measured at the workload's shape.

What changes: every self- and cross-attention call runs one named kernel instead of the baseline's
FlashAttention-2 (what upstream runs when FlashAttention-3 is not installed): cuDNN, flash (FA2) or
memory-efficient SDPA, FlexAttention, or FlashAttention-4 where the `flash-attn-4` package is installed. The
capture command measures each one on [1, heads, L, 128] at the workload's L in the same run and passes the fastest
here (traces/logs/fa4_bench.txt: FA4 at 659-677 TFLOP/s against cuDNN's 563-581 on an H100 at the T2V shapes).
Exact up to the kernels' own accumulation order (all keep fp32 softmax statistics; bf16 in and out).
What it should buy: self-attention is 52 % (480p) to 72 % (720p) of a 14B forward's FLOPs; on an H100 cuDNN's
kernel has been measured at ~576 TFLOP/s against FA2's ~365 at L = 32,760, i.e. up to a third off attention time.
"""

from __future__ import annotations

from ..models.layers import KNOWN_BACKENDS

# Without measurements (the CPU, the tiny-model tests): SDPA's default dispatch, what upstream falls back to.
UNMEASURED_BACKEND = "flash"


def best_backend(ceilings: dict, cross: dict | None = None, cross_share: float = 0.0) -> str:
    """The fastest kernel among those measured (ceilings: backend -> TFLOP/s at the self-attention shape, or None
    where the kernel failed).

    With `cross` (the same at the cross-attention shape, L × 512 text tokens) only kernels that ran at both shapes
    compete, ranked by the time they would take on the model's mix: a `cross_share` of the attention FLOPs at the
    cross shape, the rest at the self shape. One kernel serves both, so a kernel that fails at either is out.
    """
    measured = {k: v for k, v in ceilings.items() if k in KNOWN_BACKENDS and v}
    if cross is not None:
        measured = {k: v for k, v in measured.items() if cross.get(k)}
    if not measured:
        raise ValueError(f"no attention kernel was measured successfully at every shape: self {ceilings}"
                         + (f", cross {cross}" if cross is not None else ""))
    if cross is None or not 0.0 < cross_share < 1.0:
        return max(measured, key=measured.get)
    return min(measured, key=lambda k: (1.0 - cross_share) / measured[k] + cross_share / cross[k])


def choose_attention(ctx):
    """The kernel with the least time on the workload's mix of self- and cross-attention, from the ceilings the
    run measured at both shapes; the user's forced kernel where one is given; SDPA's default without a GPU."""
    from .base import Choice

    forced = ctx.forced.get("attention_backend")
    if forced:
        return Choice({"backend": forced}, {"forced": True})
    ceil = ctx.ceilings or {}
    if not any(v for k, v in ceil.get("attention", {}).items() if k in KNOWN_BACKENDS):
        return Choice({"backend": UNMEASURED_BACKEND}, {"measured": False})
    backend = best_backend(ceil["attention"], ceil.get("attention_cross"), ceil.get("attention_cross_share", 0.0))
    rates = {shape: {k: v for k, v in ceil.get(key, {}).items() if k in KNOWN_BACKENDS}
             for shape, key in (("self", "attention"), ("cross", "attention_cross")) if key in ceil}
    return Choice({"backend": backend}, {"measured": True, "tflops": rates,
                                         "cross_share": ceil.get("attention_cross_share", 0.0)})


def attention_kernel(pipe, backend: str = "cudnn"):
    for model in pipe.experts.values():
        model.set_attention_backend(backend)
    pipe.attention_backend = backend
    return pipe
