"""CausalWanModel (Matrix-Game-2): layout and sizes, shapes at real geometry, the KV-cached block against an
independent cache-free reference, action windows, input errors."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from wanopt.configs import MG2_GTA, MG2_TEMPLERUN, MG2_TINY, MG2_UNIVERSAL
from wanopt.measure import rel_l2
from wanopt.models import CausalWanModel, KVCache
from wanopt.models.action import action_windows
from wanopt.models.layers import set_compute_dtype
from wanopt.weights import build_causal


def tiny(**changes):
    """MG2_TINY with changes; `action={...}` changes fields of its ActionConfig."""
    action = dataclasses.replace(MG2_TINY.action, **changes.pop("action", {}))
    return dataclasses.replace(MG2_TINY, action=action, **changes)


TINY_GTA = tiny(name="mg2-tiny-gta", local_attn_size=4, action=dict(keyboard_dim_in=2))
TINY_TEMPLERUN = tiny(name="mg2-tiny-templerun", action=dict(enable_mouse=False, keyboard_dim_in=7),
                      denoising_step_list=(1000, 750, 500, 250))
# real latent geometry (44x80 -> 880 tokens per frame, 257x1280 CLIP tokens), tiny width and depth
REAL_GEOMETRY = tiny(name="mg2-real-geometry", latent_hw=(44, 80), clip_dim=1280, clip_tokens=257)


def fp32_causal(config, seed=0):
    """Everything in float32, attention included (no cast to bf16 before the kernel): the reference setting."""
    return set_compute_dtype(build_causal(config, dtype=torch.float32, seed=seed), None)


def num_actions(start_frame, frames=3):
    return 1 + 4 * (start_frame + frames - 1)


def video_inputs(config, num_frames, dtype=torch.float32, seed=0):
    """Latents, conditioning and actions of a whole video of num_frames latent frames."""
    g = torch.Generator().manual_seed(seed)
    c, (h, w) = config, config.latent_hw
    nf = num_actions(0, num_frames)

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(dtype)

    mouse = randn(1, nf, c.action.mouse_dim_in) if c.action.enable_mouse else None
    keyboard = torch.randint(0, 2, (1, nf, c.action.keyboard_dim_in), generator=g).to(dtype)
    return (randn(1, c.out_dim, num_frames, h, w), randn(1, c.clip_tokens, c.clip_dim),
            randn(1, c.in_dim - c.out_dim, num_frames, h, w), mouse, keyboard)


# ---------------------------------------------------------------------------------------------------------------
# Layout and sizes


def released_layout(config):
    """Key -> shape of a released distilled checkpoint, written out from spec matrix_game2.md §6.3."""
    k = config.action.keyboard_dim_in
    keys = {
        "patch_embedding.weight": (1536, 36, 1, 2, 2), "patch_embedding.bias": (1536,),
        "time_embedding.0.weight": (1536, 256), "time_embedding.0.bias": (1536,),
        "time_embedding.2.weight": (1536, 1536), "time_embedding.2.bias": (1536,),
        "time_projection.1.weight": (9216, 1536), "time_projection.1.bias": (9216,),
        "img_emb.proj.0.weight": (1280,), "img_emb.proj.0.bias": (1280,),
        "img_emb.proj.1.weight": (1280, 1280), "img_emb.proj.1.bias": (1280,),
        "img_emb.proj.3.weight": (1536, 1280), "img_emb.proj.3.bias": (1536,),
        "img_emb.proj.4.weight": (1536,), "img_emb.proj.4.bias": (1536,),
        "head.modulation": (1, 2, 1536), "head.head.weight": (64, 1536), "head.head.bias": (64,),
    }
    for layer in range(30):
        p = f"blocks.{layer}."
        keys[p + "modulation"] = (1, 6, 1536)
        keys[p + "norm3.weight"] = keys[p + "norm3.bias"] = (1536,)
        for attn in ("self_attn", "cross_attn"):
            for lin in "qkvo":
                keys[f"{p}{attn}.{lin}.weight"], keys[f"{p}{attn}.{lin}.bias"] = (1536, 1536), (1536,)
            keys[f"{p}{attn}.norm_q.weight"] = keys[f"{p}{attn}.norm_k.weight"] = (1536,)
        keys.update({p + "ffn.0.weight": (8960, 1536), p + "ffn.0.bias": (8960,), p + "ffn.2.weight": (1536, 8960),
                     p + "ffn.2.bias": (1536,)})
    for layer in range(15):
        p = f"blocks.{layer}.action_model."
        keys.update({p + "keyboard_embed.0.weight": (128, k), p + "keyboard_embed.0.bias": (128,),
                     p + "keyboard_embed.2.weight": (128, 128), p + "keyboard_embed.2.bias": (128,),
                     p + "mouse_attn_q.weight": (1024, 1536), p + "keyboard_attn_kv.weight": (2048, 1536),
                     p + "proj_keyboard.weight": (1536, 1024), p + "key_attn_q_norm.weight": (64,),
                     p + "key_attn_k_norm.weight": (64,)})
        if config.action.enable_mouse:
            keys.update({p + "mouse_mlp.0.weight": (1024, 1560), p + "mouse_mlp.0.bias": (1024,),
                         p + "mouse_mlp.2.weight": (1024, 1024), p + "mouse_mlp.2.bias": (1024,),
                         p + "mouse_mlp.3.weight": (1024,), p + "mouse_mlp.3.bias": (1024,),
                         p + "t_qkv.weight": (3072, 1024), p + "proj_mouse.weight": (1536, 1024),
                         p + "img_attn_q_norm.weight": (64,), p + "img_attn_k_norm.weight": (64,)})
    return keys


@pytest.mark.parametrize("config", [MG2_UNIVERSAL, MG2_GTA, MG2_TEMPLERUN], ids=lambda c: c.name)
def test_parameter_names_and_shapes_are_the_released_layout(config):
    with torch.device("meta"):
        model = CausalWanModel(config)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == released_layout(config)  # no norm1/norm2/head.norm, dead action norm weights present


def test_parameter_counts_match_the_spec():
    """Spec §1.4 / §6.2: 1,619,242,304 (universal, = 6.477 GB fp32) and 1,508,715,584 (templerun)."""
    with torch.device("meta"):
        counts = {c.name: sum(p.numel() for p in CausalWanModel(c).parameters()) for c in (MG2_UNIVERSAL,
                                                                                           MG2_TEMPLERUN)}
    assert counts == {"mg2-universal": 1_619_242_304, "mg2-templerun": 1_508_715_584}


# ---------------------------------------------------------------------------------------------------------------
# One call at real geometry


def test_block0_at_real_geometry_has_the_original_shapes():
    """The original test suite's block-0 call: x [1,16,3,44,80], t [1,3], CLIP [1,257,1280], mouse [1,9,2],
    keyboard [1,9,4]; bf16 in, bf16 velocity out; the caches hold 2640 tokens / 3 frames after it."""
    config = REAL_GEOMETRY
    model = build_causal(config, dtype=torch.bfloat16, seed=0)
    cache = KVCache(config, dtype=torch.bfloat16)
    x, ctx, cond, mouse, keyboard = video_inputs(config, 3, torch.bfloat16)
    assert (x.shape, ctx.shape, mouse.shape, keyboard.shape) == ((1, 16, 3, 44, 80), (1, 257, 1280), (1, 9, 2),
                                                                  (1, 9, 4))
    t = torch.full((1, 3), 1000.0)
    with torch.no_grad():
        v = model(x, t, ctx, cond, mouse, keyboard, cache=cache, current_start=0)
    assert v.shape == (1, 16, 3, 44, 80) and v.dtype == torch.bfloat16
    assert torch.isfinite(v.float()).all() and v.float().std() > 0.1  # random weights at scale: a real signal
    layer = cache.layers[0]
    assert (layer.self_attn.local_end.item(), layer.mouse.local_end.item(), layer.keyboard.local_end.item()) == (
        3 * 880, 3, 3)
    assert layer.self_attn.k.shape == (1, 6 * 880, config.num_heads, config.head_dim) and layer.cross_attn.is_init


# ---------------------------------------------------------------------------------------------------------------
# The cached block against an independent, cache-free reference


def rotate_pairs(x, angles):
    """Turn each interleaved pair (x[2j], x[2j+1]) by angles[..., j] (broadcast over heads), in float64."""
    x = x.double()
    even, odd = x[..., 0::2], x[..., 1::2]
    cos, sin = angles.cos(), angles.sin()
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], -1).flatten(-2).float()


def reference_velocity(model, x, t, ctx, cond, mouse, keyboard, window=None):
    """The whole video in one pass, no cache: attention masked block-causally with the local window (a frame of
    block b sees the frames in [end_b − W, end_b), end_b the end of its block), per-frame timesteps t [N].
    W = window, default the config's local_attn_size.

    Written from the spec, not from the model's code: only the weights (the model's linears) are shared.
    """
    c, a = model.config, model.config.action
    n, (h, w) = x.size(2), c.latent_hw
    hp, wp = h // 2, w // 2
    s, dim, heads, hd = hp * wp, c.dim, c.num_heads, c.head_dim
    frame = torch.arange(n).repeat_interleave(s)
    end = (torch.arange(n) // c.num_frame_per_block + 1) * c.num_frame_per_block
    window = window or c.local_attn_size
    sees = (torch.arange(n)[None] < end[:, None]) & (torch.arange(n)[None] >= end[:, None] - window)

    def ln(v, mod=None, eps=c.eps):
        return F.layer_norm(v, v.shape[-1:], None if mod is None else mod.weight, None if mod is None else mod.bias,
                            eps)

    def rms(v, weight=None, eps=c.eps):
        v = v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + eps)
        return v if weight is None else v * weight

    def attend(q, k, v, mask=None):  # [..., L, heads, d]
        return F.scaled_dot_product_attention(q.transpose(-3, -2), k.transpose(-3, -2), v.transpose(-3, -2),
                                              attn_mask=mask).transpose(-3, -2)

    # backbone RoPE: pairs split time / height / width, each its own ladder 10000^(-2j/width)
    pairs_hw = (hd // 2) // 3
    pairs_t = hd // 2 - 2 * pairs_hw
    ladder = [10000.0 ** (-torch.arange(p, dtype=torch.float64) * 2 / (2 * p)) for p in (pairs_t, pairs_hw, pairs_hw)]
    rows, cols = torch.arange(s) // wp, torch.arange(s) % wp
    angles = torch.cat([frame[:, None] * ladder[0], rows.repeat(n)[:, None] * ladder[1],
                        cols.repeat(n)[:, None] * ladder[2]], 1)[:, None]  # [L, 1, hd/2]
    # action RoPE: only the first rope_dim_list[0] channels turn, by frame, ladder theta^(-2j/d0)
    d0, ahd = a.mouse_qk_dim_list[0], a.keyboard_hidden_dim // a.heads_num
    action_ladder = torch.zeros(ahd // 2, dtype=torch.float64)
    action_ladder[:d0 // 2] = a.rope_theta ** (-torch.arange(d0 // 2, dtype=torch.float64) * 2 / d0)

    def action_rope(v, frames):  # v [..., T, heads, d], frames [T]
        return rotate_pairs(v, (frames[:, None].double() * action_ladder)[:, None])

    half = c.freq_dim // 2
    arg = t.double()[:, None] * 10000.0 ** (-torch.arange(half, dtype=torch.float64) / half)
    e = model.time_embedding(torch.cat([arg.cos(), arg.sin()], 1).float())  # [N, dim], cos first
    e0 = model.time_projection(e).view(n, 6, dim)
    context = model.img_emb(ctx)[0]
    xs = model.patch_embedding(torch.cat([x, cond], 1)).flatten(2)[0].T  # [L, dim], frame-major
    # windows of raw actions: latent frame i reads actions 4i-12 .. 4i-1, clamped at 0 (spec §3.7)
    window_idx = (4 * torch.arange(n)[:, None] - 12 + torch.arange(12)).clamp(min=0)

    for block in model.blocks:
        shift, scale, gate, shift2, scale2, gate2 = (block.modulation[0] + e0)[frame].unbind(1)
        sa = block.self_attn
        hmod = ln(xs) * (1 + scale) + shift
        q = rms(sa.q(hmod), sa.norm_q.weight).view(-1, heads, hd)
        k = rms(sa.k(hmod), sa.norm_k.weight).view(-1, heads, hd)
        out = attend(rotate_pairs(q, angles), rotate_pairs(k, angles), sa.v(hmod).view(-1, heads, hd),
                     sees[frame][:, frame])
        xs = xs + sa.o(out.flatten(1)) * gate
        ca = block.cross_attn
        q = rms(ca.q(ln(xs, block.norm3)), ca.norm_q.weight).view(-1, heads, hd)
        k = rms(ca.k(context), ca.norm_k.weight).view(-1, heads, hd)
        xs = xs + ca.o(attend(q, k, ca.v(context).view(-1, heads, hd)).flatten(1))
        am = block.action_model
        if am is not None:
            if a.enable_mouse:  # temporal attention per location, over the visible frames
                hs = xs.view(n, s, dim).transpose(0, 1)
                win = mouse[0][window_idx].flatten(1)  # [N, 12·2], time-major
                qkv = am.t_qkv(am.mouse_mlp(torch.cat([hs, win[None].expand(s, -1, -1)], -1)))
                q, k, v = qkv.view(s, n, 3, a.heads_num, -1).unbind(2)
                q, k = action_rope(rms(q, eps=1e-6), torch.arange(n)), action_rope(rms(k, eps=1e-6), torch.arange(n))
                out = attend(q, k, v, sees)  # [S, N, heads, d]
                xs = xs + am.proj_mouse(out.flatten(2).transpose(0, 1).reshape(n * s, -1))
            kb = am.keyboard_embed(keyboard[0])[window_idx].flatten(1)  # [N, 12·hidden]
            k, v = am.keyboard_attn_kv(kb).view(n, 2, a.heads_num, -1).unbind(1)
            q = action_rope(rms(am.mouse_attn_q(xs).view(n * s, a.heads_num, -1), eps=1e-6), frame)
            k = action_rope(rms(k, eps=1e-6), torch.arange(n))
            xs = xs + am.proj_keyboard(attend(q, k, v, sees[frame]).flatten(1))
        xs = xs + block.ffn(ln(xs) * (1 + scale2) + shift2) * gate2
    shift, scale = (model.head.modulation[0] + e[:, None])[frame].unbind(1)
    out = model.head.head(ln(xs) * (1 + scale) + shift)  # [L, 2·2·16]
    return out.view(n, hp, wp, 2, 2, c.out_dim).permute(5, 0, 1, 3, 2, 4).reshape(1, c.out_dim, n, h, w)


@pytest.mark.parametrize("config", [MG2_TINY, TINY_GTA], ids=["window6", "window4"])
def test_cached_block_equals_the_block_causal_reference(config):
    """Blocks 0 and 1 go through the cache as the pipeline runs them (a noisy eval, then the t=0 refresh that must
    overwrite it); block 2 is one noisy eval. Its velocity must equal the cache-free pass over the 9 clean+noisy
    frames with a block-causal, locally windowed mask: eviction (window 4 drops frames 0-4, window 6 drops 0-2),
    absolute RoPE positions, action windows and per-frame timesteps all enter.

    Tolerance 1e-5 relative L2: both sides are float32 on the CPU and differ only in summation order (windowed
    vs masked softmax, complex vs real RoPE): about 1e-7 here. A wrong frame, offset or window gives > 1e-2.
    """
    model = fp32_causal(config, seed=1)
    cache = KVCache(config, dtype=torch.float32)
    x, ctx, cond, mouse, keyboard = video_inputs(config, 9, seed=2)
    noisy_t = torch.tensor([1000.0, 908.84, 713.98])
    with torch.no_grad():
        for b in range(3):
            s = 3 * b
            nf = num_actions(s)
            block = dict(visual_context=ctx, cond_concat=cond[:, :, s:s + 3], keyboard_cond=keyboard[:, :nf],
                         mouse_cond=mouse[:, :nf], cache=cache, current_start=s * config.frame_seq_length)
            if b < 2:  # a noisy eval on other latents, then the clean refresh over the same slots
                model(torch.randn_like(x[:, :, s:s + 3]), noisy_t[None, b].expand(1, 3), **block)
                model(x[:, :, s:s + 3], torch.zeros(1, 3), **block)
            else:
                cached = model(x[:, :, s:s + 3], noisy_t[None, 1].expand(1, 3), **block)
        t = torch.cat([torch.zeros(6), noisy_t[1].expand(3)])
        reference = reference_velocity(model, x, t, ctx, cond, mouse, keyboard)
    assert rel_l2(cached, reference[:, :, 6:]) < 1e-5
    # the reference is not blind to the window: seeing every earlier frame gives another answer
    wide = reference_velocity(model, x, t, ctx, cond, mouse, keyboard, window=9)
    assert rel_l2(wide[:, :, 6:], reference[:, :, 6:]) > 1e-2


def test_each_latent_frame_is_modulated_by_its_own_timestep():
    """t is [1, F]: three different timesteps in one block give each frame its own adaLN (spec §3.2, §7.1).
    Tolerance as above (float32 both sides); a model broadcasting one timestep per block gives > 1e-2."""
    model = fp32_causal(MG2_TINY, seed=3)
    x, ctx, cond, mouse, keyboard = video_inputs(MG2_TINY, 3, seed=4)
    t = torch.tensor([[1000.0, 500.0, 0.0]])
    with torch.no_grad():
        cached = model(x, t, ctx, cond, mouse, keyboard, cache=KVCache(MG2_TINY, dtype=torch.float32))
        reference = reference_velocity(model, x, t[0], ctx, cond, mouse, keyboard)
        one_t = reference_velocity(model, x, t[0, :1].expand(3), ctx, cond, mouse, keyboard)
    assert rel_l2(cached, reference) < 1e-5
    assert rel_l2(one_t, reference) > 1e-2


def test_action_weights_of_the_qk_norms_are_loaded_but_never_applied():
    """Spec §3.7: the action RMSNorms own weights that forward ignores; the backbone's q norm weight matters."""
    model = build_causal(MG2_TINY, dtype=torch.float32, seed=0)
    x, ctx, cond, mouse, keyboard = video_inputs(MG2_TINY, 3)

    def run():
        with torch.no_grad():
            return model(x, torch.full((1, 3), 500.0), ctx, cond, mouse, keyboard,
                         cache=KVCache(MG2_TINY, dtype=torch.float32))

    before = run()
    action = model.blocks[0].action_model
    with torch.no_grad():
        for norm in (action.img_attn_q_norm, action.img_attn_k_norm, action.key_attn_q_norm, action.key_attn_k_norm):
            norm.weight.mul_(3.0)
    assert torch.equal(run(), before)
    with torch.no_grad():
        model.blocks[0].self_attn.norm_q.weight.mul_(3.0)
    assert not torch.allclose(run(), before)


