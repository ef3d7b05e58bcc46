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

from ..models.layers import KNOWN_BACKENDS, SMALL_SHAPE_BACKENDS

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


# -- Matrix-Game-2: one kernel per attention shape ----------------------------------------------------------------


def mg2_attention_timings(shapes: dict, backends=KNOWN_BACKENDS + SMALL_SHAPE_BACKENDS, repeats: int = 5) -> dict:
    """Median ms of each kernel at Matrix-Game-2's attention shapes on this GPU (None where a kernel fails there,
    with the reason): self, the block's tokens [1, F·S, heads, d] over the window [1, W·S, heads, d]; cross, every token [1, F·S, heads, d] over the CLIP tokens; mouse, per location
    [S, F, heads, d] over [S, W, heads, d]; keyboard, every token [1, F·S, heads, d] over the cached frames
    [1, W, heads, d]. GPU time per call, from a CUDA graph of 20 calls (measure.graph_time_ms): the final pipeline
    replays these kernels from a graph, and timed eagerly these short kernels would measure their launch."""
    import torch

    from ..measure import graph_time_ms
    from ..models.layers import attention

    s, f, w, h, d = (shapes[k] for k in ("frame_tokens", "frames", "window", "action_heads", "action_head_dim"))
    heads, head_dim, clip = shapes["heads"], shapes["head_dim"], shapes["text_len"]
    bf16 = dict(device="cuda", dtype=torch.bfloat16)
    cases = {"self": ((1, f * s, heads, head_dim), (1, w * s, heads, head_dim)),
             "cross": ((1, f * s, heads, head_dim), (1, clip, heads, head_dim)),
             "mouse": ((s, f, h, d), (s, w, h, d)), "keyboard": ((1, f * s, h, d), (1, w, h, d))}
    out = {}
    for name, (qs, ks) in cases.items():
        q, k, v = torch.randn(qs, **bf16), torch.randn(ks, **bf16), torch.randn(ks, **bf16)
        out[name] = {}
        for backend in backends:
            if name == "self" and backend in SMALL_SHAPE_BACKENDS:
                continue  # it would store 12 × 2640 × 5280 scores: not a candidate at the window's shape
            try:
                out[name][backend] = graph_time_ms(lambda: attention(q, k, v, backend), repeats=repeats)
            except Exception as exc:  # a kernel that does not take this shape: recorded, out of the running
                out[name][backend] = None
                out[name][f"{backend}_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    return out


def _fastest(times: dict, *cases: str) -> str:
    """The kernel with the least total time over the cases among those that ran at all of them."""
    total = {k: sum(times[c][k] for c in cases) for k in times[cases[0]]
             if not k.endswith("_error") and all(times[c].get(k) for c in cases)}
    if not total:
        raise ValueError(f"no attention kernel ran at every shape of {cases}: {times}")
    return min(total, key=total.get)


def choose_mg2_attention(ctx):
    """A kernel per Matrix-Game-2 attention shape, by timing each kernel at the shape: self-attention over the
    window, cross-attention over the CLIP tokens, the action module's attention (mouse and keyboard share one
    kernel: the least time on both), the written-out "inductor" attention a candidate where the keys are few; the forced kernel everywhere where one is given; SDPA's default without a GPU. The times are GPU
    times: in the final, graph-replayed pipeline no launch cost is left."""
    from .base import Choice

    forced = ctx.forced.get("attention_backend")
    if forced:
        return Choice({"self_backend": forced, "cross_backend": forced, "action_backend": forced}, {"forced": True})
    ceil = ctx.ceilings or {}
    measured = {k: v for k, v in ceil.get("attention", {}).items() if k in KNOWN_BACKENDS and v}
    if ctx.device != "cuda" or not measured:
        return Choice({"self_backend": UNMEASURED_BACKEND, "cross_backend": UNMEASURED_BACKEND,
                       "action_backend": UNMEASURED_BACKEND}, {"measured": False})
    times = mg2_attention_timings(ctx.shapes)
    action = ("mouse", "keyboard") if ctx.shapes.get("mouse", True) else ("keyboard",)
    options = {"self_backend": _fastest(times, "self"), "cross_backend": _fastest(times, "cross"),
               "action_backend": _fastest(times, *action)}
    return Choice(options, {"measured": True, "gpu_ms": times})


def mg2_attention_kernels(pipe, self_backend: str = "cudnn", cross_backend: str = "cudnn",
                          action_backend: str = "flash"):
    """Set the kernel of each Matrix-Game-2 attention: self (over the KV window), cross (CLIP), action (mouse and
    keyboard)."""
    for block in pipe.model.blocks:
        block.self_attn.attn_backend = self_backend
        block.cross_attn.attn_backend = cross_backend
        if block.action_model is not None:
            block.action_model.attn_backend = action_backend
    pipe.attention_backend = {"self": self_backend, "cross": cross_backend, "action": action_backend}
    return pipe
