"""Samplers and the T2V pipeline on the tiny config, end to end on the CPU."""

import numpy as np
import pytest
import torch

from wanopt.configs import get_config, latent_shape, num_tokens
from wanopt.pipelines.schedulers import flow_euler, flow_unipc, timesteps_for
from wanopt.pipelines.t2v import ByteTokenizer, CheckpointLayout, WanT2V
from wanopt.weights import CheckpointError

A14B_TIMESTEPS = [int(t) for t in (
    "999 997 995 993 990 988 985 982 979 976 972 969 965 961 956 952 947 941 936 929 922 915 907 898 888 877 "
    "865 852 837 819 799 776 749 717 678 631 571 492 386 235").split()]


def test_a14b_timesteps_match_upstream_exactly():
    ts = timesteps_for("unipc", 40, 12.0)
    assert ts == A14B_TIMESTEPS
    assert sum(t >= 875 for t in ts) == 26 and sum(t < 875 for t in ts) == 14  # 26 high-noise, 14 low-noise steps


def test_wan21_timesteps_start_and_end_as_upstream():
    ts = timesteps_for("unipc", 50, 5.0)
    assert ts[:3] == [999, 995, 991] and ts[-4:] == [302, 241, 172, 92]


def test_unipc_first_step_is_the_order1_predictor_and_last_lands_on_x0():
    """Spec §3.6: step 0 is x1 = (σ1/σ0)·x − α1·expm1(−h)·m0 with m0 = x − σ0·v; σ_N = 0 gives the x0 prediction."""
    sched = flow_unipc(5, 12.0)
    s = sched.sigmas.double()
    x, v = torch.randn(1, 4, 3, 3, dtype=torch.float64), torch.randn(1, 4, 3, 3, dtype=torch.float64)
    out = sched.step(v.float(), sched.timesteps[0], x.float(), return_dict=False)[0].double()
    lam = lambda sig: torch.log(1 - sig) - torch.log(sig)
    h = lam(s[1]) - lam(s[0])
    m0 = x - s[0] * v
    expected = (s[1] / s[0]) * x - (1 - s[1]) * torch.expm1(-h) * m0
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert sched.sigmas[-1] == 0


def test_flow_euler_moves_along_v():
    sched = flow_euler(4, 5.0)
    x, v = torch.randn(2, 3), torch.randn(2, 3)
    out = sched.step(v, sched.timesteps[0], x, return_dict=False)[0]
    torch.testing.assert_close(out, x + (sched.sigmas[1] - sched.sigmas[0]) * v)


def test_latent_shapes_and_tokens_of_the_workloads():
    a14b = get_config("wan2.2-t2v-a14b")
    assert latent_shape(a14b, (1280, 720), 81) == (16, 21, 90, 160) and num_tokens(a14b, (1280, 720), 81) == 75600
    assert latent_shape(a14b, (832, 480), 81) == (16, 21, 60, 104) and num_tokens(a14b, (832, 480), 81) == 32760
    with pytest.raises(ValueError, match="frame_num"):
        latent_shape(a14b, (832, 480), 80)


def test_tiny_pipeline_runs_end_to_end():
    pipe = WanT2V("tiny", device="cpu", seed=0)
    video = pipe.generate("a red fox in the snow", size=(64, 48), frame_num=5, sampling_steps=4, progress=False)
    assert video.shape == (3, 5, 48, 64)
    assert torch.isfinite(video).all() and video.abs().max() <= 1.0 and video.std() > 0


def test_expert_switch_follows_the_int64_timestep_rule():
    pipe = WanT2V("tiny", device="cpu", vae=False)
    ctx, ctx_null = pipe.encode_prompt("a boat")
    state = pipe.prepare(ctx, ctx_null, sampling_steps=40, shift=12.0)
    assert state.timesteps.tolist() == A14B_TIMESTEPS
    for _ in range(27):
        pipe.denoise_step(state)
    assert state.expert_log == ["high_noise"] * 26 + ["low_noise"]
    assert pipe.guide_scale_for(state.timesteps[0]) == 4.0 and pipe.guide_scale_for(state.timesteps[26]) == 3.0


