"""Checkpoints: official and diffusers layouts, shards, strict errors, T5 and VAE loading, random weights."""

import json

import pytest
import torch
from safetensors.torch import save_file

from conftest import HD128
from wanopt.configs import get_config
from wanopt.weights import (CheckpointError, build_t5, build_vae, build_wan, init_random_, load_checkpoint,
                            save_checkpoint, t5_key_to_hf, wan_key_to_diffusers, wan_state_dict_to_diffusers)

TINY = get_config("tiny")


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_official_single_file_round_trip(tmp_path):
    model = build_wan(TINY.dit, dtype=torch.float32, seed=1)
    folder = save_checkpoint(model, tmp_path / "ckpt")
    assert (folder / "diffusion_pytorch_model.safetensors").exists()
    assert json.loads((folder / "config.json").read_text())["dim"] == TINY.dit.dim
    other = build_wan(TINY.dit, dtype=torch.float32, seed=2)
    assert not same_weights(model, other)
    load_checkpoint(other, folder)
    assert same_weights(model, other)


def test_sharded_round_trip_and_bf16_cast_on_load(tmp_path):
    model = build_wan(TINY.dit, dtype=torch.float32, seed=1)
    folder = save_checkpoint(model, tmp_path / "sharded", max_shard_size="100KB")
    shards = sorted(folder.glob("diffusion_pytorch_model-*.safetensors"))
    assert len(shards) > 1 and (folder / "diffusion_pytorch_model.safetensors.index.json").exists()
    loaded = build_wan(TINY.dit, dtype=torch.bfloat16, checkpoint=folder)
    for k, v in model.state_dict().items():
        assert loaded.state_dict()[k].dtype == torch.bfloat16
        torch.testing.assert_close(loaded.state_dict()[k].float(), v.bfloat16().float())


def test_diffusers_layout_loads_into_the_official_names(tmp_path):
    model = build_wan(HD128, dtype=torch.float32, seed=1)
    (tmp_path / "transformer").mkdir()
    save_file(wan_state_dict_to_diffusers(model.state_dict()),
              tmp_path / "transformer" / "diffusion_pytorch_model.safetensors")
    other = build_wan(HD128, dtype=torch.float32, seed=2)
    load_checkpoint(other, tmp_path / "transformer")
    assert same_weights(model, other)


def test_key_map_agrees_with_diffusers_own_converter():
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    state = build_wan(TINY.dit, dtype=torch.float32, seed=0).state_dict()
    theirs = convert_wan_transformer_to_diffusers(dict(state))
    ours = {wan_key_to_diffusers(k) for k in state}
    assert ours == set(theirs)
    assert wan_key_to_diffusers("blocks.3.norm3.weight") == "blocks.3.norm2.weight"  # the swapped LN names


def test_matrix_game_style_prefix_is_stripped(tmp_path):
    model = build_wan(TINY.dit, dtype=torch.float32, seed=1)
    save_file({"model." + k: v for k, v in model.state_dict().items()}, tmp_path / "m.safetensors")
    other = build_wan(TINY.dit, dtype=torch.float32, seed=2)
    load_checkpoint(other, tmp_path / "m.safetensors")
    assert same_weights(model, other)


