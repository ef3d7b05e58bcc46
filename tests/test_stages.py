"""The optimization stages on the tiny model: each against the baseline within its stated tolerance, the custom
Triton kernels against their eager references (Triton's CPU interpreter), and the stage bookkeeping."""

import copy
import importlib
import importlib.util

import pytest
import torch

from wanopt.configs import get_config
from wanopt.models.layers import rope_table
from wanopt.pipelines.t2v import WanT2V
from wanopt.measure import rel_l2
from wanopt.stages import (T2V_STAGES, WORKLOAD_ORDER, apply_stages, get_stage, stage_order, stages_up_to,
                           tolerance_at)
from wanopt.stages.dtype_hygiene import lean_model, norm_modulate, qk_norm_rope, rope_cos_sin
from wanopt.weights import build_wan

TINY = get_config("tiny")


@pytest.fixture(scope="module")
def prompts():
    pipe = WanT2V("tiny", device="cpu", vae=False, seed=0)
    return pipe.encode_prompt("a glass of water on a wooden table")


def one_step_velocity(pipe, prompts, index=1):
    state = pipe.prepare(*prompts, sampling_steps=40, seed=3)
    state.step_index = index
    pipe.denoise_step(state)
    return state.velocity.clone(), state.latents.clone()


def test_stage_order_is_a_permutation_per_workload():
    default = [s.name for s in T2V_STAGES]
    for order in WORKLOAD_ORDER.values():
        assert sorted(order) == sorted(default) and order[0] == "00_baseline"
    a14b = [s.name for s in stage_order("t2v-a14b-480p")]
    assert a14b.index("02_batched_cfg") > a14b.index("04_dtype_hygiene")
    assert [s.name for s in stages_up_to("02_batched_cfg", "t2v-a14b-480p")][-2] == "04_dtype_hygiene"
    with pytest.raises(KeyError, match="stages in order"):
        get_stage("09_magic")


@pytest.mark.parametrize("workload", ["t2v-1.3b-480p", "t2v-a14b-480p"])
def test_each_stage_stays_within_its_tolerance_of_the_baseline(prompts, workload):
    """Cumulative, in the workload's order, up to fusion (compile and graphs have their own tests below)."""
    pipe = WanT2V("tiny", device="cpu", vae=False, seed=0)
    base_v, _ = one_step_velocity(pipe, prompts)
    for stage in stages_up_to("06_fusion", workload)[1:]:
        apply_stages(pipe, [stage.name], workload=workload)  # each stage's own choice on this CPU
        v, _ = one_step_velocity(pipe, prompts)
        tol = tolerance_at(stage.name, workload)
        assert rel_l2(v, base_v) <= tol, stage.name
        if stage.name in ("01_no_offload", "03_tf32"):  # same kernels on the CPU: bit for bit
            assert torch.equal(v, base_v)


def test_batched_cfg_matches_two_sequential_forwards(prompts):
    """Exact math: only the GEMM shapes change (fp32 model, where tiling cannot change the result beyond 1e-6)."""
    pipe = WanT2V("tiny", device="cpu", vae=False, seed=0, dtype=torch.float32)
    from wanopt.models.layers import set_compute_dtype

    for m in pipe.experts.values():
        set_compute_dtype(m, None, fp32_islands=True)
    prompts = tuple(p.float() for p in prompts)
    sequential, _ = one_step_velocity(pipe, prompts)
    pipe.batch_cfg = True
    batched, _ = one_step_velocity(pipe, prompts)
    assert rel_l2(batched, sequential) < 1e-6


def test_per_sample_time_in_the_lean_model_is_the_reference_in_fp32():
    """In float32 the lean forward differs from the reference only by rounding order: 1e-5 (observed ~1e-7)."""
    model = build_wan(TINY.dit, dtype=torch.float32, seed=2)
    from wanopt.models.layers import set_compute_dtype

    set_compute_dtype(model, None, fp32_islands=True)
    lean = lean_model(copy.deepcopy(model))
    x, t, ctx = torch.randn(2, 16, 3, 8, 12), torch.tensor([999, 500]), torch.randn(2, 30, TINY.dit.text_dim)
    assert rel_l2(lean(x, t, ctx), model(x, t, ctx)) < 1e-5