def test_cfg_mix_uses_guide_scale():
    """One step by hand: v = v_u + g (v_c − v_u), then the scheduler."""
    pipe = WanT2V("tiny", device="cpu", vae=False)
    ctx, ctx_null = pipe.encode_prompt("a boat", "blurry")
    state = pipe.prepare(ctx, ctx_null, sampling_steps=4)
    x0, t = state.latents.clone(), state.timesteps[0]
    model = pipe.experts["high_noise"]
    v = model(x0, t.reshape(1), ctx_null) + 4.0 * (model(x0, t.reshape(1), ctx) - model(x0, t.reshape(1), ctx_null))
    ref = pipe.prepare(ctx, ctx_null, sampling_steps=4).scheduler.step(v, t, x0, return_dict=False)[0]
    pipe.denoise_step(state)
    torch.testing.assert_close(state.latents, ref)


def test_prompt_encoding_trims_to_real_length_and_uses_the_default_negative_prompt():
    pipe = WanT2V("tiny", device="cpu", vae=False)
    ctx, ctx_null = pipe.encode_prompt("abc")
    assert ctx.shape == (1, 4, 64)  # 3 bytes + EOS
    assert ctx_null.shape[1] == min(512, len(pipe.config.sample_neg_prompt.encode()) + 1)
    ids, mask = ByteTokenizer()(["x" * 600], max_length=512)
    assert mask.sum() == 512 and ids[0, -1] == 1


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def test_checkpoint_layout_finds_official_and_diffusers_folders(tmp_path):
    a14b = get_config("wan2.2-t2v-a14b")
    for sub in ("high_noise_model", "low_noise_model"):
        _touch(tmp_path / "off" / sub / "diffusion_pytorch_model.safetensors")
    _touch(tmp_path / "off" / "Wan2.1_VAE.pth")
    off = CheckpointLayout.find(a14b, tmp_path / "off")
    assert off.experts["high_noise"].name == "high_noise_model" and off.vae.name == "Wan2.1_VAE.pth"
    assert off.missing(["dit", "vae"]) == {} and list(off.missing(["t5", "tokenizer"])) == ["t5", "tokenizer"]
    for sub in ("transformer", "transformer_2"):
        _touch(tmp_path / "dif" / sub / "diffusion_pytorch_model.safetensors")
    _touch(tmp_path / "dif" / "vae" / "config.json")
    dif = CheckpointLayout.find(a14b, tmp_path / "dif")
    assert dif.experts["high_noise"].name == "transformer" and dif.experts["low_noise"].name == "transformer_2"
    assert dif.vae.name == "vae"
    _touch(tmp_path / "half" / "high_noise_model" / "diffusion_pytorch_model.safetensors")
    (tmp_path / "half" / "low_noise_model").mkdir()  # a folder without weights is missing too
    with pytest.raises(CheckpointError, match="low_noise"):
        CheckpointLayout.find(a14b, tmp_path / "half").require(["dit"])


def test_pipeline_loads_a_saved_checkpoint_folder(tmp_path):
    from wanopt.weights import save_checkpoint

    src = WanT2V("tiny", device="cpu", vae=False, text_encoder=False, seed=7)
    for name, folder in (("high_noise", "high_noise_model"), ("low_noise", "low_noise_model")):
        save_checkpoint(src.experts[name], tmp_path / folder)
    loaded = WanT2V("tiny", device="cpu", vae=False, text_encoder=False, checkpoint_dir=tmp_path)
    for name in src.experts:
        a, b = src.experts[name].state_dict(), loaded.experts[name].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["head.head.weight"].float().numpy(),
                              src.experts["high_noise"].state_dict()["head.head.weight"].float().numpy())
