"""The Matrix-Game-2 block loop: schedule, sampler math, what each block runs, the rolling caches over several
blocks (window and eviction), templerun without a mouse, profiler labels, host syncs."""

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from test_mg2 import TINY_GTA, TINY_TEMPLERUN
from wanopt.configs import MG2_GTA, MG2_TEMPLERUN, MG2_TINY, MG2_UNIVERSAL
from wanopt.pipelines.causal import CausalPipeline, flow_match_schedule, warped_timesteps


@pytest.fixture(scope="module")
def pipes():
    """One pipeline per tiny variant, shared: start() resets everything a test depends on."""
    return {c.name: CausalPipeline(c, device="cpu", seed=0) for c in (MG2_TINY, TINY_GTA, TINY_TEMPLERUN)}


def record_calls(model):
    """Every DiT eval's (x, t, current_start, velocity); remove the hooks with .remove() on the returned handles."""
    calls = []

    def before(module, args, kwargs):
        calls.append(dict(x=args[0].clone(), t=args[1].clone(), start=kwargs["current_start"]))

    def after(module, args, kwargs, out):
        calls[-1]["v"] = out.clone()

    return calls, [model.register_forward_pre_hook(before, with_kwargs=True),
                   model.register_forward_hook(after, with_kwargs=True)]


# ---------------------------------------------------------------------------------------------------------------
# Schedule and sampler


@pytest.mark.parametrize("config", [MG2_UNIVERSAL, MG2_GTA, MG2_TEMPLERUN], ids=lambda c: c.name)
def test_timesteps_are_the_warped_shifted_schedule(config):
    """Spec §4.2: L picks index 1000 − L of the shift-5 table, i.e. σ = L/1000 shifted: t = 1000·5σ/(1 + 4σ).
    [1000, 908.84, 713.98] (universal, gta), [1000, 937.5, 833.33, 625] (templerun). Tolerance 1e-3: the table
    is float32 (t ~ 1e3, eps 6e-5 relative)."""
    _, timesteps = flow_match_schedule(config.timestep_shift)
    got = warped_timesteps(config.denoising_step_list, timesteps)
    sigma = torch.tensor(config.denoising_step_list, dtype=torch.float64) / 1000
    expected = 1000 * 5 * sigma / (1 + 4 * sigma)
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=1e-3)
    assert got.dtype == torch.float32 and got.device.type == "cpu"
    printed = {"mg2-templerun": [1000.0, 937.5, 833.33, 625.0]}.get(config.name, [1000.0, 908.84, 713.98])
    assert [round(v, 2) for v in got.tolist()] == printed


def test_x0_and_renoising_use_each_frames_sigma(pipes):
    """x0 = x_t − σ·v in float64 and x_next = (1 − σ)·x0 + σ·ε, σ = t/1000 looked up per frame (three different
    timesteps in one call). Tolerance: one bf16 rounding of the result (rtol 2^-8); a wrong σ (off by a frame
    or a step, Δσ ≥ 0.09) is far outside it."""
    pipe = pipes["mg2-tiny"]
    t = torch.tensor([[1000.0, 908.8427, 713.9794]])
    sigma = (t / 1000).double().view(1, 1, 3, 1, 1)
    xt, v, eps = (torch.randn(1, 16, 3, 8, 12).bfloat16() for _ in range(3))
    x0 = pipe.flow_to_x0(v, xt, t)
    assert x0.dtype == torch.bfloat16
    torch.testing.assert_close(x0.double(), xt.double() - sigma * v.double(), rtol=2**-8, atol=1e-3)
    renoised = pipe.add_noise(x0, eps, t.flatten())
    torch.testing.assert_close(renoised.double(), (1 - sigma) * x0.double() + sigma * eps.double(), rtol=2**-8,
                               atol=1e-3)


# ---------------------------------------------------------------------------------------------------------------
# What one block runs


@pytest.mark.parametrize("name, steps", [("mg2-tiny", [1000.0, 908.84, 713.98]),
                                         ("mg2-tiny-templerun", [1000.0, 937.5, 833.33, 625.0])])
