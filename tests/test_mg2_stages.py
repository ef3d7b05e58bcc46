"""The Matrix-Game-2 stages against the reference (the kit's compare test): on the tiny configs (universal-like,
gta-like with its 4-frame window, templerun-like keyboard only), each stage applied cumulatively and every block of
a video long enough that the window evicts compared with the reference pipeline's, cache-refresh evals included.
fp32 throughout (attention too), so what is left is summation order."""

import dataclasses

import pytest
import torch

from wanopt.configs import MG2_TINY
from wanopt.measure import rel_l2
from wanopt.models.layers import set_compute_dtype
from wanopt.pipelines.causal import CausalPipeline
from wanopt.stages import MG2_STAGES, apply_stages, stages_up_to, tolerance_at
from wanopt.stages import kv_cache

TINY_GTA = dataclasses.replace(MG2_TINY, name="mg2-tiny-gta", local_attn_size=4,
                               action=dataclasses.replace(MG2_TINY.action, keyboard_dim_in=2))
TINY_TEMPLERUN = dataclasses.replace(MG2_TINY, name="mg2-tiny-templerun", denoising_step_list=(1000, 750, 500, 250),
                                     action=dataclasses.replace(MG2_TINY.action, enable_mouse=False,
                                                                keyboard_dim_in=7))
CONFIGS = [MG2_TINY, TINY_GTA, TINY_TEMPLERUN]
BLOCKS = 4  # universal's window holds 2 blocks (evicts in blocks 2 and 3, both ring positions), gta's 4 frames (from block 1)
FP32_ROUNDING = 1e-5  # fp32 attention summed in another key order, through 2 layers and 5 blocks of 4-5 evals


def fp32_pipeline(config):
    pipe = CausalPipeline(config, device="cpu", dtype=torch.float32, seed=0)
    set_compute_dtype(pipe.model, None)
    return pipe


def video(pipe):
    return torch.cat(list(pipe.stream(BLOCKS, seed=1)), dim=2)


@pytest.fixture(scope="module", params=CONFIGS, ids=lambda c: c.name)
def reference(request):
    pipe = fp32_pipeline(request.param)
    return request.param, video(pipe)


@pytest.mark.parametrize("stage", [s.name for s in MG2_STAGES[1:]])
def test_each_stage_matches_the_reference_over_an_evicting_video(reference, stage):
    config, ref = reference
    pipe = apply_stages(fp32_pipeline(config), [s.name for s in stages_up_to(stage, "mg2-universal")],
                        workload="mg2-universal")
    out = video(pipe)
    if stage == "01_host_cache_indices":  # the same operations on the same data
        assert torch.equal(out, ref)
    else:  # the same keys in another order: fp32 summation order only, and far inside the stage's tolerance
        assert rel_l2(out, ref) <= min(FP32_ROUNDING, tolerance_at(stage, "mg2-universal")), stage


def test_host_indices_leave_no_item_call():
    pipe = kv_cache.host_cache_indices(fp32_pipeline(MG2_TINY))
    calls = []
    original = torch.Tensor.item

    def counting(self):
        calls.append(1)
        return original(self)

    torch.Tensor.item = counting
    try:
        video(pipe)
    finally:
        torch.Tensor.item = original
    assert not calls


def test_the_ring_holds_the_reference_window_in_ring_order():
    """After each block the ring holds exactly the frames of upstream's window (the last W frames), each in slot
    frame mod W: compare the first layer's self-attention keys with the reference's rolling buffer."""
    config = TINY_GTA
    ref, ring = fp32_pipeline(config), kv_cache.ring_kv_cache(fp32_pipeline(config))
    s, w = config.frame_seq_length, config.local_attn_size
    states = [p.start(BLOCKS, seed=1) for p in (ref, ring)]
    for b in range(BLOCKS):
        for p, st in zip((ref, ring), states):
            p.next_block(st)
        end = config.num_frame_per_block * (b + 1)
        frames = list(range(max(0, end - w), end))
        rolled = ref.cache.layers[0].self_attn.k  # frames in time order from position 0
        slots = ring.cache.layers[0].self_attn.k
        for i, frame in enumerate(frames):
            slot = frame % w
            torch.testing.assert_close(slots[:, slot * s:(slot + 1) * s], rolled[:, i * s:(i + 1) * s],
                                       rtol=0, atol=1e-5)


def test_a_misplaced_slot_is_far_outside_the_tolerance(monkeypatch):
    """What the tolerance guards against: a ring that writes each frame one slot off (a wrong window while it fills;
    once full the set of frames is right again) is already several times outside it on the tiny model."""
    ref = video(fp32_pipeline(MG2_TINY))
    original = kv_cache._runs

    def shifted(first, frames, slots):
        yield from original(first + 1, frames, slots)

    monkeypatch.setattr(kv_cache, "_runs", shifted)
    out = video(kv_cache.ring_kv_cache(fp32_pipeline(MG2_TINY)))
    assert rel_l2(out, ref) > 5 * tolerance_at("02_ring_kv_cache", "mg2-universal")


def test_ring_runs_wrap_around_the_slots():
    assert [(i, list(r)) for i, r in kv_cache._runs(3, 3, 4)] == [(0, [3]), (1, [0, 1])]
    assert [(i, list(r)) for i, r in kv_cache._runs(6, 3, 6)] == [(0, [0, 1, 2])]
    with pytest.raises(ValueError, match="does not fit a ring of 2 frame slots"):
        list(kv_cache._runs(0, 3, 2))
