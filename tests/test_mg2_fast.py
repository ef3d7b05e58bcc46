"""The pieces of the Matrix-Game-2 stages 03-08 that the stage-against-reference tests (test_mg2_stages.py) do not
isolate: the per-block action windows, the block keys that the CUDA graphs are recorded under, the folded refresh's
eval count, the written-out attention, the attention choice's bookkeeping, the fused mouse input and the cold-start
command. CPU, fp32."""

import json
import subprocess
import sys

import pytest
import torch

from wanopt.configs import MG2_TINY
from wanopt.measure import rel_l2
from wanopt.models.action import action_windows
from wanopt.models.layers import explicit_attention, inductor_attention, sdpa, set_compute_dtype
from wanopt.pipelines.causal import CausalPipeline
from wanopt.stages import ChoiceContext, apply_stages, stages_up_to
from wanopt.stages import attention as attention_stage
from wanopt.stages import mg2_lean

FP32_ROUNDING = 1e-6  # one fp32 computation against another of the same math in another order


def fp32_pipeline(config=MG2_TINY):
    pipe = CausalPipeline(config, device="cpu", dtype=torch.float32, seed=0)
    set_compute_dtype(pipe.model, None)
    return pipe


def lean(config=MG2_TINY, upto="03_dtype_hygiene"):
    return apply_stages(fp32_pipeline(config), [s.name for s in stages_up_to(upto, "mg2-universal")],
                        workload="mg2-universal")


@pytest.mark.parametrize("start,frames", [(0, 3), (3, 3), (6, 3), (3, 6), (12, 3)])
def test_block_windows_are_upstreams_windows(start, frames):
    actions = torch.randn(1, 1 + 4 * (start + frames - 1), 5)
    expected = action_windows(actions, start, frames)
    assert torch.equal(mg2_lean.block_windows(actions, start, frames, 4, 12), expected)


def test_block_keys_name_the_ring_position_and_repeat_with_it():
    pipe = lean()
    w, f = MG2_TINY.local_attn_size, MG2_TINY.num_frame_per_block  # 6 slots, 3 frames per block
    keys = [pipe.block_key(((b * f, f),)) for b in range(5)]
    assert keys[0] == ((0, 3, False),)  # the first block: filling
    assert keys[1] == ((3, 3, True),) and keys[2] == ((0, 3, True),)  # the two steady ring positions
    assert keys[3] == keys[1] and keys[4] == keys[2]
    assert w == 6


def test_a_blocks_key_says_whether_its_refresh_is_folded():
    """Block 0 of a folded video ends without a refresh, block 0 of a plain one with it: one graph cannot serve both
    (stage 08 applied after 07 must record its own)."""
    plain, folded = lean(), lean(upto="08_fold_refresh")
    keys = [p.prepare_block(p.start(2, seed=1))[2] for p in (plain, folded)]
    assert keys[0] != keys[1] and keys[0][2] == keys[1][2]


def test_the_folded_refresh_runs_one_eval_fewer_per_block_and_the_same_video():
    plain, folded = lean(), lean(upto="08_fold_refresh")
    calls = []
    original = folded.model.velocity

    def counting(x, *args, **kwargs):
        calls.append(x.size(2))
        return original(x, *args, **kwargs)

    folded.model.velocity = counting
    blocks = 4
    out = torch.cat(list(folded.stream(blocks, seed=1)), dim=2)
    ref = torch.cat(list(plain.stream(blocks, seed=1)), dim=2)
    steps = len(plain.timesteps)
    # block 0: its denoising evals (its refresh waits for block 1); later blocks: a 6-frame first eval + the rest
    assert calls[:steps] == [3] * steps
    assert calls[steps:] == ([6] + [3] * (steps - 1)) * (blocks - 1)
    assert rel_l2(out, ref) <= FP32_ROUNDING


def test_the_lean_pipelines_single_eval_matches_the_reference():
    ref, pipe = fp32_pipeline(), lean()
    outs = []
    for p in (ref, pipe):
        state = p.start(3, seed=1)
        for _ in range(3):
            p.next_block(state)
        cond = p.block_conditions(state, 6)
        t = torch.ones(1, 3) * p.timesteps[0]
        outs.append(p.velocity(state.noise[:, :, 6:9], t, cond, 6))
    assert rel_l2(outs[1], outs[0]) <= FP32_ROUNDING


@pytest.mark.parametrize("shapes", [((8, 3, 4, 16), (8, 6, 4, 16)), ((1, 40, 2, 32), (1, 9, 2, 32))])
def test_the_written_out_attention_is_attention(shapes):
    q, k = torch.randn(shapes[0]), torch.randn(shapes[1])
    v = torch.randn_like(k)
    expected = sdpa(q, k, v)
    assert rel_l2(explicit_attention(q, k, v), expected) <= FP32_ROUNDING
    assert rel_l2(inductor_attention(q, k, v), expected) <= FP32_ROUNDING


def test_fastest_kernel_needs_every_shape_and_takes_the_least_total():
    times = {"mouse": {"flex": 0.06, "efficient": 0.15, "fa4": None, "fa4_error": "x"},
             "keyboard": {"flex": 0.012, "efficient": 0.011, "fa4": 0.010}}
    assert attention_stage._fastest(times, "mouse", "keyboard") == "flex"
    assert attention_stage._fastest(times, "keyboard") == "fa4"
    with pytest.raises(ValueError, match="no attention kernel ran at every shape"):
        attention_stage._fastest({"a": {"x": None}, "b": {"x": 1.0}}, "a", "b")


def test_mg2_attention_choice_without_a_gpu_and_forced():
    plain = attention_stage.choose_mg2_attention(ChoiceContext())
    assert set(plain.options.values()) == {attention_stage.UNMEASURED_BACKEND} and not plain.evidence["measured"]
    forced = attention_stage.choose_mg2_attention(ChoiceContext(forced={"attention_backend": "cudnn"}))
    assert forced.options == {"self_backend": "cudnn", "cross_backend": "cudnn", "action_backend": "cudnn"}


def test_the_fused_mouse_input_equals_the_concatenated_one():
    pipe = lean(upto="04_attention")
    action = next(b.action_model for b in pipe.model.blocks if b.action_model is not None)
    x, windows = torch.randn(1, 3 * 24, 64), torch.randn(3, action.window * 2)
    expected = action.mouse_hidden(x, windows)
    from wanopt.stages.fusion import fuse_causal_kernels

    fuse_causal_kernels(pipe, gelu_epilogue=False)
    assert rel_l2(action.mouse_hidden(x, windows), expected) <= FP32_ROUNDING


def test_cold_start_reports_process_start_to_the_first_block():
    done = subprocess.run([sys.executable, "-m", "wanopt.profiling.cold_start", "--workload", "tiny-mg2",
                           "--stages", "00_baseline,01_host_cache_indices"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"build_s", "apply_s", "first_block_s", "first_block_out"} <= set(out)
    assert out["first_block_s"] > 0
