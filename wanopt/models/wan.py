"""WanModel: the Wan 2.1 / 2.2 text-to-video DiT in the official numerics (`wan/modules/model.py`).

Read top to bottom: attention, block, head, model. What a user's copy of the official code pays is kept on
purpose, because the notebooks measure it:
  - bf16 linears with float32 islands (time embedding and projection, modulation, gated residual adds, head);
  - the residual stream turns float32 at the first gated add and stays float32;
  - Wan 2.2 embeds the timestep once per token (t.expand(B, L)); Wan 2.1 once per sample;
  - RoPE in complex128 per sample, q and k leave it in float32;
  - q/k RMSNorm over the full dim before the head split; cross-attention input LN with affine (`norm3`);
  - attention through `flash_attention()`'s packing: casts, k/v cat copies, cu_seqlens host-to-device copies;
  - padded text rows are not masked in cross-attention.
Autocast is written out (see layers.py): the same code computes the same numbers on CPU and GPU.

Record-function labels (block00.., self_attn, cross_attn, ffn, ...) cost nothing without a profiler and let the
traces be broken down per block and part.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn as nn
from torch.profiler import record_function

from ..configs import WanConfig
from .layers import (AutocastConv3d, AutocastLinear, ComputeDtypeMixin, WanLayerNorm, WanRMSNorm, fp32_island,
                     rope_apply, rope_table, check_attention_backend, sinusoidal_embedding_1d, varlen_attention)


class WanSelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qk_norm: bool = True, eps: float = 1e-6):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q, self.k, self.v, self.o = (AutocastLinear(dim, dim) for _ in range(4))
        self.norm_q = WanRMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k = WanRMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.attn_backend = "flash"
        self.compute_dtype = torch.bfloat16  # what flash_attention() casts q, k, v to

    def forward(self, x, seq_lens, grid_sizes, freqs):
        b, s, n, d = *x.shape[:2], self.num_heads, self.head_dim
        q = self.norm_q(self.q(x)).view(b, s, n, d)
        k = self.norm_k(self.k(x)).view(b, s, n, d)
        v = self.v(x).view(b, s, n, d)
        x = varlen_attention(rope_apply(q, grid_sizes, freqs), rope_apply(k, grid_sizes, freqs), v,
                             k_lens=seq_lens, backend=self.attn_backend, dtype=self.compute_dtype)
        return self.o(x.flatten(2))


class WanCrossAttention(WanSelfAttention):
    def forward(self, x, context):
        b, n, d = x.size(0), self.num_heads, self.head_dim
        q = self.norm_q(self.q(x)).view(b, -1, n, d)
        k = self.norm_k(self.k(context)).view(b, -1, n, d)
        v = self.v(context).view(b, -1, n, d)
        # no mask: the padded text rows (MLP of zeros) are attended to, as upstream
        x = varlen_attention(q, k, v, k_lens=None, backend=self.attn_backend, dtype=self.compute_dtype)
        return self.o(x.flatten(2))


class WanAttentionBlock(nn.Module):
    def __init__(self, dim: int, ffn_dim: int, num_heads: int, qk_norm: bool = True, cross_attn_norm: bool = True,
                 eps: float = 1e-6):
        super().__init__()
        self.norm1 = WanLayerNorm(dim, eps)
        self.self_attn = WanSelfAttention(dim, num_heads, qk_norm, eps)
        # upstream names: norm3 is the cross-attention LN (affine), norm2 the FFN LN (diffusers swaps them)
        self.norm3 = WanLayerNorm(dim, eps, elementwise_affine=True) if cross_attn_norm else nn.Identity()
        self.cross_attn = WanCrossAttention(dim, num_heads, qk_norm, eps)
        self.norm2 = WanLayerNorm(dim, eps)
        self.ffn = nn.Sequential(AutocastLinear(dim, ffn_dim), nn.GELU(approximate="tanh"), AutocastLinear(ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(self, x, e, seq_lens, grid_sizes, freqs, context):
        # e: [B, Lt, 6, dim] float32, Lt = L (per-token time, Wan 2.2) or 1 (per-sample, Wan 2.1)
        e = (self.modulation.unsqueeze(0) + e).chunk(6, dim=2)  # float32 island
        shift_msa, scale_msa, gate_msa, shift_ffn, scale_ffn, gate_ffn = (u.squeeze(2) for u in e)
        with record_function("self_attn"):
            y = self.self_attn(self.norm1(x).float() * (1 + scale_msa) + shift_msa, seq_lens, grid_sizes, freqs)
            x = x + y * gate_msa  # float32: the residual stream is float32 from here on
        with record_function("cross_attn"):
            x = x + self.cross_attn(self.norm3(x), context)
        with record_function("ffn"):
            y = self.ffn(self.norm2(x).float() * (1 + scale_ffn) + shift_ffn)
            x = x + y * gate_ffn
        return x


class Head(nn.Module):
    def __init__(self, dim: int, out_dim: int, patch_size, eps: float = 1e-6):
        super().__init__()
        self.norm = WanLayerNorm(dim, eps)
        self.head = fp32_island(AutocastLinear(dim, math.prod(patch_size) * out_dim))
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    def forward(self, x, e):
        # e: [B, Lt, dim], the time_embedding output (not the 6-way projection); the whole head is float32
        shift, scale = (u.squeeze(2) for u in (self.modulation.unsqueeze(0) + e.unsqueeze(2)).chunk(2, dim=2))
        return self.head(self.norm(x) * (1 + scale) + shift)


class WanModel(ComputeDtypeMixin, nn.Module):
    """`model(x, t, context)` → flow velocity.

    x: [B, in_dim, F, H, W] latent; t: [B] timesteps (or [B, L] per token), or one Python number / 0-d tensor for
    the whole batch; context: [B, <=text_len, text_dim] text embeddings, zero-padded to text_len here as upstream
    pads them. Returns float32 [B, out_dim, F, H, W].

    Precision: the linears, the patch convolution and the attention inputs compute in the emulated autocast dtype
    (bf16 by default, see layers.py), whatever the parameter dtype; `build_wan(..., compute_dtype=)` sets it, the
    repr shows it.
    """

    builder = "wanopt.weights.build_wan"
    half_parts = "the linears, the patch convolution and the attention inputs"
    half_note = "autocast emulation: {parts} compute in {dtype} whatever the parameter dtype"

    def __init__(self, config: WanConfig):
        super().__init__()
        c = self.config = config
        self.patch_embedding = AutocastConv3d(c.in_dim, c.dim, kernel_size=c.patch_size, stride=c.patch_size)
        self.text_embedding = nn.Sequential(AutocastLinear(c.text_dim, c.dim), nn.GELU(approximate="tanh"),
                                            AutocastLinear(c.dim, c.dim))
        self.time_embedding = nn.Sequential(fp32_island(AutocastLinear(c.freq_dim, c.dim)), nn.SiLU(),
                                            fp32_island(AutocastLinear(c.dim, c.dim)))
        self.time_projection = nn.Sequential(nn.SiLU(), fp32_island(AutocastLinear(c.dim, 6 * c.dim)))
        self.blocks = nn.ModuleList([
            WanAttentionBlock(c.dim, c.ffn_dim, c.num_heads, c.qk_norm, c.cross_attn_norm, c.eps)
            for _ in range(c.num_layers)
        ])
        self.head = Head(c.dim, c.out_dim, c.patch_size, c.eps)
        # complex128 and not a buffer, as upstream: `.to(dtype)` never touches it
        self.freqs = rope_table(c.head_dim)
        self.per_token_time = c.wan_version == "2.2"

    # -- the forward pass ----------------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, t: torch.Tensor | float, context: torch.Tensor) -> torch.Tensor:
        t = self.as_timesteps(t, x)
        self.check_inputs(x, t, context)
        if self.freqs.device != x.device:
            self.freqs = self.freqs.to(x.device)

        with record_function("patch_embed"):
            x = [self.patch_embedding(u.unsqueeze(0)) for u in x]  # per sample, as upstream
            grid_sizes = [tuple(u.shape[2:]) for u in x]
            x = torch.cat([u.flatten(2).transpose(1, 2) for u in x])
            b, seq_len = x.shape[:2]
            seq_lens = torch.tensor([seq_len] * b, dtype=torch.long)  # CPU, as upstream

        with record_function("time_embed"):  # float32 island
            if t.dim() == 1 and self.per_token_time:
                t = t.unsqueeze(1).expand(b, seq_len)  # Wan 2.2: one embedding per token
            e, e0 = self.embed_time(t.reshape(b, -1))

        with record_function("text_embed"):
            context = self.embed_text(context)

        for i, block in enumerate(self.blocks):
            with record_function(f"block{i:02d}"):
                x = block(x, e0, seq_lens, grid_sizes, self.freqs, context)

        with record_function("head"):
            x = self.head(x, e)
            return torch.stack([u.float() for u in self.unpatchify(x, grid_sizes)])

    def embed_time(self, t: torch.Tensor):
        """t [B, Lt] -> e [B, Lt, dim] and the 6-way modulation e0 [B, Lt, 6, dim], in float32."""
        c = self.config
        e = self.time_embedding(sinusoidal_embedding_1d(c.freq_dim, t.flatten()).unflatten(0, t.shape).float())
        return e, self.time_projection(e).unflatten(2, (6, c.dim))

    def embed_text(self, context: torch.Tensor) -> torch.Tensor:
        """Zero-pad the text embeddings to text_len (upstream pads each prompt), then the text MLP."""
        b, n, d = context.shape
        if n < self.config.text_len:
            context = torch.cat([context, context.new_zeros(b, self.config.text_len - n, d)], 1)
        return self.text_embedding(context)

    def unpatchify(self, x, grid_sizes):
        c, (pt, ph, pw) = self.config.out_dim, self.config.patch_size
        out = []
        for u, (f, h, w) in zip(x, grid_sizes):
            u = u[: f * h * w].view(f, h, w, pt, ph, pw, c)
            u = torch.einsum("fhwpqrc->cfphqwr", u)
            out.append(u.reshape(c, f * pt, h * ph, w * pw))
        return out

    # -- helpers -------------------------------------------------------------------------------------------------

    @staticmethod
    def as_timesteps(t, x: torch.Tensor) -> torch.Tensor:
        """A Python number or a 0-d tensor is one timestep for every sample: [B] on x's device (what a user who
        writes `model(x, 999, ctx)` means). Tensors of 1 or 2 dims pass through unchanged."""
        if isinstance(t, torch.Tensor):
            return t.to(x.device).expand(x.size(0)) if t.dim() == 0 else t
        if isinstance(t, bool) or not isinstance(t, numbers.Real):
            raise TypeError(f"t must be a tensor of timesteps [B] or [B, L], or one number for the whole batch; got "
                            f"{type(t).__name__}. Example: model(x, torch.tensor([999.0]), context).")
        integral = isinstance(t, numbers.Integral)
        return torch.full((x.size(0),), int(t) if integral else float(t), device=x.device,
                          dtype=torch.long if integral else torch.float32)

    def check_inputs(self, x, t, context):
        self.check_precision()
        c = self.config
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"t must be a tensor [B] or [B, L]; got {type(t).__name__}. Convert a number with "
                            f"WanModel.as_timesteps(t, x) (WanModel.forward does this itself).")
        if x.dim() != 5 or x.size(1) != c.in_dim:
            raise ValueError(f"WanModel expects x as a latent video [B, {c.in_dim}, F, H, W]; got shape "
                             f"{list(x.shape)}. Add the batch dimension (x[None]) or check the VAE's z_dim.")
        pt, ph, pw = c.patch_size
        if x.size(2) % pt or x.size(3) % ph or x.size(4) % pw:
            raise ValueError(f"latent F, H, W = {list(x.shape[2:])} must be multiples of the patch size "
                             f"{c.patch_size}; pick a video size that is a multiple of 16 pixels")
        b = x.size(0)
        if t.dim() not in (1, 2) or t.size(0) != b:
            raise ValueError(f"t must be [B] or [B, L] with B={b}; got shape {list(t.shape)}")
        if t.dim() == 2:
            tokens = (x.size(2) // pt) * (x.size(3) // ph) * (x.size(4) // pw)
            if t.size(1) != tokens:
                raise ValueError(f"per-token t must be [B, {tokens}] (one timestep per video token); got {list(t.shape)}")
        if context.dim() != 3 or context.size(0) != b or context.size(2) != c.text_dim:
            raise ValueError(f"context must be text embeddings [B={b}, <= {c.text_len}, {c.text_dim}]; "
                             f"got shape {list(context.shape)}")
        if context.size(1) > c.text_len:
            raise ValueError(f"context has {context.size(1)} tokens, more than text_len={c.text_len}: truncate the "
                             f"prompt to {c.text_len} tokens, as upstream's tokenizer does")

    def set_attention_backend(self, backend: str) -> "WanModel":
        check_attention_backend(backend)
        for m in self.modules():
            if hasattr(m, "attn_backend"):
                m.attn_backend = backend
        return self
