"""WanModel: shapes, the official dtype map, RoPE, parity with diffusers, and clear errors on bad input."""

import dataclasses

import pytest
import torch

from conftest import HD128, diffusers_twin, fp32_model
from wanopt.configs import get_config
from wanopt.models.layers import rope_apply, rope_split, rope_table
from wanopt.measure import rel_l2
from wanopt.weights import build_wan

TINY = get_config("tiny").dit
TINY21 = get_config("tiny-2.1").dit


def inputs(config, b=1, f=3, h=8, w=12, ctx_len=7):
    return (torch.randn(b, config.in_dim, f, h, w), torch.tensor([999, 500][:b] if b <= 2 else [999] * b),
            torch.randn(b, ctx_len, config.text_dim))


def record(model, **names):
    """Output dtype and shape of named submodules on the next forward."""
    seen = {}
    for label, name in names.items():
        def hook(module, args, out, label=label):
            seen.setdefault(label, out.dtype)
            seen.setdefault(label + ".shape", tuple(out.shape))
        model.get_submodule(name).register_forward_hook(hook)
    return seen


@pytest.mark.parametrize("config", [TINY, TINY21], ids=["wan2.2", "wan2.1"])
def test_forward_shape_dtype_and_finite(config):
    model = build_wan(config, dtype=torch.bfloat16, seed=0)
    x, t, ctx = inputs(config, b=2)
    out = model(x, t, ctx)
    assert out.shape == (2, config.out_dim, 3, 8, 12)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert out.std() > 0.1  # random weights at scale give a real signal, not zeros


def test_residual_stream_turns_float32_at_first_gated_add_and_time_is_per_token_in_wan22():
    model = build_wan(TINY, dtype=torch.bfloat16, seed=0)
    seen = record(model, patch="patch_embedding", block0="blocks.0", e0="time_projection",
                  q="blocks.0.self_attn.q", head="head.head")
    x, t, ctx = inputs(TINY)
    model(x, t, ctx)
    tokens = 3 * 4 * 6
    assert seen["patch"] == torch.bfloat16  # conv under bf16 autocast
    assert seen["q"] == torch.bfloat16  # bf16 linears outside the islands
    assert seen["block0"] == torch.float32  # fp32 residual after the first gated add
    assert seen["e0"] == torch.float32 and seen["e0.shape"] == (1, tokens, 6 * TINY.dim)  # per token, fp32 island
    assert seen["head"] == torch.float32


def test_wan21_embeds_time_once_per_sample():
    model = build_wan(TINY21, dtype=torch.bfloat16, seed=0)
    seen = record(model, e0="time_projection")
    model(*inputs(TINY21))
    assert seen["e0.shape"] == (1, 1, 6 * TINY21.dim)


def test_per_token_and_per_sample_time_give_the_same_velocity():
    """Upstream PR #244: Wan 2.2's per-token embedding of a scalar t is Wan 2.1's row repeated (fp32: ~1e-7)."""
    model = fp32_model(TINY)
    x, t, ctx = inputs(TINY)
    per_token = model(x, t, ctx)
    model.per_token_time = False
    per_sample = model(x, t, ctx)
    explicit = model(x, t[:, None].expand(1, 3 * 4 * 6).contiguous(), ctx)
    assert rel_l2(per_sample, per_token) < 1e-6
    assert rel_l2(explicit, per_token) < 1e-6


def test_rope_table_uses_three_ladders_44_42_42():
    table = rope_table(128)
    assert table.shape == (1024, 64) and table.dtype == torch.complex128
    assert rope_split(128) == [22, 21, 21]
    pos = torch.arange(1024, dtype=torch.float64)[:, None]
    for start, width, real_dims in ((0, 22, 44), (22, 21, 42), (43, 21, 42)):
        inv = 1.0 / 10000 ** (torch.arange(0, real_dims, 2, dtype=torch.float64) / real_dims)
        torch.testing.assert_close(torch.angle(table[:, start:start + width]), torch.angle(torch.polar(
            torch.ones(1024, width, dtype=torch.float64), pos * inv)))


