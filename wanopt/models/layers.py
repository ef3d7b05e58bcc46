"""Building blocks shared by WanModel and CausalWanModel, in the official numerics.

Autocast, written out. Upstream runs the DiT under `torch.amp.autocast('cuda', dtype=bfloat16)` with nested
`autocast(float32)` islands. CPU autocast has no float32 mode and a different op list, so the same code would
compute something else in CI. Instead, `AutocastLinear` does what CUDA autocast does to a linear: cast the input
and the weight to the region's dtype, every call (autocast caches no weight casts when requires_grad is False).
The result is the same kernels on the GPU (the casts show up in traces as `aten::to` copies, as they do
under autocast) and the same numbers on any device.

The precision therefore lives in the modules, not in the parameters: `model.float()` alone leaves the linears in
bf16. The builders' `compute_dtype=` sets it (torch.float32 for an fp32 comparison), the top model's repr shows
it, and a model that runs after such a cast with bf16 compute warns once (ComputeDtypeMixin).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

# ---------------------------------------------------------------------------------------------------------------
# Linear layers under emulated autocast


class AutocastLinear(nn.Linear):
    """nn.Linear that computes in `compute_dtype`, as a linear does inside an autocast region of that dtype.

    compute_dtype=None computes in the input's dtype (no autocast), which is how the fp32 parity tests run.
    """

    def __init__(self, in_features, out_features, bias=True, compute_dtype: torch.dtype | None = torch.bfloat16):
        super().__init__(in_features, out_features, bias=bias)
        self.compute_dtype = compute_dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self.compute_dtype or x.dtype
        bias = None if self.bias is None else self.bias.to(dtype)
        return F.linear(x.to(dtype), self.weight.to(dtype), bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", compute_dtype={self.compute_dtype}"


class AutocastConv3d(nn.Conv3d):
    """nn.Conv3d computing in `compute_dtype` (conv is on CUDA autocast's lower-precision list)."""

    def __init__(self, *args, compute_dtype: torch.dtype | None = torch.bfloat16, **kwargs):
        super().__init__(*args, **kwargs)
        self.compute_dtype = compute_dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self.compute_dtype or x.dtype
        bias = None if self.bias is None else self.bias.to(dtype)
        return self._conv_forward(x.to(dtype), self.weight.to(dtype), bias)


def set_compute_dtype(module: nn.Module, dtype: torch.dtype | None, fp32_islands: bool = False) -> nn.Module:
    """Set the emulated autocast dtype of every module under `module` that has a `compute_dtype` (autocast
    linears and convs; attention modules, whose kernel upstream always feeds bf16).

    Linears marked `fp32_island` (time embedding, time projection, head) keep float32 unless fp32_islands=True,
    which moves them too (used with dtype=None or float32 to run a whole model in one precision).
    """
    for m in module.modules():
        if hasattr(m, "compute_dtype") and (fp32_islands or not getattr(m, "fp32_island", False)):
            m.compute_dtype = dtype
    return module


def fp32_island(linear: AutocastLinear) -> AutocastLinear:
    """Mark a linear as living in an `autocast(float32)` island: it computes in float32 whatever the weights."""
    linear.compute_dtype = torch.float32
    linear.fp32_island = True
    return linear


HALF_DTYPES = (torch.bfloat16, torch.float16)


def check_compute_dtype(dtype) -> torch.dtype | None:
    """`dtype` itself if it is a floating torch dtype or None, else a TypeError that says what is accepted."""
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"compute_dtype must be a floating torch dtype (torch.bfloat16, the official autocast; "
                        f"torch.float32 for an fp32 comparison) or None (each op in its input's dtype); got {dtype!r}")
    return dtype


def apply_compute_dtype(module: nn.Module, dtype: torch.dtype | None) -> nn.Module:
    """What the builders' `compute_dtype=` does. bfloat16 (or float16): the official autocast, fp32 islands kept.
    float32 or None: the whole model in one precision (islands too), which is what a comparison against an fp32
    implementation needs."""
    half = check_compute_dtype(dtype) in HALF_DTYPES
    return set_compute_dtype(module, dtype, fp32_islands=not half)