def test_strict_error_lists_missing_unexpected_and_misshaped_keys(tmp_path):
    state = build_wan(TINY.dit, dtype=torch.float32, seed=1).state_dict()
    del state["blocks.1.ffn.2.bias"]
    state["blocks.0.extra.weight"] = torch.zeros(3)
    state["head.head.bias"] = torch.zeros(7)
    save_file(state, tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(build_wan(TINY.dit, dtype=torch.float32), tmp_path / "bad.safetensors")
    text = str(err.value)
    assert "missing keys" in text and "blocks.1.ffn.2.bias" in text
    assert "unexpected keys" in text and "blocks.0.extra.weight" in text
    assert "head.head.bias: [7] vs [64]" in text
    assert err.value.missing == ["blocks.1.ffn.2.bias"]


def test_config_and_checkpoint_of_different_sizes_say_so(tmp_path):
    save_checkpoint(build_wan(HD128, dtype=torch.float32), tmp_path / "big")
    with pytest.raises(CheckpointError, match=r"dim=256 and 2 layers; the config has dim=64"):
        load_checkpoint(build_wan(TINY.dit, dtype=torch.float32), tmp_path / "big")


def test_missing_file_and_missing_shard_are_named(tmp_path):
    model = build_wan(TINY.dit, dtype=torch.float32)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(model, tmp_path / "nowhere")
    folder = save_checkpoint(model, tmp_path / "sharded", max_shard_size="100KB")
    victim = sorted(folder.glob("diffusion_pytorch_model-*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(FileNotFoundError, match=victim.name):
        load_checkpoint(model, folder)


def test_wrong_file_type_and_empty_folder(tmp_path):
    (tmp_path / "w.pth").write_bytes(b"x")
    with pytest.raises(ValueError, match="not a .safetensors file"):
        load_checkpoint(build_wan(TINY.dit, dtype=torch.float32), tmp_path / "w.pth")
    (tmp_path / "empty" / "high_noise_model").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="high_noise_model"):
        load_checkpoint(build_wan(TINY.dit, dtype=torch.float32), tmp_path / "empty")


def test_random_weights_are_seeded_non_trivial_and_on_the_target_dtype():
    a = build_wan(TINY.dit, dtype=torch.bfloat16, seed=5)
    b = build_wan(TINY.dit, dtype=torch.bfloat16, seed=5)
    c = build_wan(TINY.dit, dtype=torch.bfloat16, seed=6)
    assert same_weights(a, b) and not same_weights(a, c)
    assert {p.dtype for p in a.parameters()} == {torch.bfloat16}
    norm = a.blocks[0].norm3.weight.float()
    assert 0.5 < norm.mean() < 1.5 and norm.std() > 0.01  # norms near one but not ones
    assert a.blocks[0].self_attn.q.bias.abs().sum() > 0  # biases not zero: a wrong map cannot hide


def test_official_t5_checkpoint_loads_into_transformers_umt5(tmp_path):
    hf = build_t5(TINY.t5, dtype=torch.float32, seed=1)
    to_official = {t5_key_to_hf(k): k for k in _official_t5_keys(TINY.t5.num_layers)}
    state = {to_official[k]: v for k, v in hf.state_dict().items() if k in to_official}
    assert len(state) == len(to_official)
    torch.save(state, tmp_path / "models_t5_umt5-xxl-enc-bf16.pth")
    loaded = build_t5(TINY.t5, dtype=torch.float32, seed=2, checkpoint=tmp_path / "models_t5_umt5-xxl-enc-bf16.pth")
    ids = torch.randint(3, 300, (1, 12))
    torch.testing.assert_close(loaded(input_ids=ids).last_hidden_state, hf(input_ids=ids).last_hidden_state)
    del state["norm.weight"]
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match="encoder.final_layer_norm.weight"):
        build_t5(TINY.t5, dtype=torch.float32, checkpoint=tmp_path / "broken.pth")


def _official_t5_keys(layers):
    keys = ["token_embedding.weight", "norm.weight"]
    for i in range(layers):
        keys += [f"blocks.{i}.norm1.weight", f"blocks.{i}.norm2.weight", f"blocks.{i}.pos_embedding.embedding.weight",
                 f"blocks.{i}.ffn.gate.0.weight", f"blocks.{i}.ffn.fc1.weight", f"blocks.{i}.ffn.fc2.weight"]
        keys += [f"blocks.{i}.attn.{p}.weight" for p in "qkvo"]
    return keys


def test_vae_random_is_seeded_and_missing_file_is_named(tmp_path):
    a, b = build_vae(TINY.vae, seed=3), build_vae(TINY.vae, seed=3)
    assert same_weights(a, b)
    with pytest.raises(FileNotFoundError, match="Wan2.1_VAE.pth"):
        build_vae(TINY.vae, checkpoint=tmp_path / "Wan2.1_VAE.pth")


def test_init_random_draws_on_each_parameter_in_place():
    model = build_wan(TINY.dit, dtype=torch.float32, seed=0)
    before = model.blocks[0].ffn[0].weight.clone()
    ptr = model.blocks[0].ffn[0].weight.data_ptr()
    init_random_(model, seed=9)
    assert model.blocks[0].ffn[0].weight.data_ptr() == ptr and not torch.equal(before, model.blocks[0].ffn[0].weight)
