"""ActionModule: Matrix-Game-2's mouse and keyboard conditioning (`wan/modules/action_module.py`), inference path.

Read top to bottom: the action windows, the temporal RoPE, the weightless norm, the module. What upstream computes
and pays is kept on purpose:
  - raw per-video-frame actions are grouped into one window of 12 per latent frame, ending one video frame before
    the latent frame's last one; the windows are cut as a Python list of slices and stacked;
  - mouse: per spatial location, an MLP over [hidden state ‖ its frame's window], then temporal self-attention over
    at most local_attn_size frames through the mouse cache (one K/V row per location);
  - keyboard: embedded windows give one K/V token per latent frame; every video token's query attends to the cached
    frames, which are `.repeat`-ed to every location on every call;
  - q/k RMSNorms whose weights are in the checkpoint but never applied, computed in the activation dtype;
  - temporal RoPE with theta 256 from a float32 table built on the device: only the first 8 of 64 channels turn;
  - attention through `flash_attn_func` (batched, no packing): `layers.attention` here (SDPA flash by default).
The caches (see causal.py) are passed in; this module only calls their `attend`.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.profiler import record_function

from ..configs import ActionConfig
from .layers import attention

# Upstream's action RoPE table length (get_rotary_pos_embed(7500, ...)): the most latent frames it can place.
ACTION_ROPE_FRAMES = 7500


def action_windows(actions: torch.Tensor, start_frame: int, num_frames: int, stride: int = 4, window: int = 12,
                   embed: nn.Module | None = None) -> torch.Tensor:
    """Raw actions [B, Nf, C] -> one window per latent frame [B, num_frames, window, C'] (C' = C, or embed's width).

    Latent frame i (absolute) reads actions [stride·i − window, stride·i − 1]; indices below 0 read action 0.
    Upstream's cached path, step by step: prepend `window` copies of action 0, drop the first stride·start_frame
    rows, embed what is left (keyboard), then cut one slice per frame and stack them.
    """
    padded = torch.cat([actions[:, :1].expand(-1, window, -1), actions], dim=1)[:, stride * start_frame:]
    if embed is not None:
        padded = embed(padded)
    return torch.stack([padded[:, stride * i:stride * i + window] for i in range(num_frames)], dim=1)


def action_rope_table(head_dim: int, dim_list, theta: float, device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [7500, head_dim] in float32, each angle repeated for its pair of channels.

    Upstream builds a 3-D table (time, h, w) over a grid of 7500 x 1 x 1 positions: the h and w axes only ever see
    position 0 (angle 0), so only the first dim_list[0] channels turn, at frequencies theta^(-2j/dim_list[0]).
    """
    frames = torch.arange(ACTION_ROPE_FRAMES, device=device).float()
    angles = []
    for axis, dim in enumerate(dim_list):
        inv_freq = 1.0 / theta ** (torch.arange(0, dim, 2, device=device)[: dim // 2].float() / dim)
        angles.append(torch.outer(frames if axis == 0 else torch.zeros_like(frames), inv_freq))
    angles = torch.cat(angles, dim=1)
    return angles.cos().repeat_interleave(2, dim=1), angles.sin().repeat_interleave(2, dim=1)


def apply_action_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, start_frame: int) -> torch.Tensor:
    """x [B, T, heads, head_dim] at absolute frames start_frame.. ; x·cos + rotate(x)·sin in float32, where rotate
    turns each interleaved pair (a, b) into (−b, a). Returns x's dtype."""
    t = x.size(1)
    cos = cos[start_frame:start_frame + t].view(1, t, 1, -1)
    sin = sin[start_frame:start_frame + t].view(1, t, 1, -1)
    a, b = x.float().reshape(*x.shape[:-1], -1, 2).unbind(-1)
    rotated = torch.stack([-b, a], dim=-1).flatten(3)
    return (x.float() * cos + rotated * sin).type_as(x)


class WeightlessRMSNorm(nn.Module):
    """The action module's own RMSNorm: it has a weight (the checkpoint holds it) that forward never applies, and it
    computes in the input dtype, without the float32 upcast of the backbone's WanRMSNorm."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))  # loaded, never used

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps)


def _locations_to_tokens(x: torch.Tensor, batch: int) -> torch.Tensor:
    """[B·S, T, heads, head_dim] (one row per spatial location) -> [B, T·S, heads·head_dim] (frame-major tokens)."""
    s, t = x.size(0) // batch, x.size(1)
    return x.reshape(batch, s, t, -1).transpose(1, 2).reshape(batch, t * s, -1)


class ActionModule(nn.Module):
    """`x = ActionModule(x, grid, mouse, keyboard, start_frame, mouse_cache, keyboard_cache)`: adds the mouse
    residual, then the keyboard residual (no gate).

    x: [1, T·S, dim] tokens of T latent frames starting at absolute frame start_frame; mouse [1, Nf, mouse_dim_in]
    (None without a mouse branch) and keyboard [1, Nf, keyboard_dim_in] with Nf = 1 + 4·(start_frame + T − 1), all the
    actions from video frame 0 to the end of the block (the model checks this). The caches' length (local_attn_size
    frames) is the attention window.
    """

    def __init__(self, config: ActionConfig):
        super().__init__()
        c = self.config = config
        self.heads = c.heads_num
        self.stride, self.window = c.vae_time_compression_ratio, c.vae_time_compression_ratio * c.windows_size
        self.keyboard_embed = nn.Sequential(nn.Linear(c.keyboard_dim_in, c.hidden_size), nn.SiLU(),
                                            nn.Linear(c.hidden_size, c.hidden_size))
        if c.enable_mouse:
            h = c.mouse_hidden_dim
            self.mouse_mlp = nn.Sequential(nn.Linear(c.mouse_dim_in * self.window + c.img_hidden_size, h),
                                           nn.GELU(approximate="tanh"), nn.Linear(h, h), nn.LayerNorm(h))
            self.t_qkv = nn.Linear(h, 3 * h, bias=c.qkv_bias)
            self.img_attn_q_norm = WeightlessRMSNorm(h // c.heads_num)
            self.img_attn_k_norm = WeightlessRMSNorm(h // c.heads_num)
            self.proj_mouse = nn.Linear(h, c.img_hidden_size, bias=c.qkv_bias)
        h = c.keyboard_hidden_dim
        self.key_attn_q_norm = WeightlessRMSNorm(h // c.heads_num)
        self.key_attn_k_norm = WeightlessRMSNorm(h // c.heads_num)
        self.mouse_attn_q = nn.Linear(c.img_hidden_size, h, bias=c.qkv_bias)  # upstream's name: the keyboard query
        self.keyboard_attn_kv = nn.Linear(c.hidden_size * self.window, 2 * h, bias=c.qkv_bias)
        self.proj_keyboard = nn.Linear(h, c.img_hidden_size, bias=c.qkv_bias)
        # upstream builds one table from mouse_qk_dim_list and uses it for the mouse and the keyboard heads alike
        self.rope_head_dim = c.keyboard_hidden_dim // c.heads_num
        head_dims = {self.rope_head_dim} | ({c.mouse_hidden_dim // c.heads_num} if c.enable_mouse else set())
        if len(head_dims) != 1 or sum(c.mouse_qk_dim_list) != self.rope_head_dim:
            raise ValueError(f"the action RoPE split {list(c.mouse_qk_dim_list)} must sum to the action head_dim, and "
                             f"the mouse and keyboard head_dims must agree; got {sorted(head_dims)}")
        self.rope = None  # (cos, sin), built on the device at the first call, as upstream builds it on the GPU
        self.attn_backend = "flash"

    def forward(self, x, grid, mouse, keyboard, start_frame: int, mouse_cache, keyboard_cache) -> torch.Tensor:
        if self.rope is None or self.rope[0].device != x.device:
            self.rope = action_rope_table(self.rope_head_dim, self.config.mouse_qk_dim_list, self.config.rope_theta,
                                          x.device)
        if self.config.enable_mouse:
            with record_function("mouse"):
                x = x + self.mouse(x, grid, mouse, start_frame, mouse_cache)
        with record_function("keyboard"):
            return x + self.keyboard(x, grid, keyboard, start_frame, keyboard_cache)

    def mouse(self, x, grid, mouse, start_frame, cache):
        b, (t, h, w), c = x.size(0), grid, x.size(2)
        s = h * w
        hidden = x.view(b, t, s, c).transpose(1, 2).reshape(b * s, t, c)  # one row of T frames per location
        windows = action_windows(mouse, start_frame, t, self.stride, self.window).flatten(2)  # [B, T, 12·2] time-major
        windows = windows[:, None].expand(b, s, t, windows.size(2)).reshape(b * s, t, -1)
        qkv = self.t_qkv(self.mouse_mlp(torch.cat([hidden, windows], dim=-1)))
        q, k, v = qkv.view(b * s, t, 3, self.heads, -1).unbind(2)
        q = apply_action_rope(self.img_attn_q_norm(q), *self.rope, start_frame)
        k = apply_action_rope(self.img_attn_k_norm(k), *self.rope, start_frame)
        out = cache.attend(q, k, v, start_frame, lambda q, k, v: attention(q, k, v, self.attn_backend))
        return self.proj_mouse(_locations_to_tokens(out, b))

    def keyboard(self, x, grid, keyboard, start_frame, cache):
        b, (t, h, w) = x.size(0), grid
        s = h * w
        windows = action_windows(keyboard, start_frame, t, self.stride, self.window, self.keyboard_embed).flatten(2)
        q = self.mouse_attn_q(x).view(b, t * s, self.heads, -1)
        k, v = self.keyboard_attn_kv(windows).view(b, t, 2, self.heads, -1).unbind(2)  # one token per frame
        q, k = self.key_attn_q_norm(q), self.key_attn_k_norm(k)
        q = q.view(b, t, s, self.heads, -1).transpose(1, 2).reshape(b * s, t, self.heads, -1)
        q = apply_action_rope(q, *self.rope, start_frame)
        k = apply_action_rope(k, *self.rope, start_frame)

        def every_location(q, k, v):  # the cached frames, materialized for every location (batch 1)
            return attention(q, k.repeat(s, 1, 1, 1), v.repeat(s, 1, 1, 1), self.attn_backend)

        return self.proj_keyboard(_locations_to_tokens(cache.attend(q, k, v, start_frame, every_location), b))


__all__ = ["ActionModule", "WeightlessRMSNorm", "action_windows", "action_rope_table", "apply_action_rope"]
