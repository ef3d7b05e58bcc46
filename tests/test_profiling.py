"""Profiling: the analysis functions on small committed traces, FLOP counts, plots and the committed manifests
(the capture harness and its runners: tests/test_harness.py)."""

import json
from pathlib import Path

import matplotlib
import pandas as pd
import pytest

from wanopt.configs import get_config, get_mg2_config
from wanopt.profiling import analysis, plots
from wanopt.profiling.flops import causal_eval_flops, kernel_floor_s, wan_eval_flops
from wanopt.profiling.records import sha256

matplotlib.use("Agg")
TRACES = Path(__file__).resolve().parents[1] / "traces"
TINY = "tiny-t2v"  # captured on the H100: the same code paths as the big runs, kilobytes of trace


@pytest.fixture(scope="module")
def base():
    return analysis.load_trace(TINY, "00_baseline")


@pytest.fixture(scope="module")
def fused():
    return analysis.load_trace(TINY, "06_fusion")


@pytest.mark.parametrize("name, cat, category", [
    ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128>>(params)", "kernel", "attention"),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7", "kernel", "attention"),
    ("nvjet_sm90_tst_192x208_64x4_1x2_h_bz_coopB_bias_TNT", "kernel", "GEMM"),
    ("sm80_xmma_gemm_f32f32_f32f32_f32_tn_n_tilesize128x128x8", "kernel", "GEMM"),
    ("triton_poi_fused_gelu_view_6", "kernel", "norm/elementwise"),
    ("_rmsnorm_rope_kernel", "kernel", "norm/elementwise"),
    ("void at::native::vectorized_layer_norm_kernel<float, float, false>(int)", "kernel", "norm/elementwise"),
    ("void at::native::unrolled_elementwise_kernel<at::native::direct_copy_kernel_cuda(at::TensorIteratorBase&)",
     "kernel", "cast/copy"),
    ("void at::native::(anonymous namespace)::CatArrayBatchedCopy_vectorized<int>", "kernel", "cast/copy"),
    ("Memcpy HtoD (Pageable -> Device)", "gpu_memcpy", "memcpy H2D/D2H"),
    ("Memcpy DtoD (Device -> Device)", "gpu_memcpy", "cast/copy"),
    ("Memset (Device)", "gpu_memset", "other"),
])
def test_kernel_categories(name, cat, category):
    assert analysis.categorize(name, cat) == category


def test_kernel_table_covers_the_trace(base):
    k = analysis.kernels(base)
    assert {"short_name", "category", "start_us", "dur", "stream", "launch_ts"} <= set(k.columns)
    assert len(k) > 100 and k["launch_ts"].notna().all() and (k["dur"] >= 0).all()
    assert set(k["category"]) <= set(analysis.CATEGORIES)
    assert k["start_us"].min() == 0


def test_category_breakdown_adds_up(base):
    k = analysis.kernels(base)
    cb = analysis.category_breakdown(k)
    assert list(cb.index) == analysis.CATEGORIES
    assert cb["share %"].sum() == pytest.approx(100, abs=0.1)
    assert cb["ms"].sum() == pytest.approx(k["dur"].sum() / 1e3, abs=0.03)  # 6 rows rounded to 0.01 ms
    assert cb.loc["attention", "kernels"] > 0 and cb.loc["GEMM", "kernels"] > 0


def test_gpu_time_by_label_nests_inside_the_step(base):
    labels = analysis.gpu_time_by_label(base)
    step = labels.loc["denoise_step", "gpu_ms"]
    steps = labels[labels.index.str.startswith("ProfilerStep#")]
    assert steps["share %"].sum() == pytest.approx(100, abs=0.5)
    blocks = labels[labels.index.str.fullmatch(r"block\d\d")]["gpu_ms"].sum()
    parts = labels.loc[["cfg_cond", "cfg_uncond"], "gpu_ms"].sum()
    assert 0 < blocks < parts <= step + 1e-6
    profiled = len(json.loads((TRACES / TINY / "00_baseline" / "manifest.json").read_text())["trace"]["profiled_steps"])
    assert labels.loc["self_attn", "occurrences"] == 2 * 2 * profiled  # 2 blocks × 2 CFG passes per step


def test_window_and_timeline(base):
    k = analysis.kernels(base)
    step = analysis.window(base, "denoise_step")
    block = analysis.window(base, "block01")
    assert step[0] <= block[0] < block[1] <= step[1]
    assert len(analysis.in_window(k, block)) < len(analysis.in_window(k, step))
    with pytest.raises(KeyError, match="labels seen"):
        analysis.window(base, "block99")
    ax = plots.kernel_timeline(k, block, "block01")
    assert tuple(ax.figure.get_size_inches()) == (11.0, 2.7) and ax.figure.dpi == plots.DPI
    busy = analysis.busy_breakdown(k, step)
    assert busy["percent"].sum() == pytest.approx(100, abs=0.1)


def test_hta_breakdowns_return_frames(base):
    tb = analysis.temporal_breakdown(base)
    assert list(tb.index) == ["idle", "compute", "non-compute"] and tb["percent"].sum() == pytest.approx(100, abs=0.5)
    ls = analysis.launch_stats(base)
    assert ls.loc["launches", "value"] > 0
    assert set(analysis.idle_breakdown(base).index) <= {"host_wait", "kernel_wait", "other"}
    assert "count" in analysis.host_syncs(base).columns


