"""Ceilings and kernel micro-benchmarks, measured on this GPU in the capture run that uses them.

- the bf16 GEMM ceiling (8192³ matmul on random data) and every attention kernel at the workload's attention
  shapes (self-attention, cross-attention over the text or CLIP tokens): the kernel floor and MFU divide by these;
- `python -m wanopt.profiling.microbench`: the stage-6 Triton kernels (custom ops) at the A14B-480p batched-CFG
  shape, eager and under torch.compile.
"""

from __future__ import annotations

import statistics

import torch

from ..measure import cuda_time_ms, median_ms, rel_l2
from ..models.layers import KNOWN_BACKENDS, attention
from ..stages import best_backend


def gemm_ceiling_tflops(n: int = 8192, repeats: int = 10) -> float:
    """bf16 n×n×n matmul on random data, median TFLOP/s."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    ms = statistics.median(cuda_time_ms(lambda: a @ b, repeats=repeats))
    return 2 * n**3 / (ms / 1e3) / 1e12


def attention_ceilings_tflops(heads: int, q_len: int, k_len: int, head_dim: int = 128, backends=KNOWN_BACKENDS,
                              repeats: int = 5) -> dict:
    """Non-causal bf16 attention [1, heads, L, head_dim] per available kernel, median TFLOP/s (None: unavailable,
    with the reason under '<kernel>_error')."""
    q = torch.randn(1, q_len, heads, head_dim, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, k_len, heads, head_dim, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    flop = 4.0 * heads * q_len * k_len * head_dim
    out = {}
    for backend in backends:
        try:
            def fn(backend=backend):
                return attention(q, k, v, backend)
            for _ in range(2):
                fn()
            # short kernels: time a batch of back-to-back calls, so the host's launch path is not inside the window
            once = statistics.median(cuda_time_ms(fn, repeats=3))
            batch = max(1, int(20.0 / max(once, 1e-3)))

            def many(fn=fn, batch=batch):
                for _ in range(batch):
                    fn()
            ms = statistics.median(cuda_time_ms(many, repeats=repeats)) / batch
            out[backend] = flop / (ms / 1e3) / 1e12
        except Exception as exc:  # a kernel that does not support this shape or GPU: record why
            out[backend] = None
            out[f"{backend}_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    return out


def measure_ceilings(label: str, heads: int, q_len: int, k_len: int, head_dim: int, cross_len: int | None = None,
                     cross_share: float | None = None) -> dict:
    """The GEMM ceiling and every attention kernel at the self-attention shape (q_len × k_len) and, where given,
    the cross-attention shape (q_len × cross_len); `cross_share` is the cross shape's part of a unit's attention
    FLOPs (default: its part of one layer's keys). Without CUDA (bookkeeping tests only) unit placeholders."""
    if not torch.cuda.is_available():
        return {"gemm_tflops": 1.0, "attention": {"flash": 1.0}, "attention_backend": "flash", "placeholder": True}
    attn = attention_ceilings_tflops(heads, q_len, k_len, head_dim)
    ceil = {"gemm_tflops": gemm_ceiling_tflops(), "attention": attn,
            "attention_shape": [1, heads, q_len, k_len, head_dim]}
    if cross_len:
        ceil["attention_cross"] = attention_ceilings_tflops(heads, q_len, cross_len, head_dim)
        ceil["attention_cross_shape"] = [1, heads, q_len, cross_len, head_dim]
        ceil["attention_cross_share"] = cross_share if cross_share is not None else cross_len / (k_len + cross_len)
    ceil["attention_backend"] = best_backend(attn, ceil.get("attention_cross"),
                                             ceil.get("attention_cross_share", 0.0))

    def rates(d):
        return {k: round(v) for k, v in d.items() if isinstance(v, float)}
    cross = f", cross ({cross_len} keys) {rates(ceil['attention_cross'])}" if cross_len else ""
    print(f"[{label}] ceilings: GEMM {ceil['gemm_tflops']:.0f} TFLOP/s, attention {rates(attn)}{cross} TFLOP/s; "
          f"fastest on the mix: {ceil['attention_backend']}", flush=True)
    return ceil


def stage6_kernels(tokens: int = 32760, dim: int = 5120, heads: int = 40) -> list[str]:
    """The stage-6 custom ops, eager and under torch.compile, at the A14B-480p batched-CFG shape. Each time is the
    median of 20 calls between two CUDA events, so it includes the host's launch path."""
    from ..stages import fusion

    if not torch.cuda.is_available():
        raise SystemExit("the micro-benchmarks time CUDA kernels: run them on a GPU machine")
    torch.manual_seed(0)
    bf16 = dict(device="cuda", dtype=torch.bfloat16)
    x = torch.randn(2, tokens, dim, **bf16)
    mul, add = 1 + 0.1 * torch.randn(2, 1, dim, **bf16), 0.1 * torch.randn(2, 1, dim, **bf16)
    k = torch.randn(2, tokens, 3 * dim, **bf16).chunk(3, -1)[1]  # a fused-QKV view, as stage 6 hands it over
    w = 1 + 0.1 * torch.randn(dim, **bf16)
    cos, sin = torch.randn(tokens, dim // heads // 2, **bf16), torch.randn(tokens, dim // heads // 2, **bf16)
    cases = [
        ("norm_modulate", fusion.triton_norm_modulate, (x, mul, add, 1e-6)),
        ("rmsnorm_rope", lambda *a: fusion.triton_qk_norm_rope(a[0], a[1], a[2], (a[3], a[4]), a[5]),
         (k, w, 1e-6, cos, sin, heads)),
    ]
    lines = []
    for name, fn, args in cases:
        eager = median_ms(fn, *args)
        torch._dynamo.reset()
        compiled_fn = torch.compile(fn, dynamic=False)
        compiled = median_ms(compiled_fn, *args)
        err = rel_l2(compiled_fn(*args), fn(*args))
        lines.append(f"{name:28s} eager {eager * 1e3:8.1f} us   compiled {compiled * 1e3:8.1f} us   "
                     f"x{compiled / eager:5.2f}  rel {err:.1e}")
        print(lines[-1])
    return lines


if __name__ == "__main__":
    stage6_kernels()
