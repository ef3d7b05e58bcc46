"""Stage 7, torch.compile: regional (each transformer block) or the whole model.

What changes: Inductor traces the block (or the whole forward) and generates fused Triton kernels for the
elementwise work between the GEMMs and attention (modulate, gate, residual, GELU, casts), with the user Triton
kernels of stage 6 kept as they are.
  - regional: `block.compile()` on each block. All blocks share one forward, so Dynamo compiles it once and the
    40 blocks (and both experts) reuse it; compile time is that of one block;
  - whole model: `torch.compile(model)` unrolls the 30–40 blocks into one graph: more room for fusion across
    block boundaries, a compile time that grows with depth.
Exact up to kernel rounding (Inductor computes fused elementwise chains in fp32 and rounds once).
What it should buy: the remaining passes between kernels; little launch overhead to remove at these sizes.
Compile time is reported separately from step time (the capture command warms up before timing).
"""

from __future__ import annotations

import torch


def compile_blocks(pipe, mode: str | None = None):
    for model in pipe.experts.values():
        for block in model.blocks:
            block.compile(dynamic=False, mode=mode)
    pipe.compiled = "regional"
    return pipe


def compile_model(pipe, mode: str | None = None):
    for name, model in list(pipe.experts.items()):
        model.compile(dynamic=False, mode=mode)
    pipe.compiled = "whole"
    return pipe


def uncompile(pipe):
    """Undo either compile (used by the capture to compare both in one run)."""
    for model in pipe.experts.values():
        for m in (model, *model.blocks):
            m._compiled_call_impl = None
    torch._dynamo.reset()
    pipe.compiled = None
    return pipe


def compile_causal_parts(pipe, mode: str | None = None):
    """Matrix-Game-2 (on the lean model, stage 03): torch.compile of each piece of a block between its cached
    attentions (wanopt.stages.mg2_lean: self_qkv, self_out, cross, ffn, and the action module's pieces). The cache
    writes and the attention over the window stay eager: they depend on the block's position, which would make
    Dynamo specialize and recompile per block. Each piece takes its module as an argument, so all 30 blocks share
    one compiled graph per piece and shape (the denoising evals and the folded first eval of stage 08: two)."""
    from types import SimpleNamespace

    from .mg2_lean import EAGER_PARTS, set_parts

    compiled = {name: torch.compile(fn, dynamic=False, mode=mode)
                for name, fn in vars(EAGER_PARTS).items() if callable(fn)}
    set_parts(pipe.model, parts=SimpleNamespace(**compiled, name="compiled"))
    pipe.compiled = "regional"
    return pipe