# ---------------------------------------------------------------------------------------------------------------
# Action windows


@pytest.mark.parametrize("start_frame", [0, 1, 3, 6])
def test_action_windows_follow_the_index_rule(start_frame):
    """Spec §3.7: latent frame i gets raw actions [4i−12, 4i−1], indices below 0 clamped to action 0; the newest
    action (the block's last video frame) is never read."""
    nf = num_actions(start_frame)
    actions = torch.randn(1, nf, 2)
    windows = action_windows(actions, start_frame, 3)
    frames = start_frame + torch.arange(3)
    idx = (4 * frames[:, None] - 12 + torch.arange(12)).clamp(min=0)
    assert windows.shape == (1, 3, 12, 2)
    torch.testing.assert_close(windows, actions[:, idx], rtol=0, atol=0)
    assert idx.max() == nf - 2
    if start_frame == 0:  # frame 0: twelve copies of a0; frame 1: a0 nine times, then a1..a3
        assert (idx[0] == 0).all() and idx[1].tolist() == [0] * 9 + [1, 2, 3]


# ---------------------------------------------------------------------------------------------------------------
# Errors


@pytest.fixture(scope="module")
def tiny_models():
    return {c.name: build_causal(c, dtype=torch.float32) for c in (MG2_TINY, TINY_TEMPLERUN)}