def test_a_block_is_the_denoising_evals_then_one_clean_refresh(pipes, name, steps):
    pipe = pipes[name]
    config = pipe.config
    calls, hooks = record_calls(pipe.model)
    try:
        state = pipe.start(2, seed=0)
        outputs = [pipe.next_block(state) for _ in range(2)]
    finally:
        for h in hooks:
            h.remove()
    per_block = len(steps) + 1
    assert len(calls) == 2 * per_block
    for b, x0 in enumerate(outputs):
        block = calls[b * per_block:(b + 1) * per_block]
        assert [round(c["t"][0, 0].item(), 2) for c in block] == steps + [0.0]  # context_noise 0
        assert all(c["t"].shape == (1, 3) and (c["t"] == c["t"][0, 0]).all() for c in block)
        assert {c["start"] for c in block} == {3 * b * config.frame_seq_length}
        assert torch.equal(block[0]["x"], state.noise[:, :, 3 * b:3 * b + 3])  # the noise drawn up front
        assert torch.equal(block[-1]["x"], x0) and torch.equal(state.output[:, :, 3 * b:3 * b + 3], x0)
        # between evals: x0 of the last eval re-noised with fresh noise ε (recovered here: N(0, 1), new each step)
        epsilons = []
        for prev, nxt, t_next in zip(block, block[1:-1], steps[1:]):
            sigma, sigma_next = prev["t"][0, 0].double() / 1000, t_next / 1000
            x0_prev = prev["x"].double() - sigma * prev["v"].double()
            epsilons.append((nxt["x"].double() - (1 - sigma_next) * x0_prev) / sigma_next)
        for eps in epsilons:
            assert abs(eps.mean()) < 0.1 and 0.9 < eps.std() < 1.1
        assert not torch.allclose(epsilons[0], epsilons[1], atol=0.5)
    with pytest.raises(ValueError, match="all 2 blocks are made"):
        pipe.next_block(state)


def test_templerun_runs_without_mouse(pipes):
    pipe = pipes["mg2-tiny-templerun"]
    assert not any("mouse_mlp" in k or "t_qkv" in k for k in pipe.model.state_dict())
    assert pipe.cache.layers[0].mouse is None and pipe.cache.layers[0].keyboard is not None
    state = pipe.start(2, seed=0)
    assert state.mouse is None and state.keyboard.shape == (1, 1 + 4 * 5, 7)
    latents = torch.cat([pipe.next_block(state) for _ in range(2)], dim=2)
    assert latents.shape == (1, 16, 6, 8, 12) and torch.isfinite(latents.float()).all()


def test_runs_are_repeatable_after_reset_and_seeded(pipes):
    pipe = pipes["mg2-tiny"]
    a = pipe.generate(2, seed=5)
    assert torch.equal(a, pipe.generate(2, seed=5))  # start() resets caches, draws the same noise
    assert not torch.equal(a, pipe.generate(2, seed=6))


# ---------------------------------------------------------------------------------------------------------------
# The rolling caches over several blocks


def spy_on(cache, log):
    """Record what each attend() call writes (start, keys) and how many positions it attends."""
    original = cache.attend

    def attend(q, k, v, start, attention):
        entry = dict(start=start, k=k.clone())
        log.append(entry)

        def counted(q, k_window, v_window):
            entry["window"] = k_window.size(1)
            return attention(q, k_window, v_window)

        return original(q, k, v, start, counted)

    cache.attend = attend


