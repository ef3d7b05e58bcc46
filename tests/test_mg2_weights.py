"""Matrix-Game-2 checkpoints: round trips in the released layout (`model.` prefix or not, fp32 file into a bf16
model) and strict errors."""

import pytest
import torch
from safetensors.torch import save_file

from test_mg2 import TINY_TEMPLERUN
from wanopt.configs import MG2_TINY
from wanopt.pipelines.causal import CausalPipeline
from wanopt.weights import CheckpointError, build_causal, save_checkpoint


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_fp32_checkpoint_round_trips_into_a_bf16_model(tmp_path):
    model = build_causal(MG2_TINY, dtype=torch.float32, seed=1)
    folder = save_checkpoint(model, tmp_path / "ckpt")
    loaded = build_causal(MG2_TINY, dtype=torch.bfloat16, seed=2, checkpoint=folder)
    for k, v in model.state_dict().items():
        assert loaded.state_dict()[k].dtype == torch.bfloat16
        assert torch.equal(loaded.state_dict()[k], v.bfloat16())  # the cast on load is the only change


def test_released_files_with_the_model_prefix_load(tmp_path):
    """Upstream saves from its wrapper: every key starts with `model.`."""
    model = build_causal(MG2_TINY, dtype=torch.float32, seed=1)
    save_file({"model." + k: v for k, v in model.state_dict().items()}, tmp_path / "base_distill.safetensors")
    other = build_causal(MG2_TINY, dtype=torch.float32, seed=2)
    assert not same_weights(model, other)
    pipe = CausalPipeline(MG2_TINY, device="cpu", dtype=torch.float32, checkpoint=tmp_path / "base_distill.safetensors")
    assert same_weights(model, pipe.model)


def test_strict_errors_list_missing_unexpected_and_misshaped_keys(tmp_path):
    state = {"model." + k: v for k, v in build_causal(MG2_TINY, dtype=torch.float32).state_dict().items()}
    del state["model.blocks.0.action_model.key_attn_q_norm.weight"]  # unused by forward, yet required
    state["model.blocks.0.norm1.weight"] = torch.ones(64)  # a third-party key list's mistake: norm1 has no weight
    state["model.blocks.0.action_model.keyboard_embed.0.weight"] = torch.zeros(16, 7)
    save_file(state, tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError) as err:
        build_causal(MG2_TINY, dtype=torch.float32, checkpoint=tmp_path / "bad.safetensors")
    assert err.value.missing == ["blocks.0.action_model.key_attn_q_norm.weight"]
    assert err.value.unexpected == ["model.blocks.0.norm1.weight"]
    assert "blocks.0.action_model.keyboard_embed.0.weight: [16, 7] vs [16, 4]" in str(err.value)


def test_a_keyboard_only_checkpoint_does_not_load_into_a_mouse_model(tmp_path):
    save_checkpoint(build_causal(TINY_TEMPLERUN, dtype=torch.float32), tmp_path / "templerun")
    with pytest.raises(CheckpointError, match="missing keys") as err:
        build_causal(MG2_TINY, dtype=torch.float32, checkpoint=tmp_path / "templerun")
    assert "blocks.0.action_model.mouse_mlp.0.weight" in err.value.missing
    assert "blocks.0.action_model.t_qkv.weight" in err.value.missing