class PrecisionWarning(UserWarning):
    """Parameters cast to float32 (or float64) while the emulated autocast still computes in half precision."""


def compute_dtype_of(module: nn.Module):
    """The dtype the emulated autocast computes in, outside the fp32 islands: one dtype, None (each op in its
    input's dtype), or a tuple of the dtypes found when a model mixes them."""
    found = {m.compute_dtype for m in module.modules()
             if hasattr(m, "compute_dtype") and not getattr(m, "fp32_island", False)}
    if len(found) == 1:
        return found.pop()
    return tuple(sorted(found, key=str))


class ComputeDtypeMixin:
    """For the top models: the compute dtype in the repr, and a one-time PrecisionWarning when the model runs after
    `.float()` / `.to(torch.float32)` / `.double()` left its compute dtype at bf16.

    Why: the models emulate autocast (see the module docstring), so casting the parameters does not change the
    precision the linears (WanModel) or the attention kernel (both models) compute in: an "fp32" model would sit
    ~3e-3 from an fp32 reference with no hint. The warning is armed by the cast and fires at the first forward that
    still has the mismatch, so the documented fix right after the cast (`set_compute_dtype(model.float(), None,
    fp32_islands=True)`) stays silent.
    """

    builder = "the builder"  # the function whose compute_dtype= argument sets the precision, named in messages
    half_parts = "its half-precision parts"  # what computes in compute_dtype, for the messages
    half_note = "{parts} compute in {dtype} whatever the parameter dtype"  # the repr's explanation

    @property
    def autocast_dtype(self):
        """The compute dtype outside the fp32 islands (see compute_dtype_of)."""
        return compute_dtype_of(self)

    def extra_repr(self) -> str:
        dtype = self.autocast_dtype
        name = lambda d: str(d).removeprefix("torch.")  # noqa: E731
        if dtype in HALF_DTYPES:
            note = self.half_note.format(parts=self.half_parts, dtype=name(dtype))
            return (f"compute_dtype={name(dtype)} ({note}; pass compute_dtype=torch.float32 to {self.builder} for an "
                    f"fp32 comparison)")
        if isinstance(dtype, tuple):
            return f"compute_dtype=mixed ({', '.join(name(d) for d in dtype)})"
        return f"compute_dtype={name(dtype)}" + (" (each op in its input's dtype)" if dtype is None else "")

    def _apply(self, fn, recurse=True):
        before = self._param_dtype()
        out = super()._apply(fn, recurse)
        after = self._param_dtype()
        if after != before and after in (torch.float32, torch.float64):
            self._precision_pending = True  # checked (and cleared) by the next forward
        return out

    def _param_dtype(self):
        return next((p.dtype for p in self.parameters() if p.is_floating_point()), None)

    def check_precision(self) -> None:
        """Warn once if a cast to fp32 left the compute dtype at half precision (called at the start of forward)."""
        if not self.__dict__.get("_precision_pending", False):
            return
        self._precision_pending = False
        dtype, params = self.autocast_dtype, self._param_dtype()
        halves = [d for d in (dtype if isinstance(dtype, tuple) else (dtype,)) if d in HALF_DTYPES]
        if not halves:
            return
        half = str(halves[0]).removeprefix("torch.")
        warnings.warn(
            f"{type(self).__name__}: the parameters are {str(params).removeprefix('torch.')} but {self.half_parts} "
            f"still compute in {half} (see the model's repr), ~1e-3 from an fp32 reference. For an fp32 model build "
            f"it with {self.builder}(..., dtype=torch.float32, compute_dtype=torch.float32), or call "
            f"wanopt.models.layers.apply_compute_dtype(model, torch.float32).", PrecisionWarning, stacklevel=3)


# ---------------------------------------------------------------------------------------------------------------
# Norms


