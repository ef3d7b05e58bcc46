"""wanopt.vae: the streamed decode equals diffusers' whole-video decode; bad latents and bad checkpoints are refused."""

import pytest
import torch
from diffusers import AutoencoderKLWan
from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers
from safetensors.torch import save_file

from wanopt.measure import rel_l2
from wanopt.vae import StreamingDecoder, build_vae
from wanopt.weights import CheckpointError, RandomWeightsWarning


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny VAEs gain nothing from more threads, and a second thread contending with other work for a core
    makes them many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_wan22_vae():
    """A tiny VAE in the Wan2.2 layout (residual up blocks, 2×2 patches, z_dim 48): the other path of the decoder
    (first_chunk, unpatchify) that StreamingDecoder drives as AutoencoderKLWan._decode does."""
    gen = torch.Generator().manual_seed(1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        return AutoencoderKLWan(base_dim=8, decoder_base_dim=16, z_dim=48, is_residual=True, patch_size=2,
                                in_channels=12, out_channels=12, latents_mean=torch.randn(48, generator=gen).tolist(),
                                latents_std=(torch.rand(48, generator=gen) + 0.5).tolist()).eval()


def unscaled(vae, z):
    """What diffusers' WanPipeline hands vae.decode: z·std + mean."""
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    return z * std + mean


@pytest.mark.parametrize("make", [lambda: build_vae("tiny", seed=3), tiny_wan22_vae], ids=["wan2.1", "wan2.2-layout"])
def test_blocks_decoded_with_the_carried_cache_equal_one_whole_decode(make):
    vae = make()
    z = torch.randn(1, vae.config.z_dim, 9, 4, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole = vae.decode(unscaled(vae, z), return_dict=False)[0]
    dec = StreamingDecoder(vae)
    blocks = [dec.decode_block(z[:, :, s:s + 3]) for s in range(0, 9, 3)]
    assert [b.shape[2] for b in blocks] == [9, 12, 12]  # 1 + 4·(3 − 1), then 4·3
    assert blocks[0].shape[-2:] == whole.shape[-2:]
    # The same decoder calls on the same frames with the same cache; only post_quant_conv (1×1×1) runs per block
    # instead of over the whole sequence, which may round differently in fp32: 1e-6 relative bounds that (it is 0
    # on this CPU). A dropped or reset cache is O(1) off (below).
    assert rel_l2(torch.cat(blocks, 2), whole) <= 1e-6
    dec.reset()
    again = dec.decode_block(z[:, :, 3:6])  # block 1 decoded as the first block of a new video: no cache
    assert again.shape[2] == 9 and rel_l2(again, blocks[1][:, :, 3:]) > 1e-2


def test_a_misshaped_block_is_refused_with_the_expected_shape_and_the_fix():
    dec = StreamingDecoder(build_vae("tiny"))
    with pytest.raises(ValueError, match=r"expects latents \[batch, 16, frames >= 1, height, width\].*latents\[None\]"):
        dec.decode_block(torch.randn(16, 3, 4, 6))
    with pytest.raises(ValueError, match=r"\[1, 16, 3, 44, 80\]\); got \[1, 48, 3, 4, 6\]"):
        dec.decode_block(torch.randn(1, 48, 3, 4, 6))
    dec.decode_block(torch.randn(1, 16, 3, 4, 6))
    with pytest.raises(ValueError, match=r"Call reset\(\) before decoding a new video"):
        dec.decode_block(torch.randn(1, 16, 3, 8, 6))


def test_random_weights_say_so():
    with pytest.warns(RandomWeightsWarning, match="random weights for vae"):
        build_vae("tiny")


def official_state(vae) -> dict:
    """The VAE's weights under upstream's key names (wan/modules/vae.py: conv1/conv2, encoder.downsamples.i,
    decoder.upsamples.i, middle, head, residual.{0,2,3,6}, shortcut, resample.1, time_conv): every such name that
    diffusers' converter maps onto one of the model's keys."""
    def res(p):
        return [f"{p}.residual.{i}.{n}" for i, n in ((0, "gamma"), (2, "weight"), (2, "bias"), (3, "gamma"),
                                                      (6, "weight"), (6, "bias"))] + [f"{p}.shortcut.{n}" for n in
                                                                                      ("weight", "bias")]

    def conv(p):
        return [f"{p}.weight", f"{p}.bias"]

    names = conv("conv1") + conv("conv2")
    for side in ("encoder", "decoder"):
        names += conv(f"{side}.conv1") + [f"{side}.head.0.gamma"] + conv(f"{side}.head.2") + res(f"{side}.middle.0")
        names += res(f"{side}.middle.2") + [f"{side}.middle.1.norm.gamma"] + conv(f"{side}.middle.1.to_qkv")
        names += conv(f"{side}.middle.1.proj")
    for side, count in (("encoder.downsamples", 11), ("decoder.upsamples", 15)):
        for i in range(count):
            names += res(f"{side}.{i}") + conv(f"{side}.{i}.resample.1") + conv(f"{side}.{i}.time_conv")
    params = vae.state_dict()
    state = {}
    for name in names:
        (key,) = convert_wan_vae_to_diffusers({name: None})
        if key in params:
            state[name] = params[key].clone()
    assert len(state) == len(params)  # every key of the model has its upstream name
    return state


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_checkpoints_load_strictly_in_the_diffusers_and_the_official_layout(tmp_path):
    src = build_vae("tiny", seed=5)
    src.save_pretrained(tmp_path / "vae")
    save_file(src.state_dict(), tmp_path / "vae.safetensors")
    torch.save(official_state(src), tmp_path / "Wan2.1_VAE.pth")
    for path in (tmp_path / "vae", tmp_path / "vae.safetensors", tmp_path / "Wan2.1_VAE.pth"):
        assert same_weights(build_vae("tiny", checkpoint=path), src), path.name


def test_a_checkpoint_with_missing_keys_is_refused(tmp_path):
    src = build_vae("tiny", seed=5)
    state = src.state_dict()
    del state["decoder.conv_in.weight"]
    save_file(state, tmp_path / "vae.safetensors")
    official = official_state(src)
    del official["decoder.conv1.weight"]
    torch.save(official, tmp_path / "Wan2.1_VAE.pth")
    for path in (tmp_path / "vae.safetensors", tmp_path / "Wan2.1_VAE.pth"):
        with pytest.raises(CheckpointError, match=r"missing keys \(in the model, not in the checkpoint\) \(1\):\n"
                                                  r"    decoder\.conv_in\.weight"):
            build_vae("tiny", checkpoint=path)
    with pytest.raises(CheckpointError, match=r"(?s)mis-shaped keys.*pass Wan2.1_VAE.pth or the vae/ folder"):
        build_vae("wan2.1", checkpoint=tmp_path / "Wan2.1_VAE.pth")


def test_an_unknown_layout_is_refused_with_the_supported_ones(tmp_path):
    (tmp_path / "vae.bin").write_bytes(b"\0")
    with pytest.raises(ValueError, match=r"Wan2.1_VAE.pth .*diffusers vae/ folder.*\.safetensors file"):
        build_vae("tiny", checkpoint=tmp_path / "vae.bin")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        build_vae("tiny", checkpoint=tmp_path / "empty")
