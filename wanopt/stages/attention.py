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


def best_backend(ceilings: dict) -> str:
    """The fastest kernel among those measured (ceilings: backend -> TFLOP/s or None when unavailable)."""
    measured = {k: v for k, v in ceilings.items() if k in KNOWN_BACKENDS and v}
    if not measured:
        raise ValueError(f"no attention kernel was measured successfully: {ceilings}")
    return max(measured, key=measured.get)


def attention_kernel(pipe, backend: str = "cudnn"):
    for model in pipe.experts.values():
        model.set_attention_backend(backend)
    pipe.attention_backend = backend
    return pipe