class WanRMSNorm(nn.Module):
    """RMSNorm in float32, cast back to the input dtype, then scaled by the weight (promotes to the weight's dtype)."""

    def __init__(self, dim: int, eps: float = 1e-5, weight: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if weight else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.float()
        y = (y * torch.rsqrt(y.pow(2).mean(dim=-1, keepdim=True) + self.eps)).type_as(x)
        return y if self.weight is None else y * self.weight


class WanLayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 and cast back to the input dtype."""

    def __init__(self, dim: int, eps: float = 1e-6, elementwise_affine: bool = False):
        super().__init__(dim, eps=eps, elementwise_affine=elementwise_affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # F.layer_norm with weight/bias in their own dtype: CUDA autocast runs layer_norm in float32 anyway.
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).type_as(x)


# ---------------------------------------------------------------------------------------------------------------
# Timestep embedding


def sinusoidal_embedding_1d(dim: int, position: torch.Tensor) -> torch.Tensor:
    """[cos | sin] embedding in float64, frequencies 10000^(-k/half) (cos first, as upstream)."""
    half = dim // 2
    position = position.to(torch.float64)
    sinusoid = torch.outer(position, torch.pow(10000, -torch.arange(half, device=position.device).to(position).div(half)))
    return torch.cat([torch.cos(sinusoid), torch.sin(sinusoid)], dim=1)


# ---------------------------------------------------------------------------------------------------------------
# 3D RoPE, reference path: float64 complex, per sample


def rope_params(max_seq_len: int, dim: int, theta: float = 10000.0) -> torch.Tensor:
    """Complex128 table [max_seq_len, dim/2] of polar(1, pos / theta^(2k/dim)), always built on the CPU."""
    if dim % 2:
        raise ValueError(f"rotary width must be even, got {dim}")
    inv = 1.0 / torch.pow(theta, torch.arange(0, dim, 2, dtype=torch.float64, device="cpu").div(dim))
    freqs = torch.outer(torch.arange(max_seq_len, device="cpu", dtype=torch.float64), inv)
    return torch.polar(torch.ones_like(freqs), freqs)


def rope_table(head_dim: int, max_seq_len: int = 1024) -> torch.Tensor:
    """The model's [1024, head_dim/2] complex table: own ladders for time (44 real dims at hd 128), h and w (42, 42)."""
    hw = 2 * (head_dim // 6)
    return torch.cat([rope_params(max_seq_len, head_dim - 2 * hw), rope_params(max_seq_len, hw),
                      rope_params(max_seq_len, hw)], dim=1)


def rope_split(head_dim: int) -> list[int]:
    """Complex pairs per axis (f, h, w): [22, 21, 21] at head_dim 128."""
    c = head_dim // 2
    return [c - 2 * (c // 3), c // 3, c // 3]


def rope_apply(x: torch.Tensor, grid_sizes: list[tuple[int, int, int]], freqs: torch.Tensor,
               frame_offset: int = 0) -> torch.Tensor:
    """Upstream `rope_apply`: interleaved pairs as complex128, rotated, stacked, returned as float32.

    x: [B, L, heads, head_dim]; grid_sizes: per sample (f, h, w) with f·h·w <= L (the padded tail passes through).
    frame_offset shifts the time positions (Matrix-Game-2's absolute frame index).
    """
    n, c = x.size(2), x.size(3) // 2
    freqs = freqs.split(rope_split(2 * c), dim=1)
    output = []
    for i, (f, h, w) in enumerate(grid_sizes):
        seq_len = f * h * w
        x_i = torch.view_as_complex(x[i, :seq_len].to(torch.float64).reshape(seq_len, n, -1, 2))
        freqs_i = torch.cat([
            freqs[0][frame_offset:frame_offset + f].view(f, 1, 1, -1).expand(f, h, w, -1),
            freqs[1][:h].view(1, h, 1, -1).expand(f, h, w, -1),
            freqs[2][:w].view(1, 1, w, -1).expand(f, h, w, -1),
        ], dim=-1).reshape(seq_len, 1, -1)
        x_i = torch.view_as_real(x_i * freqs_i).flatten(2)
        output.append(torch.cat([x_i, x[i, seq_len:]]))
    return torch.stack(output).float()


# ---------------------------------------------------------------------------------------------------------------
# Attention

# SDPA backends by the names used throughout wanopt. "flash" is FlashAttention-2, the kernel upstream falls back
# to when FlashAttention-3 is not installed (wan/modules/attention.py).
SDPA_BACKENDS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
}


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str | None = "flash") -> torch.Tensor:
    """Non-causal attention on [B, L, heads, head_dim] tensors, returns [B, Lq, heads, head_dim].

    backend picks one SDPA kernel on CUDA (scoped to this call); on the CPU the default CPU kernel runs.
    """
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    if q.is_cuda and backend is not None:
        if backend not in SDPA_BACKENDS:
            raise ValueError(f"unknown attention backend {backend!r}; choose from {', '.join(SDPA_BACKENDS)}")
        with sdpa_kernel([SDPA_BACKENDS[backend]]):
            out = F.scaled_dot_product_attention(q, k, v)
    else:
        out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2)


def flex_attention_bhsd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """FlexAttention with no mask or score modification, on [B, heads, L, head_dim]; compiled once on CUDA."""
    from torch.nn.attention.flex_attention import flex_attention

    global _compiled_flex
    if not q.is_cuda:
        return flex_attention(q, k, v)
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex(q, k, v)


_compiled_flex = None


def fa4_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """FlashAttention-4 (PyPI `flash-attn-4`, CuTe DSL kernels for Hopper and Blackwell) on [B, L, heads, head_dim],
    the layout wanopt already uses. Not a torch dependency: installed separately on the GPU machine."""
    if not q.is_cuda:
        raise RuntimeError("attention backend 'fa4' runs on CUDA GPUs only (Hopper or newer); on the CPU use "
                           "backend='flash' (SDPA picks its CPU kernel)")
    return torch.ops.wanopt.fa4_attention(q, k, v)  # a missing package is reported by the op, with the fix


def _fa4_kernel():
    """flash_attn.cute.flash_attn_func, imported on first use (tests put a reference kernel here instead)."""
    try:
        from flash_attn.cute import flash_attn_func
    except ImportError as exc:
        raise RuntimeError("attention backend 'fa4' needs FlashAttention-4: `pip install --pre flash-attn-4` "
                           f"(it brings nvidia-cutlass-dsl), or choose one of {', '.join(ATTENTION_BACKENDS)}") from exc
    return flash_attn_func


# A custom op, so that torch.compile treats the CuTe DSL launch as one opaque call (Dynamo cannot trace the DSL's
# JIT and host-side launch code) and CUDA graphs record the kernel it launches like any other.
@torch.library.custom_op("wanopt::fa4_attention", mutates_args=())
def _fa4_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    out = _fa4_kernel()(q, k, v)
    out = out[0] if isinstance(out, tuple) else out  # releases return (out, lse)
    return out.contiguous()


@_fa4_attention_op.register_fake
def _(q, k, v):
    return q.new_empty(q.shape[:-1] + v.shape[-1:])


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q·kᵀ/√d)·v written out on [B, L, heads, head_dim]: two batched bf16 GEMMs (fp32 accumulation, as
    every kernel here) around an fp32 softmax."""
    scores = torch.einsum("bqhd,bkhd->bhqk", q * q.size(-1) ** -0.5, k).float()
    return torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1).to(v.dtype), v)


def inductor_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """explicit_attention compiled by Inductor (one graph per shape): for the Matrix-Game-2 action module's tiny
    attentions (per location 3 queries over 6 cached frames) the fused kernels around two cuBLAS batched GEMMs
    beat the flash kernels' tile setup. Matrix-Game-2 meets about ten shapes and strides (mouse, keyboard, cross;
    cache filling or full; folded segments), so the recompile limit is raised above Dynamo's default of 8 for it."""
    global _compiled_explicit
    if _compiled_explicit is None:
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        _compiled_explicit = torch.compile(explicit_attention, dynamic=False)
    return _compiled_explicit(q, k, v)