def test_lean_rope_tables_equal_the_complex_reference():
    from wanopt.models.layers import rope_apply

    grid, heads = (3, 4, 5), 2
    x = torch.randn(1, 60, heads * 128)
    cos, sin = rope_cos_sin(rope_table(128), grid, torch.float32, "cpu")
    ours = qk_norm_rope(x, torch.ones(heads * 128), 1e-6, (cos, sin), heads)
    normed = torch.nn.functional.rms_norm(x, (heads * 128,), eps=1e-6).unflatten(-1, (heads, 128))
    ref = rope_apply(normed, [grid], rope_table(128))
    assert rel_l2(ours, ref) < 1e-6


# -- stage 6: the Triton kernels against their eager references (CPU interpreter) ------------------------------
# Tolerance 1e-2 relative L2: outputs are bf16 (one ulp = 2^-8 relative) and the interpreter's float->bf16 casts
# truncate instead of rounding; a wrong pair, head, row or batch index gives O(1).


def _bf16(*shape, scale=1.0, offset=0.0):
    return (offset + scale * torch.randn(*shape)).to(torch.bfloat16)


def test_triton_norm_modulate_matches_eager():
    from wanopt.kernels import INTERPRETER
    from wanopt.stages.fusion import triton_norm_modulate

    assert INTERPRETER, "no CUDA here: Triton must run in its interpreter (wanopt sets TRITON_INTERPRET=1)"
    x = _bf16(2, 20, 96)
    mul, add = _bf16(2, 1, 96, scale=0.1, offset=1.0), _bf16(2, 1, 96, scale=0.1)
    ref = norm_modulate(x.float(), mul.float(), add.float(), 1e-6)
    assert rel_l2(triton_norm_modulate(x, mul, add, 1e-6).float(), ref) < 1e-2
    w, b = _bf16(96, scale=0.1, offset=1.0), _bf16(96, scale=0.1)  # the cross-attention LN's affine form
    assert rel_l2(triton_norm_modulate(x, w, b, 1e-6).float(), norm_modulate(x.float(), w.float(), b.float(), 1e-6)) < 1e-2
    swapped = triton_norm_modulate(x, mul.flip(0), add.flip(0), 1e-6).float()  # must see per-sample modulation
    assert rel_l2(swapped, ref) > 0.05


def test_triton_rmsnorm_rope_matches_eager_on_a_fused_qkv_view():
    """3 heads: the pair block (192 pairs) is padded to 256, so the mask must hold."""
    from wanopt.stages.fusion import triton_qk_norm_rope

    heads, hd, grid = 3, 128, (2, 3, 4)
    qkv = _bf16(2, 24, 3 * heads * hd)
    k = qkv.chunk(3, dim=-1)[1]  # strided rows, as the fused projection hands them over
    assert not k.is_contiguous()
    w = _bf16(heads * hd, scale=0.1, offset=1.0)
    rope = rope_cos_sin(rope_table(hd), grid, torch.bfloat16, "cpu")
    ref = qk_norm_rope(k.float(), w.float(), 1e-6, tuple(r.float() for r in rope), heads)
    out = triton_qk_norm_rope(k, w, 1e-6, rope, heads)
    assert out.shape == (2, 24, heads, hd)
    assert rel_l2(out.float(), ref) < 1e-2
    plain = triton_qk_norm_rope(k, w, 1e-6, None, heads)
    assert rel_l2(plain.float(), qk_norm_rope(k.float(), w.float(), 1e-6, None, heads)) < 1e-2
    assert rel_l2(plain.float(), ref) > 0.1  # the rotation really happened in the first call


def test_fusion_frees_the_separate_projections_and_keeps_the_math(prompts):
    from wanopt.stages.fusion import fuse_model

    model = lean_model(build_wan(TINY.dit, dtype=torch.bfloat16, seed=4))
    x, t, ctx = torch.randn(1, 16, 3, 8, 12), torch.tensor([999]), torch.randn(1, 30, TINY.dit.text_dim)
    before = model(x, t, ctx)
    n_params = sum(p.numel() for p in model.parameters())
    fuse_model(model)
    assert sum(p.numel() for p in model.parameters()) == n_params  # q,k,v gone, qkv in their place
    assert not hasattr(model.blocks[0].self_attn, "q") and hasattr(model.blocks[0].self_attn, "qkv")
    assert rel_l2(model(x, t, ctx), before) < 1e-2  # bf16 kernels round once where eager rounds per op


