"""CausalWanModel: the Matrix-Game-2 DiT (`wan/modules/causal_model.py`), its KV-cached inference path.

Read top to bottom: the caches, attention, block, head, model; its builder is `wanopt.weights.build_causal`. What a
user's copy of upstream pays is kept on purpose, because the notebooks measure it:
  - the whole model in bf16: no autocast, no float32 islands; norms and RoPE upcast inside and cast back;
  - per-frame adaLN: the timestep is embedded per latent frame (t is [B, F]) and broadcast over that frame's tokens;
  - RoPE in complex128 on every call, time positions absolute (start frame + f): keys enter the cache rotated;
  - a rolling self-attention cache of local_attn_size frames whose end indices live on the GPU and are read back
    with `.item()` several times per call (host syncs: the notebook shows them);
  - mouse and keyboard caches with the same rule in frame units (action.py);
  - cross-attention to the CLIP tokens: the image embedding is recomputed on every call, its K/V only on the first;
  - attention through `flash_attention()`'s packing (`layers.varlen_attention`), SDPA's flash kernel standing in
    for FlashAttention-2/3.
Within a block, attention is dense and unmasked; causality is what the cache holds.

Record-function labels (block00.., self_attn, cross_attn, action > mouse/keyboard, ffn, and patch_embed, time_embed,
img_embed, head) cost nothing without a profiler and let the traces be broken down per block and part.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.profiler import record_function

from ..configs import CausalWanConfig
from .action import ActionModule
from .layers import ComputeDtypeMixin, WanRMSNorm, rope_apply, rope_table, sinusoidal_embedding_1d, varlen_attention
from .wan import WanModel

# ---------------------------------------------------------------------------------------------------------------
# Caches


class RollingKV:
    """One rolling K/V buffer, [B, size, heads, head_dim] along positions (tokens, or frames for the action caches),
    with upstream's end indices as 1-element long tensors on the device."""

    def __init__(self, shape, device, dtype, sink: int = 0):
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.global_end = torch.zeros(1, dtype=torch.long, device=device)  # absolute end of what was written
        self.local_end = torch.zeros(1, dtype=torch.long, device=device)  # end of the valid part of the buffer
        self.sink = sink  # leading positions never evicted (0 in every Matrix-Game-2 config)

    def attend(self, q, k, v, start: int, attention):
        """Write k, v (n new positions, the first at absolute position `start`), attend q to the window, return.

        Upstream's rule: a call that goes past the last end and does not fit rolls the buffer left
        (clone, then copy back); a repeated call on the same block (end == global end) overwrites its own slots.
        Every `.item()` below is upstream's, one for one: each is a host sync on the GPU (3 to 6 per call).
        """
        n, size, sink = k.size(1), self.k.size(1), self.sink
        end = start + n
        if end > self.global_end.item() and n + self.local_end.item() > size:
            evicted = n + self.local_end.item() - size
            rolled = self.local_end.item() - evicted - sink
            self.k[:, sink:sink + rolled] = self.k[:, sink + evicted:sink + evicted + rolled].clone()
            self.v[:, sink:sink + rolled] = self.v[:, sink + evicted:sink + evicted + rolled].clone()
            local_end = self.local_end.item() + end - self.global_end.item() - evicted
        else:
            local_end = self.local_end.item() + end - self.global_end.item()
        self.k[:, local_end - n:local_end] = k
        self.v[:, local_end - n:local_end] = v
        lo = max(0, local_end - size)  # upstream's window: max_attention_size == the buffer size
        out = attention(q, self.k[:, lo:local_end], self.v[:, lo:local_end])
        self.global_end.fill_(end)
        self.local_end.fill_(local_end)
        return out

    def reset(self):
        for t in (self.k, self.v, self.global_end, self.local_end):
            t.zero_()


class CrossAttnKV:
    """K/V of the CLIP tokens [B, clip_tokens, heads, head_dim], computed by the first call of a video."""

    def __init__(self, shape, device, dtype):
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.is_init = False

    def reset(self):
        self.k.zero_()
        self.v.zero_()
        self.is_init = False


@dataclass
class LayerCache:
    self_attn: RollingKV
    cross_attn: CrossAttnKV
    mouse: RollingKV | None = None  # action layers with a mouse branch
    keyboard: RollingKV | None = None  # action layers


