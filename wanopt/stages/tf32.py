"""Stage 3, TF32 for the float32 islands.

What changes: inside every DiT call (and only there: the switch is scoped, set on entry and restored on exit) fp32
matmuls may use TF32 tensor cores. The fp32 GEMMs of the reference are the time embedding and projection
(per token in Wan 2.2: L×5120×30720 per forward) and the head (L×5120×64); everything else is already bf16.
Not exact: TF32 rounds the GEMM inputs to 10 mantissa bits (relative error about 5e-4 in those GEMMs).
What it should buy: the per-token time MLP runs about 7× faster (CUDA-core fp32 at ~50 TFLOP/s against TF32 on
tensor cores); in Wan 2.1 (per-sample time) there is no large fp32 GEMM, so nothing. The guide claims 1.3×.
"""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def tf32_matmuls():
    """Allow TF32 in fp32 matmuls (and cuDNN convolutions) for the duration of the block, then restore."""
    old = torch.backends.cuda.matmul.fp32_precision
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.fp32_precision = old


def enable_tf32(pipe):
    pipe.dit_contexts.append(tf32_matmuls)
    return pipe