_compiled_explicit = None


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str | None = "flash") -> torch.Tensor:
    """Non-causal attention on [B, L, heads, head_dim] with a named kernel: an SDPA backend, "flex", "fa4", or
    "inductor" (small shapes only: it materializes the scores)."""
    if backend == "inductor":
        return inductor_attention(q, k, v)
    if backend == "flex":
        return flex_attention_bhsd(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
    if backend == "fa4":
        return fa4_attention(q, k, v)
    return sdpa(q, k, v, backend)


ATTENTION_BACKENDS = (*SDPA_BACKENDS, "flex")  # what torch itself ships
EXTERNAL_BACKENDS = ("fa4",)  # kernels from packages of their own, used where installed
KNOWN_BACKENDS = (*ATTENTION_BACKENDS, *EXTERNAL_BACKENDS)
# Written-out attention: it stores the [L_q, L_k] scores, so it competes only where L_k is small (the action
# module's cached frames, the 257 CLIP tokens), never at the self-attention shapes of the ceilings.
SMALL_SHAPE_BACKENDS = ("inductor",)


def check_attention_backend(backend: str) -> str:
    """The name itself, or a ValueError that lists the names wanopt knows."""
    if backend not in KNOWN_BACKENDS + SMALL_SHAPE_BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose from {', '.join(KNOWN_BACKENDS)} (and "
                         f"{', '.join(SMALL_SHAPE_BACKENDS)} where the keys are few)")
    return backend


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_lens: torch.Tensor | None = None,
                     backend: str | None = "flash", dtype: torch.dtype | None = torch.bfloat16) -> torch.Tensor:
    """Upstream `flash_attention()` as a single GPU runs it, overheads included.

    Casts non-half inputs to bf16; with k_lens (a CPU tensor, as upstream passes seq_lens) it packs k and v with
    `torch.cat([u[:n] ...])` copies; builds cu_seqlens on the host and copies them to the device on every call
    (varlen FlashAttention needs them; SDPA here does not read them, but the copies are what upstream pays).
    Output is cast back to q's dtype (float32 for self-attention, whose q comes out of RoPE in float32).
    dtype=None skips the half cast (the fp32 parity tests).
    """
    b, lq, lk, out_dtype = q.size(0), q.size(1), k.size(1), q.dtype

    def half(x):
        return x if dtype is None or x.dtype in (torch.float16, torch.bfloat16) else x.to(dtype)

    q = half(q.flatten(0, 1))
    q_lens = torch.tensor([lq] * b, dtype=torch.int32).to(device=q.device, non_blocking=True)
    if k_lens is None:
        k, v = half(k.flatten(0, 1)), half(v.flatten(0, 1))
        k_lens = torch.tensor([lk] * b, dtype=torch.int32).to(device=k.device, non_blocking=True)
    else:
        k = half(torch.cat([u[:n] for u, n in zip(k, k_lens.tolist())]))
        v = half(torch.cat([u[:n] for u, n in zip(v, k_lens.tolist())]))
    q, k = q.to(v.dtype), k.to(v.dtype)
    cu_q = torch.cat([q_lens.new_zeros([1]), q_lens]).cumsum(0, dtype=torch.int32).to(q.device, non_blocking=True)
    cu_k = torch.cat([k_lens.new_zeros([1]), k_lens]).cumsum(0, dtype=torch.int32).to(q.device, non_blocking=True)
    del cu_q, cu_k  # consumed by varlen flash-attn upstream; every sample here has the same length
    x = attention(q.unflatten(0, (b, lq)), k.unflatten(0, (b, -1)), v.unflatten(0, (b, -1)), backend)
    return x.type(out_dtype)


def attention_flops(lq: int, lk: int, dim: int, batch: int = 1) -> float:
    """QKᵀ + PV: 4·Lq·Lk·d (2 FLOP per multiply-add)."""
    return 4.0 * batch * lq * lk * dim


def param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())




__all__ = [
    "AutocastLinear", "set_compute_dtype", "fp32_island", "WanRMSNorm", "WanLayerNorm", "sinusoidal_embedding_1d",
    "rope_params", "rope_table", "rope_split", "rope_apply", "sdpa", "varlen_attention", "attention_flops",
    "SDPA_BACKENDS", "ATTENTION_BACKENDS", "EXTERNAL_BACKENDS", "KNOWN_BACKENDS", "check_attention_backend",
    "attention", "fa4_attention",
    "flex_attention_bhsd", "AutocastConv3d", "param_count", "check_compute_dtype", "apply_compute_dtype",
    "compute_dtype_of", "ComputeDtypeMixin", "PrecisionWarning", "HALF_DTYPES",
]