def test_gelu_epilogue_ffn_keeps_the_modules_and_checkpoint_keys():
    """Stage 6 swaps the FFN's class only: same modules, same state-dict keys, and off the GPU the same output (the
    epilogue itself is checked on the GPU: tests/test_gpu.py, and the capture's error against the baseline)."""
    from wanopt.stages.fusion import GeluEpilogueFFN, fuse_model

    model = lean_model(build_wan(TINY.dit, dtype=torch.bfloat16, seed=4))
    keys = list(model.state_dict())
    x = torch.randn(1, 10, TINY.dit.dim, dtype=torch.bfloat16)
    before = model.blocks[0].ffn(x)
    fuse_model(model)
    assert isinstance(model.blocks[0].ffn, GeluEpilogueFFN)
    assert [k for k in model.state_dict() if ".ffn." in k] == [k for k in keys if ".ffn." in k]
    assert torch.equal(model.blocks[0].ffn(x), before)
    plain = fuse_model(lean_model(build_wan(TINY.dit, dtype=torch.bfloat16, seed=4)), gelu_epilogue=False)
    assert type(plain.blocks[0].ffn) is torch.nn.Sequential


def test_gelu_epilogue_timings_report_both_ways_and_pick_the_faster():
    """The capture's measurement, on the CPU (host clock): both medians, the shape, the error between the two ways
    (bf16 outputs, one ulp 2^-8 relative, plus CPU's erf GELU against tanh, ~1e-3: under 1e-2) and the pick."""
    from wanopt.stages.fusion import gelu_epilogue_timings

    torch.manual_seed(0)
    r = gelu_epilogue_timings(64, 32, 128, repeats=3, device="cpu")
    assert r["shape"] == [64, 32, 128] and r["separate_ms"] > 0 and r["epilogue_ms"] > 0
    assert r["relative_l2"] < 1e-2
    assert r["gelu_epilogue"] == (r["epilogue_ms"] < r["separate_ms"])


def test_regional_compile_on_cpu_matches_eager(prompts):
    """torch.compile (Inductor's CPU backend here) of the lean blocks: fp32 model, 1e-5 (reordered fp32 math)."""
    from wanopt.models.layers import set_compute_dtype
    from wanopt.stages import compile_blocks, uncompile

    pipe = WanT2V("tiny", device="cpu", vae=False, seed=0, dtype=torch.float32)
    for m in pipe.experts.values():
        set_compute_dtype(m, None, fp32_islands=True)
        lean_model(m)
    prompts = tuple(p.float() for p in prompts)  # T5 runs in bf16; this test is all float32
    eager, _ = one_step_velocity(pipe, prompts)
    compile_blocks(pipe)
    compiled, _ = one_step_velocity(pipe, prompts)
    uncompile(pipe)
    assert rel_l2(compiled, eager) < 1e-5


def test_cuda_graph_wrapper_is_transparent_without_cuda(prompts):
    from wanopt.stages import cuda_graphs

    pipe = WanT2V("tiny", device="cpu", vae=False, seed=0)
    before, _ = one_step_velocity(pipe, prompts)
    cuda_graphs(pipe)
    after, _ = one_step_velocity(pipe, prompts)
    assert torch.equal(before, after)
    assert pipe.experts["high_noise"].per_token_time  # attributes reach through to the wrapped model


def test_tf32_switch_is_scoped():
    from wanopt.stages.tf32 import tf32_matmuls

    before = torch.backends.cuda.matmul.fp32_precision
    with tf32_matmuls():
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"
    assert torch.backends.cuda.matmul.fp32_precision == before
    with pytest.raises(RuntimeError), tf32_matmuls():
        raise RuntimeError("restored even on errors")
    assert torch.backends.cuda.matmul.fp32_precision == before


def test_no_offload_releases_t5_after_encoding():
    from wanopt.stages import no_offload

    pipe = no_offload(WanT2V("tiny", device="cpu", vae=False))
    pipe.encode_prompt("a kite")
    assert pipe.text_encoder is None and not pipe.offload
    with pytest.raises(RuntimeError, match="text_encoder=False"):
        pipe.encode_prompt("again")


