import dataclasses

import pytest
import torch

from wanopt.configs import get_config
from wanopt.models.layers import set_compute_dtype
from wanopt.weights import build_wan


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


def fp32_model(dit_config, seed=0):
    """A WanModel computing everything in float32 (no emulated autocast): the parity setting."""
    model = build_wan(dit_config, dtype=torch.float32, seed=seed)
    return set_compute_dtype(model, None, fp32_islands=True)


# head_dim 128 like every real Wan model, so RoPE splits 44/42/42 real dims as upstream
HD128 = dataclasses.replace(get_config("tiny").dit, dim=256, ffn_dim=384, num_heads=2)


def diffusers_twin(dit_config, model):
    """diffusers' WanTransformer3DModel with the same weights, given through the key map."""
    from diffusers import WanTransformer3DModel

    from wanopt.weights import wan_state_dict_to_diffusers

    c = dit_config
    twin = WanTransformer3DModel(
        patch_size=c.patch_size, num_attention_heads=c.num_heads, attention_head_dim=c.head_dim,
        in_channels=c.in_dim, out_channels=c.out_dim, text_dim=c.text_dim, freq_dim=c.freq_dim,
        ffn_dim=c.ffn_dim, num_layers=c.num_layers, cross_attn_norm=c.cross_attn_norm, eps=c.eps)
    twin.load_state_dict(wan_state_dict_to_diffusers(model.state_dict()), strict=True)
    return twin.eval()
