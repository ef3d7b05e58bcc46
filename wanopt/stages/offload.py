"""Stage 1, no offload: both experts stay resident and T5 is released once the prompts are encoded.

What changes: the official single-GPU recipe keeps one expert on the GPU and moves 28.6 GB (bf16) over PCIe at
step 0 and at the expert switch, and T5 (11.4 GB) to the GPU and back for the prompts. Here the experts are moved
once, when the stage is applied (load time, not per video), and T5 is freed after use. Exact: the math is the same.
What it should buy: the two uploads per video (about 2 × 28.6 GB at pageable-copy speed) and the T5 round trip;
nothing per normal step. The Wan2.2 acceleration guide claims 1.1×.
"""

from __future__ import annotations


def no_offload(pipe):
    pipe.offload = False
    pipe.release_t5_after_encode = True
    for model in pipe.experts.values():
        model.to(pipe.device)
    return pipe