def test_best_attention_backend_is_the_fastest_measured():
    from wanopt.stages import best_backend

    assert best_backend({"flash": 350.0, "cudnn": 590.0, "flex": None, "flex_error": "x"}) == "cudnn"
    with pytest.raises(ValueError, match="no attention kernel"):
        best_backend({"flash": None})
    # FlashAttention-4 competes where installed, and drops out where it is not
    assert best_backend({"cudnn": 563.0, "fa4": 659.0}) == "fa4"
    assert best_backend({"cudnn": 563.0, "fa4": None, "fa4_error": "RuntimeError: needs flash-attn-4"}) == "cudnn"


def test_best_attention_backend_covers_the_cross_attention_shape_too():
    from wanopt.stages import best_backend

    self_shape = {"cudnn": 560.0, "fa4": 660.0}
    # a kernel that fails at the cross-attention shape (L x 512 text tokens) cannot serve the model
    assert best_backend(self_shape, {"cudnn": 300.0, "fa4": None, "fa4_error": "x"}, 0.015) == "cudnn"
    # ranked by time on the mix: 1.5 % of the FLOPs at 30 TFLOP/s costs fa4 more than it gains at the self shape
    assert best_backend(self_shape, {"cudnn": 400.0, "fa4": 30.0}, 0.015) == "cudnn"
    assert best_backend(self_shape, {"cudnn": 400.0, "fa4": 300.0}, 0.015) == "fa4"
    with pytest.raises(ValueError, match="every shape"):
        best_backend({"fa4": 660.0}, {"fa4": None})


def _reference_fa4(q, k, v):
    """Stands in for flash_attn.cute.flash_attn_func on the CPU: same layout, returns (out, lse) as FA4 does."""
    out = torch.nn.functional.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)))
    return out.transpose(1, 2), None


def test_fa4_runs_as_a_custom_op_that_compile_does_not_trace_into(monkeypatch):
    """FA4's launch is a custom op: opcheck tests its schema and fake implementation, and a fullgraph compile
    (no graph break allowed) goes through it. The real kernel needs a GPU; a reference SDPA stands in for it."""
    import wanopt.models.layers as layers

    monkeypatch.setattr(layers, "_fa4_kernel", lambda: _reference_fa4)
    q, k, v = _bf16(2, 24, 2, 16), _bf16(2, 8, 2, 16), _bf16(2, 8, 2, 16)  # self shape != cross shape, B = 2
    torch.library.opcheck(torch.ops.wanopt.fa4_attention, (q, k, v))
    compiled = torch.compile(lambda q, k, v: torch.ops.wanopt.fa4_attention(q, k, v) * 2, fullgraph=True,
                             backend="aot_eager")
    expected = layers.sdpa(q, k, v)
    assert torch.equal(compiled(q, k, v), expected * 2)  # the same op on the same data: bit-identical


def test_fa4_backend_is_accepted_and_says_what_it_needs():
    from wanopt.models.layers import attention

    model = build_wan(TINY.dit, seed=0)
    model.set_attention_backend("fa4")  # a known name; the kernel is looked up at call time
    q = torch.randn(1, 8, 2, 16)
    with pytest.raises(RuntimeError, match="CUDA GPUs only"):
        attention(q, q, q, "fa4")
    if importlib.util.find_spec("flash_attn") is None:  # CI: the op itself names the package to install
        with pytest.raises(RuntimeError, match="pip install --pre flash-attn-4"):
            torch.ops.wanopt.fa4_attention(q, q, q)


def test_triton_kernels_are_well_formed_custom_ops():
    """The kernels run as custom ops so that torch.compile leaves their launch alone; opcheck tests the schema,
    the fake (meta) implementation against the real one, and the op under Dynamo and AOT autograd tracing."""
    importlib.import_module("wanopt.stages.fusion")  # registers the ops

    x = _bf16(2, 6, 64)
    mul, add = _bf16(2, 1, 64, offset=1.0), _bf16(2, 1, 64)
    torch.library.opcheck(torch.ops.wanopt.norm_modulate, (x, mul, add, 1e-6))
    cos, sin = rope_cos_sin(rope_table(32), (1, 2, 3), torch.bfloat16, "cpu")
    torch.library.opcheck(torch.ops.wanopt.rmsnorm_rope, (x, _bf16(64, offset=1.0), 1e-6, cos, sin, 2))
    torch.library.opcheck(torch.ops.wanopt.rmsnorm_rope, (x, _bf16(64, offset=1.0), 1e-6, None, None, 2))
