"""The stage-6 Triton kernels at the A14B-480p batched-CFG shape, eager and under torch.compile, launched as
custom ops (what wanopt does) and traced by Dynamo (what it did before): `python -m wanopt.profiling.kernel_bench`
on a GPU. Prints one line per variant; traces/logs/bench_ops.txt holds the H100 output.

Each time is the median of 20 calls between two CUDA events, so it includes the host's launch path; under compile
that adds ~50-120 µs of guards and wrapper before the kernel starts."""

from __future__ import annotations

import torch

from ..stages import fusion
from .timing import median_ms, rel_l2


def traced_norm_modulate(x, mul, add, eps):
    """The launch as it was before the custom op (per-sample modulation, contiguous x)."""
    b, l, d = x.shape
    out = torch.empty_like(x)
    block = fusion.triton.next_power_of_2(d)
    fusion._norm_modulate_kernel[(b * l,)](x, mul, add, out, x.stride(1), l, d, d, d, eps, BLOCK=block,
                                           num_warps=fusion._warps(block))
    return out


def traced_rmsnorm_rope(x, weight, eps, cos, sin, heads):
    b, l, d = x.shape
    out = torch.empty(b, l, d, device=x.device, dtype=x.dtype)
    block = fusion.triton.next_power_of_2(d // 2)
    fusion._rmsnorm_rope_kernel[(b * l,)](x, weight, cos, sin, out, x.stride(1), l, d, d // heads // 2, eps,
                                          HAS_ROPE=True, BLOCK_HALF=block, num_warps=fusion._warps(block))
    return out


def main(tokens: int = 32760, dim: int = 5120, heads: int = 40) -> list[str]:
    if not torch.cuda.is_available():
        raise SystemExit("kernel_bench times CUDA kernels: run it on a GPU machine")
    torch.manual_seed(0)
    bf16 = dict(device="cuda", dtype=torch.bfloat16)
    x = torch.randn(2, tokens, dim, **bf16)
    mul, add = 1 + 0.1 * torch.randn(2, 1, dim, **bf16), 0.1 * torch.randn(2, 1, dim, **bf16)
    k = torch.randn(2, tokens, 3 * dim, **bf16).chunk(3, -1)[1]  # a fused-QKV view, as stage 6 hands it over
    w = 1 + 0.1 * torch.randn(dim, **bf16)
    cos, sin = torch.randn(tokens, dim // heads // 2, **bf16), torch.randn(tokens, dim // heads // 2, **bf16)
    cases = [
        ("norm_modulate", fusion.triton_norm_modulate, (x, mul, add, 1e-6)),
        ("norm_modulate traced (old)", traced_norm_modulate, (x, mul, add, 1e-6)),
        ("rmsnorm_rope", lambda *a: fusion.triton_qk_norm_rope(a[0], a[1], a[2], (a[3], a[4]), a[5]),
         (k, w, 1e-6, cos, sin, heads)),
        ("rmsnorm_rope traced (old)", traced_rmsnorm_rope, (k, w, 1e-6, cos, sin, heads)),
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
    main()
