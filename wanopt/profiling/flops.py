"""Analytic FLOP counts, 2 FLOP per multiply-add: the linears and the attention cores of one DiT eval."""

from __future__ import annotations

from ..configs import CausalWanConfig, WanConfig


def wan_eval_flops(c: WanConfig, tokens: int, per_token_time: bool, text_tokens: int = 512,
                   batch: int = 1) -> dict[str, float]:
    """One DiT eval of WanModel on `tokens` video tokens: linear, attention core, per-token time MLP."""
    L, d, f, n = tokens, c.dim, c.ffn_dim, text_tokens
    linear = c.num_layers * (8 * L * d * d + 4 * L * d * d + 4 * n * d * d + 4 * L * d * f)
    attention = c.num_layers * (4 * L * L * d + 4 * L * n * d)
    rows = L if per_token_time else 1
    time_mlp = 2 * rows * (c.freq_dim * d + d * d + 6 * d * d)
    other = 2 * n * (c.text_dim * d + d * d) + 2 * L * d * (c.in_dim * 4 + c.out_dim * 4)  # text MLP, patch, head
    parts = {"linear": linear, "attention": attention, "time_mlp": time_mlp, "other": other}
    parts = {k: float(v * batch) for k, v in parts.items()}
    parts["total"] = sum(parts.values())
    return parts


def causal_eval_flops(c: CausalWanConfig, query_frames: int, key_frames: int,
                      cross_kv_cached: bool = True) -> dict[str, float]:
    """One Matrix-Game-2 DiT eval: `query_frames` new latent frames attending to `key_frames` cached+new frames.
    The cross-attention K/V over the CLIP tokens are computed on a video's first eval only (cached after)."""
    s = c.frame_seq_length
    L, Lk, d, f, n = query_frames * s, key_frames * s, c.dim, c.ffn_dim, c.clip_tokens
    a = c.action
    cross_kv = 0 if cross_kv_cached else 4 * n * d * d
    linear = c.num_layers * (8 * L * d * d + 4 * L * d * d + cross_kv + 4 * L * d * f)
    attention = c.num_layers * (4 * L * Lk * d + 4 * L * n * d)
    # action module per action block: mouse MLP, t_qkv, proj_mouse; keyboard q, kv (tiny), proj_keyboard
    window = min(key_frames, c.local_attn_size)
    hm, hk = a.mouse_hidden_dim, a.keyboard_hidden_dim
    mouse = 0.0
    if a.enable_mouse:
        win = a.mouse_dim_in * a.vae_time_compression_ratio * a.windows_size
        mouse = (2 * L * ((d + win) * hm + hm * hm + hm * 3 * hm + hm * d) + 4 * L * window * hm)
    keyboard = 2 * L * (d * hk + hk * d) + 4 * L * window * hk
    action = len(a.blocks) * (mouse + keyboard)
    parts = {"linear": float(linear), "attention": float(attention), "action": float(action)}
    parts["total"] = sum(parts.values())
    return parts


def kernel_floor_s(flops: dict[str, float], gemm_tflops: float, attention_tflops: float) -> float:
    """Attention FLOPs at the attention ceiling plus everything else at the GEMM ceiling."""
    rest = flops["total"] - flops["attention"]
    return flops["attention"] / (attention_tflops * 1e12) + rest / (gemm_tflops * 1e12)