def test_rope_apply_rotates_interleaved_pairs_by_grid_position():
    """Independent real-valued check: pair (x[2m], x[2m+1]) of token (i, j, k) turns by the angle of its axis."""
    f, h, w, heads, hd = 2, 3, 4, 2, 128
    x = torch.randn(1, f * h * w, heads, hd)
    out = rope_apply(x, [(f, h, w)], rope_table(hd))
    assert out.dtype == torch.float32
    angles = torch.angle(rope_table(hd))
    grid = torch.stack(torch.meshgrid(torch.arange(f), torch.arange(h), torch.arange(w), indexing="ij"), -1)
    grid = grid.reshape(-1, 3)
    theta = torch.cat([angles[grid[:, 0], :22], angles[grid[:, 1], 22:43], angles[grid[:, 2], 43:]], 1)[:, None]
    x64 = x.double()
    even, odd = x64[..., 0::2], x64[..., 1::2]
    expected = torch.stack([even * theta.cos() - odd * theta.sin(), even * theta.sin() + odd * theta.cos()], -1)
    torch.testing.assert_close(out.double(), expected.flatten(-2), rtol=0, atol=1e-6)


@pytest.mark.parametrize("config", [TINY, TINY21, HD128], ids=["wan2.2", "wan2.1", "head_dim128"])
def test_parity_with_diffusers_in_fp32(config):
    """Tolerance 1e-4 relative L2, fp32 both sides. What remains (~3e-6) is diffusers' fp32 sinusoid against
    upstream's fp64 one; a wrong key, norm swap or RoPE split gives O(1)."""
    model = fp32_model(config, seed=3)
    twin = diffusers_twin(config, model)
    x, t, ctx = inputs(config, b=2, ctx_len=512)
    ctx[:, 20:] = 0  # zero-padded text rows, not masked on either side
    with torch.no_grad():
        ours, theirs = model(x, t, ctx), twin(x, t, ctx, return_dict=False)[0]
    assert rel_l2(ours, theirs) < 1e-4


def test_context_is_zero_padded_to_text_len():
    model = fp32_model(TINY)
    x, t, ctx = inputs(TINY, ctx_len=5)
    padded = torch.cat([ctx, ctx.new_zeros(1, TINY.text_len - 5, TINY.text_dim)], 1)
    torch.testing.assert_close(model(x, t, ctx), model(x, t, padded))


@pytest.mark.parametrize("make, message", [
    (lambda x, t, c: (x[0], t, c), "latent video"),
    (lambda x, t, c: (torch.randn(1, 4, 3, 8, 12), t, c), "z_dim"),
    (lambda x, t, c: (x, t, torch.randn(1, 513, TINY.text_dim)), "truncate the prompt to 512"),
    (lambda x, t, c: (x, t, torch.randn(1, 7, 12)), "text embeddings"),
    (lambda x, t, c: (x, torch.tensor([1, 2]), c), "t must be"),
    (lambda x, t, c: (torch.randn(1, 16, 3, 7, 12), t, c), "multiples of the patch size"),
])
def test_bad_input_names_the_problem(make, message):
    model = build_wan(TINY, dtype=torch.float32, seed=0)
    with pytest.raises(ValueError, match=message):
        model(*make(*inputs(TINY)))


def test_attention_backend_is_validated():
    model = build_wan(TINY, dtype=torch.float32, seed=0)
    with pytest.raises(ValueError, match="choose from"):
        model.set_attention_backend("fa9")
    model.set_attention_backend("cudnn")
    assert {b.self_attn.attn_backend for b in model.blocks} == {"cudnn"}


def test_named_configs_match_the_official_sizes():
    a14b = get_config("wan2.2-t2v-a14b")
    assert (a14b.dit.dim, a14b.dit.ffn_dim, a14b.dit.num_heads, a14b.dit.num_layers) == (5120, 13824, 40, 40)
    assert (a14b.num_experts, a14b.boundary, a14b.sample_shift, a14b.guide_scale, a14b.sample_steps) == (
        2, 0.875, 12.0, (3.0, 4.0), 40)
    assert set(a14b.sizes) == {(832, 480), (1280, 720)} and a14b.frame_num == 81
    small = get_config("wan2.1-t2v-1.3b").dit
    assert (small.dim, small.ffn_dim, small.num_heads, small.num_layers, small.wan_version) == (1536, 8960, 12, 30, "2.1")
    with torch.device("meta"):
        from wanopt.models import WanModel
        n = sum(p.numel() for p in WanModel(a14b.dit).parameters())
        n13 = sum(p.numel() for p in WanModel(small).parameters())
    assert round(n / 1e9, 2) == 14.29 and round(n13 / 1e9, 2) == 1.42  # spec §1 "derived from layer shapes"


def test_unknown_config_lists_the_known_ones():
    with pytest.raises(KeyError, match="wan2.2-t2v-a14b"):
        get_config("wan2.2-t2v-a15b")


def test_wan_config_rejects_bad_versions_and_head_splits():
    with pytest.raises(ValueError, match="wan_version"):
        dataclasses.replace(TINY, wan_version="3.0")
    with pytest.raises(ValueError, match="heads"):
        dataclasses.replace(TINY, num_heads=3)