class KVCache:
    """All caches of one video, owned by the caller: sized once from the config, `reset()` before each video.

    Per layer (S = frame_seq_length, W = local_attn_size):
      self-attention K, V [1, W·S, heads, head_dim] + global/local end indices on the device;
      cross-attention K, V [1, clip_tokens, heads, head_dim] + is_init;
      action layers: mouse K, V [S, W, action_heads, action_head_dim], keyboard K, V [1, W, action_heads, ...].
    Upstream allocates mouse and keyboard caches for all layers; only the action layers' are made here (the others
    are never read). Batch 1 only, as upstream.
    """

    def __init__(self, config: CausalWanConfig, device=None, dtype=torch.bfloat16):
        c = self.config = config
        if c.local_attn_size < c.num_frame_per_block:
            raise ValueError(f"local_attn_size ({c.local_attn_size} latent frames) must hold at least one block of "
                             f"num_frame_per_block={c.num_frame_per_block} frames: a block's own keys go into the cache "
                             f"before it attends. Use a window of >= {c.num_frame_per_block} frames (every released "
                             f"config has 4 or 6).")
        s, w, a = c.frame_seq_length, c.local_attn_size, c.action
        kv_self = (1, w * s, c.num_heads, c.head_dim)
        kv_cross = (1, c.clip_tokens, c.num_heads, c.head_dim)
        kv_mouse = (s, w, a.heads_num, a.mouse_hidden_dim // a.heads_num)
        kv_keyboard = (1, w, a.heads_num, a.keyboard_hidden_dim // a.heads_num)
        self.layers = []
        for i in range(c.num_layers):
            action = i in a.blocks
            self.layers.append(LayerCache(
                RollingKV(kv_self, device, dtype, sink=c.sink_size * s), CrossAttnKV(kv_cross, device, dtype),
                RollingKV(kv_mouse, device, dtype) if action and a.enable_mouse else None,
                RollingKV(kv_keyboard, device, dtype) if action else None))

    def buffers(self):
        for layer in self.layers:
            yield from (cache for cache in (layer.self_attn, layer.cross_attn, layer.mouse, layer.keyboard)
                        if cache is not None)

    def reset(self) -> "KVCache":
        """Back to an empty video: zero K/V and end indices, cross-attention K/V to be recomputed."""
        for cache in self.buffers():
            cache.reset()
        return self

    def nbytes(self) -> int:
        """K and V bytes of all layers (the end indices aside)."""
        return sum(t.numel() * t.element_size() for cache in self.buffers() for t in (cache.k, cache.v))


# ---------------------------------------------------------------------------------------------------------------
# Attention


class CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, eps: float = 1e-6):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q, self.norm_k = WanRMSNorm(dim, eps), WanRMSNorm(dim, eps)
        self.attn_backend = "flash"
        self.compute_dtype = torch.bfloat16  # what flash_attention() casts non-half inputs to

    def attention(self, q, k, v):
        return varlen_attention(q, k, v, backend=self.attn_backend, dtype=self.compute_dtype)

    def forward(self, x, grid, freqs, start_frame: int, cache: RollingKV):
        b, s, n, d = *x.shape[:2], self.num_heads, self.head_dim
        q = self.norm_q(self.q(x)).view(b, s, n, d)
        k = self.norm_k(self.k(x)).view(b, s, n, d)
        v = self.v(x).view(b, s, n, d)
        q = rope_apply(q, [grid], freqs, frame_offset=start_frame).type_as(v)
        k = rope_apply(k, [grid], freqs, frame_offset=start_frame).type_as(v)
        x = cache.attend(q, k, v, start_frame * math.prod(grid[1:]), self.attention)
        return self.o(x.flatten(2))


class ImageCrossAttention(CausalSelfAttention):
    """Upstream `WanI2VCrossAttention`: the only cross-attention, to the CLIP tokens; no text, no mask."""

    def forward(self, x, context, cache: CrossAttnKV):
        b, n, d = x.size(0), self.num_heads, self.head_dim
        q = self.norm_q(self.q(x)).view(b, -1, n, d)
        if not cache.is_init:
            cache.k.copy_(self.norm_k(self.k(context)).view(b, -1, n, d))
            cache.v.copy_(self.v(context).view(b, -1, n, d))
            cache.is_init = True
        return self.o(self.attention(q, cache.k, cache.v).flatten(2))


# ---------------------------------------------------------------------------------------------------------------
# Block, head, image embedding


def modulate(x, shift, scale):
    """x [B, F·S, C] scaled and shifted per frame by [B, F, 1, C] tables."""
    f = shift.size(1)
    return (x.unflatten(1, (f, -1)) * (1 + scale) + shift).flatten(1, 2)


def gated(y, gate):
    return (y.unflatten(1, (gate.size(1), -1)) * gate).flatten(1, 2)


class CausalWanBlock(nn.Module):
    def __init__(self, c: CausalWanConfig, has_action: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(c.dim, c.eps, elementwise_affine=False)
        self.self_attn = CausalSelfAttention(c.dim, c.num_heads, c.eps)
        self.norm3 = nn.LayerNorm(c.dim, c.eps, elementwise_affine=True) if c.cross_attn_norm else nn.Identity()
        self.cross_attn = ImageCrossAttention(c.dim, c.num_heads, c.eps)
        self.action_model = ActionModule(c.action) if has_action else None
        self.norm2 = nn.LayerNorm(c.dim, c.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(c.dim, c.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(c.ffn_dim, c.dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, c.dim) / c.dim**0.5)

    def forward(self, x, e, grid, freqs, context, mouse, keyboard, start_frame: int, cache: LayerCache):
        # e: [B, F, 6, dim], one row per latent frame
        shift_msa, scale_msa, gate_msa, shift_ffn, scale_ffn, gate_ffn = (self.modulation.unsqueeze(1) + e).chunk(6, 2)
        with record_function("self_attn"):
            y = self.self_attn(modulate(self.norm1(x), shift_msa, scale_msa), grid, freqs, start_frame, cache.self_attn)
            x = x + gated(y, gate_msa)
        with record_function("cross_attn"):
            x = x + self.cross_attn(self.norm3(x), context, cache.cross_attn)
        if self.action_model is not None:
            with record_function("action"):
                x = self.action_model(x, grid, mouse, keyboard, start_frame, cache.mouse, cache.keyboard)
        with record_function("ffn"):
            x = x + gated(self.ffn(modulate(self.norm2(x), shift_ffn, scale_ffn)), gate_ffn)
        return x


class CausalHead(nn.Module):
    def __init__(self, dim: int, out_dim: int, patch_size, eps: float = 1e-6):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps, elementwise_affine=False)
        self.head = nn.Linear(dim, math.prod(patch_size) * out_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    def forward(self, x, e):
        # e: [B, F, 1, dim], the time_embedding output (not the 6-way projection); returns [B, F, S, out]
        shift, scale = (self.modulation.unsqueeze(1) + e).chunk(2, dim=2)
        return self.head(self.norm(x).unflatten(1, (e.size(1), -1)) * (1 + scale) + shift)


class ImageEmbedding(nn.Module):
    """Upstream `MLPProj`: CLIP tokens -> model width (LayerNorms at PyTorch's default eps, exact GELU)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.proj = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, in_dim), nn.GELU(),
                                  nn.Linear(in_dim, out_dim), nn.LayerNorm(out_dim))

    def forward(self, x):
        return self.proj(x)


# ---------------------------------------------------------------------------------------------------------------
# Model


class CausalWanModel(ComputeDtypeMixin, nn.Module):
    """`model(x, t, visual_context, cond_concat, mouse_cond, keyboard_cond, cache=..., current_start=s·S)` → v.

    One call denoises one block of F = num_frame_per_block latent frames starting at latent frame s:
      x [1, 16, F, H, W] noisy latent; t [1, F] timesteps (one per frame); visual_context [1, clip_tokens, clip_dim]
      CLIP tokens; cond_concat [1, 20, F, H, W] mask ‖ image latent of these frames; mouse_cond [1, Nf, 2] (None for
      keyboard-only configs) and keyboard_cond [1, Nf, K] with Nf = 1 + 4·(s + F − 1): every action from video
      frame 0 to the end of the block; cache a KVCache of this config; current_start = s·frame_seq_length tokens.
    Returns the flow velocity v [1, 16, F, H, W] in the model's dtype. Only the KV-cached (inference) path exists.
    Every floating input must be in the model's dtype (no autocast here, as upstream); the error says so up front.

    Precision: linears compute in the parameter dtype; the attention inputs are cast to compute_dtype (bf16, as
    upstream's flash_attention() does) when they are not already half: `build_causal(..., compute_dtype=)` sets it.
    """

    builder = "wanopt.weights.build_causal"
    half_parts = "the attention inputs (q, k, v)"
    half_note = ("{parts} are cast to {dtype} as upstream's flash_attention() does; linears compute in the "
                 "parameter dtype")

    def __init__(self, config: CausalWanConfig):
        super().__init__()
        c = self.config = config
        if c.dim % c.num_heads or c.head_dim % 2:
            raise ValueError(f"dim {c.dim} must split into num_heads {c.num_heads} heads of even size")
        self.patch_embedding = nn.Conv3d(c.in_dim, c.dim, kernel_size=c.patch_size, stride=c.patch_size)
        self.time_embedding = nn.Sequential(nn.Linear(c.freq_dim, c.dim), nn.SiLU(), nn.Linear(c.dim, c.dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(c.dim, 6 * c.dim))
        self.blocks = nn.ModuleList([CausalWanBlock(c, i in c.action.blocks) for i in range(c.num_layers)])
        self.head = CausalHead(c.dim, c.out_dim, c.patch_size, c.eps)
        self.img_emb = ImageEmbedding(c.clip_dim, c.dim)
        # complex128 and not a buffer, as upstream: `.to(dtype)` never touches it
        self.freqs = rope_table(c.head_dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor, visual_context: torch.Tensor, cond_concat: torch.Tensor,
                mouse_cond: torch.Tensor | None = None, keyboard_cond: torch.Tensor | None = None, *,
                cache: KVCache, current_start: int = 0) -> torch.Tensor:
        self.check_inputs(x, t, visual_context, cond_concat, mouse_cond, keyboard_cond, cache, current_start)
        c = self.config
        if self.freqs.device != x.device:
            self.freqs = self.freqs.to(x.device)
        start_frame = current_start // c.frame_seq_length

        with record_function("patch_embed"):
            x = self.patch_embedding(torch.cat([x, cond_concat], dim=1))
            grid = tuple(x.shape[2:])
            x = x.flatten(2).transpose(1, 2)

        with record_function("time_embed"):  # per latent frame
            e = self.time_embedding(sinusoidal_embedding_1d(c.freq_dim, t.flatten()).type_as(x))
            e0 = self.time_projection(e).unflatten(1, (6, c.dim)).unflatten(0, t.shape)

        with record_function("img_embed"):  # every call, although the cross-attention K/V are cached
            context = self.img_emb(visual_context)

        for i, block in enumerate(self.blocks):
            with record_function(f"block{i:02d}"):
                x = block(x, e0, grid, self.freqs, context, mouse_cond, keyboard_cond, start_frame, cache.layers[i])

        with record_function("head"):
            x = self.head(x, e.unflatten(0, t.shape).unsqueeze(2))
            return self.unpatchify(x, grid)

    def unpatchify(self, x, grid):
        c, (pt, ph, pw), (f, h, w) = self.config.out_dim, self.config.patch_size, grid
        x = x.view(x.size(0), f, h, w, pt, ph, pw, c)
        return torch.einsum("bfhwpqrc->bcfphqwr", x).reshape(x.size(0), c, f * pt, h * ph, w * pw)

    # -- helpers -------------------------------------------------------------------------------------------------

    def check_inputs(self, x, t, visual_context, cond_concat, mouse, keyboard, cache, current_start):
        self.check_precision()
        c, a = self.config, self.config.action
        f, (h, w) = c.num_frame_per_block, c.latent_hw
        noisy, cond = c.out_dim, c.in_dim - c.out_dim
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"t must be a tensor of one timestep per latent frame, [1, {f}]; got {type(t).__name__}. "
                            f"Use torch.ones(1, {f}) * t.")
        for name, value, optional in (("x", x, False), ("visual_context", visual_context, False),
                                      ("cond_concat", cond_concat, False), ("mouse_cond", mouse, True),
                                      ("keyboard_cond", keyboard, True)):
            if not isinstance(value, torch.Tensor) and not (optional and value is None):
                raise TypeError(f"{name} must be a tensor; got {type(value).__name__}")
        if x.dim() == 5 and x.size(0) != 1:
            raise ValueError(f"x has batch {x.size(0)}; CausalWanModel runs batch 1 only, as upstream (the KV cache "
                             f"holds one video). Make the videos one after the other, cache.reset() between them.")
        if x.dim() == 5 and x.size(1) != noisy:
            hint = (f" x looks like noisy latent ‖ cond_concat; pass the {noisy} noisy channels as x and the {cond} "
                    f"mask ‖ image-latent channels as cond_concat (the model concatenates them)"
                    if x.size(1) == c.in_dim else "")
            raise ValueError(f"x has {x.size(1)} channels; the noisy latent of {c.name} has {noisy} "
                             f"([1, {noisy}, {f}, {h}, {w}]).{hint}")
        if x.dim() != 5 or x.shape[:3] != (1, noisy, f) or tuple(x.shape[3:]) != (h, w):
            raise ValueError(f"x must be one block of noisy latents [1, {noisy}, {f}, {h}, {w}] (batch 1, "
                             f"num_frame_per_block={f}, latent_hw={c.latent_hw}); got {list(x.shape)}. Slice the "
                             f"video's noise as noise[:, :, s:s+{f}], or build a config with this latent size.")
        if tuple(t.shape) != (1, f):
            raise ValueError(f"t must hold one timestep per latent frame, [1, {f}]; got {list(t.shape)}. "
                             f"Use torch.ones(1, {f}) * t.")
        if tuple(cond_concat.shape) != (1, cond, f, h, w):
            raise ValueError(f"cond_concat must be this block's mask ‖ image latent [1, {cond}, {f}, {h}, {w}]; got "
                             f"{list(cond_concat.shape)}. Slice the video's cond_concat as cond_concat[:, :, s:s+{f}].")
        if tuple(visual_context.shape) != (1, c.clip_tokens, c.clip_dim):
            raise ValueError(f"visual_context must be the CLIP tokens [1, {c.clip_tokens}, {c.clip_dim}] (the first "
                             f"31 blocks of ViT-H/14, no post-norm); got {list(visual_context.shape)}")
        if not isinstance(current_start, int) or current_start < 0 or current_start % c.frame_seq_length:
            raise ValueError(f"current_start must be the block's first token, s·{c.frame_seq_length} for start frame "
                             f"s; got {current_start!r}")
        if not isinstance(cache, KVCache) or cache.config != c:
            raise ValueError("cache must be a KVCache built from this model's config: KVCache(model.config, device, "
                             "dtype); this model runs the KV-cached inference path only")
        self.check_dtypes(x=x, visual_context=visual_context, cond_concat=cond_concat, mouse_cond=mouse,
                          keyboard_cond=keyboard)
        s = current_start // c.frame_seq_length
        stride = a.vae_time_compression_ratio
        expected = 1 + stride * (s + f - 1)
        actions = [("keyboard_cond", keyboard, a.keyboard_dim_in)]
        if a.enable_mouse:
            actions.insert(0, ("mouse_cond", mouse, a.mouse_dim_in))
        elif mouse is not None:
            raise ValueError(f"{c.name} has no mouse branch (keyboard only): pass mouse_cond=None")
        for name, cond_t, dim in actions:
            if cond_t is None:
                raise ValueError(f"{c.name} needs {name} [1, {expected}, {dim}] for the block starting at latent "
                                 f"frame {s}")
            if cond_t.dim() != 3 or cond_t.size(0) != 1 or cond_t.size(2) != dim:
                raise ValueError(f"{name} must be [1, Nf, {dim}] (one action per video frame, {dim} channels for "
                                 f"{c.name}); got {list(cond_t.shape)}")
            if cond_t.size(1) != expected:
                raise ValueError(
                    f"{name} has {cond_t.size(1)} actions; the block starting at latent frame {s} needs exactly "
                    f"1 + {stride}·({s} + {f} − 1) = {expected}: every action from video frame 0 to the end of this "
                    f"block. Pass {name}[:, :{expected}] of the whole trajectory (upstream's cond_current).")

    def check_dtypes(self, **inputs):
        """Every floating input in the parameters' dtype: upstream runs this model without autocast, so an fp32
        latent into the bf16 model would otherwise fail deep inside the patch convolution."""
        dtype = self.patch_embedding.weight.dtype
        wrong = {k: v.dtype for k, v in inputs.items() if v is not None and v.dtype != dtype}
        if wrong:
            got = ", ".join(f"{k} is {str(d).removeprefix('torch.')}" for k, d in wrong.items())
            name = str(dtype).removeprefix("torch.")
            raise TypeError(f"CausalWanModel's parameters are {name} and it runs without autocast, so its inputs "
                            f"must be {name} too; got: {got}. Cast them (x.to(torch.{name}), ...) as CausalPipeline "
                            f"does, or build the model in their dtype (build_causal(..., dtype=...)).")

    # the kernel of every attention (self, cross, mouse, keyboard): an SDPA backend or "flex", as for WanModel
    set_attention_backend = WanModel.set_attention_backend


__all__ = ["CausalWanModel", "KVCache", "LayerCache", "RollingKV", "CrossAttnKV"]