def test_trace_diff_and_category_diff_between_stages():
    cd = analysis.category_diff(TINY, "00_baseline", "06_fusion")
    assert cd.loc["total", "Δ ms"] == pytest.approx(cd.loc["total", "06_fusion"] - cd.loc["total", "00_baseline"],
                                                    abs=0.2)
    td = analysis.trace_diff(TINY, "00_baseline", "06_fusion")
    assert list(td.columns) == ["00_baseline calls", "00_baseline ms", "06_fusion calls", "06_fusion ms", "Δ ms"]
    assert len(td) > 0


def test_missing_trace_says_how_to_get_it(tmp_path):
    with pytest.raises(analysis.MissingTraceError,
                       match="python -m wanopt capture --workload t2v-1.3b-480p --stages 03_tf32"):
        analysis.load_trace("t2v-1.3b-480p", "03_tf32", root=tmp_path)
    with pytest.raises(analysis.UnknownNameError, match="unknown workload 't2v-x'"):
        analysis.load_trace("t2v-x", "s", root=tmp_path)


def test_stage_table_and_plots_from_committed_manifests():
    st = analysis.stage_table("t2v-1.3b-480p")
    assert st.index[0] == "00_baseline" and (st["step ms"] > 0).all()
    fig = plots.waterfall(st["step ms"], "1.3B")
    assert tuple(fig.get_size_inches()) == (11.0, 3.9)
    fig = plots.category_bars({"a": analysis.category_breakdown(analysis.load_trace(TINY, "00_baseline"))})
    assert fig.dpi == plots.DPI


def test_velocity_errors_read_every_manifest_and_refuse_other_metrics():
    from wanopt.profiling import report

    errors = report.velocity_errors(["t2v-a14b-720p"])
    stages = list(analysis.stage_table("t2v-a14b-720p").index)
    assert list(errors.index.get_level_values("stage")) == stages
    for stage, row in errors.xs("t2v-a14b-720p").iterrows():
        e = analysis.load_manifest("t2v-a14b-720p", stage)["error_vs_baseline"]
        assert row["velocity rel L2"] == e["value"] and row["ok"] == (e["value"] <= e["tolerance"])
    with pytest.raises(ValueError, match="not the velocity metric"):  # the tiny traces hold the latents metric
        report.velocity_errors([TINY])


# -- FLOPs -------------------------------------------------------------------------------------------------------


def test_flop_counts_match_the_spec_tables():
    a14b = get_config("wan2.2-t2v-a14b").dit
    assert wan_eval_flops(a14b, 32760, per_token_time=True)["total"] / 1e15 == pytest.approx(1.69, abs=0.01)
    assert wan_eval_flops(a14b, 75600, per_token_time=True)["total"] / 1e15 == pytest.approx(6.55, abs=0.01)
    assert wan_eval_flops(get_config("wan2.1-t2v-1.3b").dit, 32760, False)["total"] / 1e15 == pytest.approx(
        0.283, abs=0.002)
    mg2 = causal_eval_flops(get_mg2_config("mg2-universal"), 3, 6)
    assert mg2["total"] / 1e12 == pytest.approx(10.1, abs=0.1)  # spec §5.4: ≈ 10.1 TFLOP per steady eval
    assert mg2["action"] / 1e9 == pytest.approx(15 * 55.5, rel=0.02)


def test_kernel_floor_prices_attention_at_its_own_ceiling():
    flops = {"attention": 600e12, "linear": 800e12, "total": 1400e12}
    assert kernel_floor_s(flops, gemm_tflops=800, attention_tflops=600) == pytest.approx(2.0)


# -- manifests ---------------------------------------------------------------------------------------------------

REQUIRED = ["workload", "stage", "stages_applied", "device", "versions", "date", "step", "timing", "compile_s",
            "peak_memory_gib", "flops_per_step", "ceilings", "mfu", "kernel_floor_ratio", "error_vs_baseline",
            "trace"]


@pytest.mark.parametrize("manifest", sorted(TRACES.glob("*/*/manifest.json")), ids=lambda p: f"{p.parent.parent.name}/{p.parent.name}")
def test_committed_manifests_hold_every_field_and_match_their_trace(manifest):
    m = json.loads(manifest.read_text())
    missing = [f for f in REQUIRED if f not in m]
    assert not missing, missing
    assert {"median", "min", "max", "n", "unit"} <= set(m["timing"]) and m["timing"]["min"] <= m["timing"]["median"]
    assert {"torch", "cuda", "driver"} <= set(m["versions"])
    assert {"gemm_tflops", "attention_tflops", "attention_backend"} <= set(m["ceilings"])
    assert {"metric", "value", "tolerance"} <= set(m["error_vs_baseline"])
    trace = manifest.parent / m["trace"]["file"]
    assert trace.exists() and sha256(trace) == m["trace"]["sha256"]
    assert m["workload"] == manifest.parent.parent.name and m["stage"] == manifest.parent.name


def test_frames_are_tidy():
    assert isinstance(analysis.stage_table("t2v-a14b-480p"), pd.DataFrame)


def test_attention_kernels_get_names_that_say_which_flashattention():
    """FA4's CuTe DSL kernel contains `flash_fwd` like FA2's; the label must not call it FA2."""
    from wanopt.profiling.analysis import short_kernel_name

    fa4 = ("kernel_cutlass_kernel_flash_attncuteflash_fwd_sm90FlashAttentionForwardSm90_object_at__tensor0000o1110"
           "1213_None_None__0")
    fa2 = "void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128, 64, 4, false, false, cutlass::bfloat16_t>>"
    assert short_kernel_name(fa4) == "flash_fwd_sm90 (FA4)"
    assert short_kernel_name(fa2) == "flash_fwd (FA2)"