@pytest.mark.parametrize("name, window", [("mg2-tiny", 6), ("mg2-tiny-gta", 4)])
def test_caches_keep_the_clean_keys_of_the_last_frames_in_the_window(name, window):
    """Over 4 blocks, for the self-attention cache (unit: 24 tokens a frame) and the mouse and keyboard caches
    (unit: a frame): each eval of block b attends min(3(b+1), W) frames (72/144/144 tokens at W=6, 72/96/96 at
    W=4: 2640/5280/5280 and 2640/3520/3520 at 880 tokens a frame); the noisy evals overwrite the block's slots and
    after the refresh the buffer holds exactly the refresh's (clean) keys of the last min(3(b+1), W) frames,
    rolled left when the new block did not fit."""
    pipe = CausalPipeline(MG2_TINY if name == "mg2-tiny" else TINY_GTA, device="cpu", seed=0)
    layer = pipe.cache.layers[0]
    caches = {"self_attn": (layer.self_attn, pipe.config.frame_seq_length), "mouse": (layer.mouse, 1),
              "keyboard": (layer.keyboard, 1)}
    logs = {key: [] for key in caches}
    for key, (cache, _) in caches.items():
        spy_on(cache, logs[key])
    state = pipe.start(4, seed=0)
    for b in range(4):
        pipe.next_block(state)
        kept = min(3 * (b + 1), window)
        for key, (cache, unit) in caches.items():
            block = logs[key][4 * b:4 * b + 4]
            assert [e["window"] for e in block] == [kept * unit] * 4, key
            assert {e["start"] for e in block} == {3 * b * unit}, key
            if key != "keyboard":  # keyboard keys come from the actions alone: the same in every eval of a block
                assert not torch.equal(block[0]["k"], block[-1]["k"]), key  # noisy keys differ from the clean ones
            assert (cache.local_end.item(), cache.global_end.item()) == (kept * unit, 3 * (b + 1) * unit), key
            clean = torch.cat([logs[key][4 * (f // 3) + 3]["k"][:, (f % 3) * unit:(f % 3 + 1) * unit]
                               for f in range(3 * (b + 1) - kept, 3 * (b + 1))], dim=1)
            assert torch.equal(cache.k[:, :kept * unit], clean), key


# ---------------------------------------------------------------------------------------------------------------
# Profiling surface


def test_profiler_labels_of_one_block(pipes):
    pipe = pipes["mg2-tiny"]
    state = pipe.start(1, seed=0)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        pipe.next_block(state)
    counts = {}
    for event in prof.events():
        counts[event.name] = counts.get(event.name, 0) + 1
    evals = 4  # 3 denoising + 1 refresh; tiny: 2 blocks, an action module in block 0
    expected = {"mg2_block": 1, "denoise_eval": 3, "add_noise": 2, "cache_refresh": 1, "patch_embed": evals,
                "time_embed": evals, "img_embed": evals, "head": evals, "block00": evals, "block01": evals,
                "self_attn": 2 * evals, "cross_attn": 2 * evals, "ffn": 2 * evals, "action": evals, "mouse": evals,
                "keyboard": evals}
    assert {k: counts.get(k, 0) for k in expected} == expected


@pytest.mark.parametrize("name, evicts_from_block", [("mg2-tiny", 2), ("mg2-tiny-gta", 1)])
def test_host_syncs_per_eval_are_upstreams(pipes, monkeypatch, name, evicts_from_block):
    """Each cached attention reads its GPU end indices with .item() as upstream does: 4 on the first eval of a
    block that fits, 6 when it must roll the buffer, 3 on the later evals of the block (same slots). Tiny has
    4 cached attentions per eval (2 self, 1 mouse, 1 keyboard); the pipeline itself adds none."""
    pipe = pipes[name]
    count = [0]
    item = torch.Tensor.item

    def counted(self):
        count[0] += 1
        return item(self)

    per_eval = []
    hooks = [pipe.model.register_forward_pre_hook(lambda *a: per_eval.append(count[0])),
             pipe.model.register_forward_hook(lambda m, a, o: per_eval.__setitem__(-1, count[0] - per_eval[-1]))]
    try:
        state = pipe.start(3, seed=0)
        monkeypatch.setattr(torch.Tensor, "item", counted)
        for _ in range(3):
            pipe.next_block(state)
        monkeypatch.undo()
    finally:
        for h in hooks:
            h.remove()
    expected = []
    for b in range(3):
        expected += [4 * (6 if b >= evicts_from_block else 4)] + [4 * 3] * 3
    assert per_eval == expected and count[0] == sum(expected)