def call(model, start_frame=0, **changes):
    config = model.config
    x, ctx, cond, mouse, keyboard = video_inputs(config, 3)
    nf = num_actions(start_frame)
    args = dict(x=x, t=torch.zeros(1, 3), visual_context=ctx, cond_concat=cond,
                mouse_cond=None if mouse is None else torch.randn(1, nf, 2),
                keyboard_cond=torch.randn(1, nf, config.action.keyboard_dim_in),
                cache=KVCache(config, dtype=torch.float32), current_start=start_frame * config.frame_seq_length)
    args.update(changes)
    with torch.no_grad():
        return model(**args)


@pytest.mark.parametrize("start_frame, given", [(0, 13), (0, 8), (3, 9), (3, 37)])
def test_wrong_action_count_names_the_expected_count_and_the_fix(tiny_models, start_frame, given):
    model = tiny_models["mg2-tiny"]
    expected = num_actions(start_frame)
    with pytest.raises(ValueError, match=rf"has {given} actions; .* needs exactly .* = {expected}.*\[:, :{expected}\]"):
        call(model, start_frame, mouse_cond=torch.randn(1, given, 2))
    call(model, start_frame)  # the right count runs


@pytest.mark.parametrize("name, changes, message", [
    ("mg2-tiny", dict(x=torch.randn(1, 16, 3, 8, 10)), r"latent_hw=\(8, 12\)"),
    ("mg2-tiny", dict(x=torch.randn(2, 16, 3, 8, 12)), "batch 1"),
    ("mg2-tiny", dict(x=torch.randn(1, 16, 2, 8, 12)), "num_frame_per_block=3"),
    ("mg2-tiny", dict(t=torch.zeros(1)), r"one timestep per latent frame, \[1, 3\]"),
    ("mg2-tiny", dict(cond_concat=torch.randn(1, 16, 3, 8, 12)), r"mask ‖ image latent \[1, 20, 3, 8, 12\]"),
    ("mg2-tiny", dict(visual_context=torch.randn(1, 257, 32)), r"CLIP tokens \[1, 9, 32\]"),
    ("mg2-tiny", dict(mouse_cond=torch.randn(1, 9, 3)), r"mouse_cond must be \[1, Nf, 2\]"),
    ("mg2-tiny", dict(keyboard_cond=torch.randn(1, 9, 7)), r"keyboard_cond must be \[1, Nf, 4\]"),
    ("mg2-tiny", dict(mouse_cond=None), r"needs mouse_cond \[1, 9, 2\]"),
    ("mg2-tiny", dict(current_start=5), "current_start must be the block's first token"),
    ("mg2-tiny", dict(cache=None), "KV-cached inference path only"),
    ("mg2-tiny-templerun", dict(mouse_cond=torch.randn(1, 9, 2)), "no mouse branch.*mouse_cond=None"),
])
def test_bad_inputs_name_the_problem_and_the_fix(tiny_models, name, changes, message):
    with pytest.raises(ValueError, match=message):
        call(tiny_models[name], **changes)


def test_attention_backend_is_settable_and_validated():
    model = build_causal(MG2_TINY, dtype=torch.float32)
    with pytest.raises(ValueError, match="choose from"):
        model.set_attention_backend("fa3")
    model.set_attention_backend("flex")
    backends = {m.attn_backend for m in model.modules() if hasattr(m, "attn_backend")}
    assert backends == {"flex"} and model.blocks[0].action_model.attn_backend == "flex"


def test_head_dims_must_fit_the_rope_split():
    with pytest.raises(ValueError, match="must sum to the action head_dim"):
        CausalWanModel(tiny(action=dict(mouse_qk_dim_list=(8, 8, 8))))
    assert math.prod(REAL_GEOMETRY.latent_hw) // 4 == REAL_GEOMETRY.frame_seq_length == 880
