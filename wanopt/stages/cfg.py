"""Stage 2, batched CFG: the cond and uncond passes run as one forward of batch 2.

What changes: one DiT call with x repeated twice, t twice, and the two (zero-padded) contexts stacked, instead of
two sequential calls. Exact up to GEMM accumulation order (cuBLAS may tile M = 2L differently).
What it should buy: in a launch-bound regime, half the launches; in the compute-bound regime of a 32k-token video
DiT, almost nothing: the FLOPs are the same and every GEMM and attention kernel is already large. The Wan2.2
acceleration guide claims 1.8×; the trace says where that claim comes from and why it does not hold here.
"""

from __future__ import annotations


def batch_cfg(pipe):
    pipe.batch_cfg = True
    return pipe
