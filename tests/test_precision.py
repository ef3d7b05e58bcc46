"""Compute precision is explicit: the builders take compute_dtype, the repr names it, and a model cast to fp32
whose emulated autocast still computes in bf16 says so once instead of sitting ~3e-3 from an fp32 reference."""

import warnings

import pytest
import torch

from conftest import HD128, diffusers_twin, fp32_model
from test_mg2 import fp32_causal, reference_velocity, video_inputs
from wanopt.measure import rel_l2
from wanopt.configs import MG2_TINY, get_config
from wanopt.models import KVCache
from wanopt.models.layers import PrecisionWarning, set_compute_dtype
from wanopt.weights import build_causal, build_wan

TINY = get_config("tiny").dit




def wan_inputs(config, ctx_len=512):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, config.in_dim, 3, 8, 12, generator=g)
    ctx = torch.randn(2, ctx_len, config.text_dim, generator=g)
    ctx[:, 20:] = 0
    return x, torch.tensor([999, 500]), ctx


def run(model, *args, **kwargs):
    with torch.no_grad():
        return model(*args, **kwargs)


def silently(fn):
    """fn(), failing the test on any PrecisionWarning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", PrecisionWarning)
        return fn()


# ---------------------------------------------------------------------------------------------------------------
# WanModel


def test_fp32_compute_is_the_fp32_reference_path():
    """build_wan(compute_dtype=torch.float32) is what tests/conftest.py's fp32_model builds by hand."""
    built = build_wan(TINY, dtype=torch.float32, seed=3, compute_dtype=torch.float32)
    by_hand = fp32_model(TINY, seed=3)
    x, t, ctx = wan_inputs(TINY)
    assert torch.equal(run(built, x, t, ctx), run(by_hand, x, t, ctx))


def test_fp32_compute_matches_diffusers_and_fp32_weights_alone_do_not():
    """Against another fp32 implementation (diffusers, same weights): fp32 compute agrees to ~1e-6; fp32 weights
    with the default bf16 compute, what `model.float()` gives, are ~1e-3 away."""
    exact = build_wan(HD128, dtype=torch.float32, seed=3, compute_dtype=torch.float32)
    twin = diffusers_twin(HD128, exact)
    x, t, ctx = wan_inputs(HD128)
    theirs = run(twin, x, t, ctx, return_dict=False)[0]
    assert rel_l2(run(exact, x, t, ctx), theirs) < 1e-4
    autocast = build_wan(HD128, dtype=torch.float32, seed=3)  # default compute_dtype: bf16, as upstream
    assert rel_l2(run(autocast, x, t, ctx), theirs) > 1e-3


def test_repr_names_the_compute_dtype_and_how_to_change_it():
    text = repr(build_wan(TINY, seed=0))
    first = text.splitlines()[1]
    assert first.strip().startswith("compute_dtype=bfloat16 (autocast emulation")
    assert "pass compute_dtype=torch.float32 to wanopt.weights.build_wan" in first
    assert "compute_dtype=float32" in repr(build_wan(TINY, dtype=torch.float32, compute_dtype=torch.float32))
    assert "compute_dtype=None (each op in its input's dtype)" in repr(fp32_model(TINY))


@pytest.mark.parametrize("cast", [lambda m: m.float(), lambda m: m.to(torch.float32), lambda m: m.double()],
                         ids=["float", "to_float32", "double"])
def test_casting_to_fp32_warns_once_that_the_linears_still_compute_in_bf16(cast):
    model = cast(build_wan(TINY, seed=0))
    dtype = next(model.parameters()).dtype
    x, t, ctx = (a.to(dtype) if a.is_floating_point() else a for a in wan_inputs(TINY, ctx_len=7))
    with pytest.warns(PrecisionWarning, match=r"still compute in bfloat16 .* compute_dtype=torch.float32"):
        run(model, x, t, ctx)
    silently(lambda: run(model, x, t, ctx))  # once


def test_no_warning_where_the_precision_was_chosen():
    x, t, ctx = wan_inputs(TINY, ctx_len=7)
    # the documented fix right after the cast (notebook 05's idiom)
    silently(lambda: run(set_compute_dtype(build_wan(TINY, seed=0).float(), None, fp32_islands=True), x, t, ctx))
    # fp32 weights under bf16 autocast, asked for in the builder (upstream's own mix)
    silently(lambda: run(build_wan(TINY, dtype=torch.float32, seed=0), x, t, ctx))
    # moving the model is not a cast
    silently(lambda: run(build_wan(TINY, seed=0).to("cpu"), x, t, ctx))


def test_compute_dtype_is_validated():
    with pytest.raises(TypeError, match="compute_dtype must be a floating torch dtype"):
        build_wan(TINY, compute_dtype="bf16")
    with pytest.raises(TypeError, match="compute_dtype must be a floating torch dtype"):
        build_causal(MG2_TINY, compute_dtype=torch.int32)


# ---------------------------------------------------------------------------------------------------------------
# CausalWanModel


def mg2_block(model, dtype=torch.float32):
    x, ctx, cond, mouse, keyboard = (None if a is None else a.to(dtype) for a in video_inputs(MG2_TINY, 3, seed=2))
    t = torch.tensor([[1000.0, 500.0, 0.0]])
    v = run(model, x, t, ctx, cond, mouse, keyboard, cache=KVCache(MG2_TINY, dtype=dtype), current_start=0)
    return v, (x, t[0], ctx, cond, mouse, keyboard)


def test_causal_fp32_compute_matches_the_cache_free_reference():
    exact = build_causal(MG2_TINY, dtype=torch.float32, seed=3, compute_dtype=torch.float32)
    v, args = mg2_block(exact)
    assert torch.equal(v, mg2_block(fp32_causal(MG2_TINY, seed=3))[0])
    with torch.no_grad():
        reference = reference_velocity(exact, *args)
    assert rel_l2(v, reference) < 1e-5
    bf16_attention = build_causal(MG2_TINY, dtype=torch.float32, seed=3)  # default: q, k, v cast to bf16
    assert rel_l2(mg2_block(bf16_attention)[0], reference) > 1e-4
    assert "compute_dtype=float32" in repr(exact)
    assert "pass compute_dtype=torch.float32 to wanopt.weights.build_causal" in repr(bf16_attention)


def test_causal_float_warns_that_attention_still_runs_in_bf16():
    model = build_causal(MG2_TINY, seed=0).float()
    with pytest.warns(PrecisionWarning, match=r"CausalWanModel: .*attention inputs .* still compute in bfloat16"):
        mg2_block(model)
    silently(lambda: mg2_block(model))
