"""The analysis, report and notebook helpers on the committed traces: the tiny-model traces (kilobytes, every
stage) and the Matrix-Game-2 baseline (one trace of three blocks). Structural checks only, so that they hold for
any re-capture of the same workloads."""

import json

import matplotlib
import numpy as np
import pandas as pd
import pytest

from wanopt.profiling import analysis, notebook, plots, report
from conftest import write_capture

matplotlib.use("Agg")
TINY = "tiny-t2v"
MG2 = "mg2-universal"


@pytest.fixture(scope="module")
def mg2():
    return analysis.load_trace(MG2, "00_baseline")


# -- TraceDiff: GPU kernels counted once --------------------------------------------------------------------------


def test_trace_diff_counts_each_gpu_kernel_once_and_only_gpu_events():
    """Inductor's host-side launch ops carry a `stream` argument and its kernel's name; HTA's TraceDiff counted
    them as GPU events (twice the calls of every triton_poi kernel) and listed the profiler's `Stream Sync`."""
    td = analysis.trace_diff(TINY, "06_fusion", "07_compile", top=1000)
    after = analysis.first_step(analysis.kernels(analysis.load_trace(TINY, "07_compile")))
    counts = after.groupby("short_name")["dur"].agg(["size", "sum"])
    inductor = [n for n in td.index if n.startswith("triton_poi")]
    assert inductor, "the compiled stage runs Inductor kernels"
    for name in td.index:
        assert td.loc[name, "07_compile calls"] == counts["size"].get(name, 0)
        assert td.loc[name, "07_compile ms"] == pytest.approx(counts["sum"].get(name, 0) / 1e3, abs=0.006)
    assert "Stream Sync" not in td.index
    assert set(td.index) <= set(after["short_name"]) | set(
        analysis.kernels(analysis.load_trace(TINY, "06_fusion"))["short_name"])
    assert td["07_compile calls"].dtype.kind == "i" and td["06_fusion calls"].dtype.kind == "i"
    assert not (np.signbit(td["Δ ms"]) & (td["Δ ms"] == 0)).any()  # no -0.0


def test_category_diff_has_no_negative_zero():
    cd = analysis.category_diff(TINY, "06_fusion", "07_compile")
    assert not (np.signbit(cd.to_numpy()) & (cd.to_numpy() == 0)).any()


# -- missing traces say why ----------------------------------------------------------------------------------------


def test_unknown_workload_names_the_known_ones():
    with pytest.raises(analysis.UnknownNameError, match="unknown workload 't2v-9b-480p'; known workloads: "
                                                        "t2v-1.3b-480p"):
        analysis.load_manifest("t2v-9b-480p", "00_baseline")


def test_unknown_stage_names_the_workloads_stages_and_suggests_no_capture():
    with pytest.raises(analysis.UnknownNameError) as err:
        analysis.load_trace("t2v-1.3b-480p", "08_compile")
    text = str(err.value)
    assert "unknown stage '08_compile'" in text and "07_compile" in text and "08_cuda_graphs" in text
    assert "python -m wanopt capture" not in text  # never a command for a stage that does not exist


def test_stage_the_run_did_not_capture_says_what_it_captured(tmp_path):
    with pytest.raises(analysis.MissingTraceError) as err:
        analysis.load_trace("t2v-a14b-720p", "03_tf32")
    text = str(err.value)
    captured = json.loads((analysis.TRACES / "t2v-a14b-720p" / "capture.json").read_text())["stages_captured"]
    assert "not captured in that run" in text and ", ".join(captured) in text
    assert "python -m wanopt capture --workload t2v-a14b-720p --stages 03_tf32" in text
    # a run without capture.json: the stage folders say what it captured
    (tmp_path / "tiny-t2v" / "00_baseline").mkdir(parents=True)
    (tmp_path / "tiny-t2v" / "00_baseline" / "manifest.json").write_text("{}")
    with pytest.raises(analysis.MissingTraceError, match="it captured: 00_baseline"):
        analysis.load_manifest("tiny-t2v", "06_fusion", root=tmp_path)
    with pytest.raises(analysis.MissingTraceError, match="has no capture"):
        analysis.load_run("t2v-1.3b-480p", root=tmp_path)


def test_stage_comparison_rejects_unknown_and_uncaptured_stages():
    with pytest.raises(analysis.UnknownNameError, match="unknown stage '08_compile'.*07_compile"):
        report.stage_comparison("08_compile")
    with pytest.raises(analysis.MissingTraceError, match="captured in no run"):
        report.stage_comparison("03_tf32", workloads=["t2v-a14b-720p"])
    cmp = report.stage_comparison("06_fusion", workloads=["t2v-a14b-720p", TINY])
    assert list(cmp.index) == ["t2v-a14b-720p", TINY]
    assert cmp.loc["t2v-a14b-720p", "previous stage"] == "00_baseline"


# -- host spans, idle time and per-label tables (the Matrix-Game-2 notebook's helpers) ------------------------------


def test_spans_and_the_gpu_work_launched_inside(mg2):
    k = analysis.kernels(mg2)
    evals = analysis.spans(mg2, pattern="denoise_eval|cache_refresh")
    assert len(evals) and set(evals["name"]) == {"denoise_eval", "cache_refresh"}
    one = evals.iloc[[0]]
    inside = analysis.launched_in(k, one)
    assert len(inside) and ((inside["launch_ts"] >= one["ts"].iloc[0]) & (inside["launch_ts"] <= one["end"].iloc[0])).all()
    assert analysis.span_window(k, one) == (inside["start_us"].min(), inside["end_us"].max())
    step3 = analysis.spans(mg2, name="block03", iteration=3, within=analysis.spans(mg2, name="denoise_eval",
                                                                                    iteration=3).iloc[[0]])
    assert len(step3) == 1 and (step3["iteration"] == 3).all()
    assert analysis.inside([], evals).shape == (0,)


def test_span_table_counts_one_sync_and_one_copy_per_item(mg2):
    """Every .item() of the baseline is one device-to-host copy and one cudaStreamSynchronize."""
    tab = analysis.span_table(mg2, "denoise_eval|cache_refresh")
    assert list(tab.index.names) == ["step", "label", "#"]
    assert (tab["host syncs"] == tab["D2H copies"]).all() and (tab["host syncs"] > 0).all()
    assert (tab["GPU events"] > 0).all() and ((tab["GPU idle %"] >= 0) & (tab["GPU idle %"] <= 100)).all()
    steps = analysis.span_table(mg2, r"ProfilerStep#\d+")
    assert steps["GPU events"].sum() == len(analysis.kernels(mg2))


def test_idle_summary_gaps_and_histogram(mg2):
    k = analysis.launched_in(analysis.kernels(mg2), analysis.spans(mg2, pattern=r"ProfilerStep#\d+", iteration=3))
    s = analysis.idle_summary(k)
    g = analysis.gaps(k)
    wall = k["end_us"].max() - k["start_us"].min()
    assert s["traced ms"] == pytest.approx(wall / 1e3)
    # on one stream the kernels plus the gaps between them fill the span
    assert s["kernel ms"] + g["gap_us"].sum() / 1e3 == pytest.approx(s["traced ms"], rel=1e-6)
    assert 0 <= s["idle that waits for a launch %"] <= 100
    h = analysis.gap_histogram(k)
    assert h["gaps"].sum() == int((g["gap_us"] > 0).sum()) and list(h.index)[-1] == "> 100"


def test_label_breakdown_splits_each_label_by_kind_of_kernel(mg2):
    labels = ["self_attn", "cross_attn", "ffn"]
    tab = analysis.label_breakdown(mg2, labels, iteration=3,
                                   outside={"block, outside": (r"block\d\d", labels + ["action"])})
    parts = tab[["GEMM ms", "attention ms", "small-op ms"]].sum(axis=1)
    assert np.allclose(parts, tab["GPU ms"])
    assert (tab.loc[labels, "calls"] > 0).all() and tab.loc["self_attn", "attention ms"] > 0
    assert tab["share %"].sum() < 100 and tab.loc["block, outside", "GPU ms"] >= 0
    by_label = analysis.gpu_time_by_label(mg2, "self_attn", iteration=3)
    assert tab.loc["self_attn", "GPU ms"] == pytest.approx(by_label.loc["self_attn", "gpu_ms"], abs=0.01)


def test_runtime_calls_and_launch_counts():
    a = analysis.load_trace(TINY, "07_compile")
    syncs = analysis.runtime_calls(a, "Synchronize")
    assert len(syncs) and syncs["name"].str.contains("Synchronize").all()
    launches = analysis.launch_calls(a)
    assert launches.sum() > 0 and all("Launch" in n for n in launches.index)
    graphs = analysis.launch_calls(analysis.load_trace(TINY, "08_cuda_graphs"))
    assert "cudaGraphLaunch" in graphs.index


def test_kernel_launch_config_reads_the_profilers_fields():
    cfg = analysis.kernel_launch_config(TINY, "06_fusion", ["_norm_modulate_kernel", "_rmsnorm_rope_kernel"])
    k = analysis.kernels(analysis.load_trace(TINY, "06_fusion"))
    assert len(cfg) == k["short_name"].isin(["_norm_modulate_kernel", "_rmsnorm_rope_kernel"]).sum()
    assert (cfg["registers / thread"] > 0).all() and (cfg["threads / block"] > 0).all()


# -- both capture formats -------------------------------------------------------------------------------------------




def test_stage_choice_reads_the_older_runs():
    for w in report.T2V_WORKLOADS:
        run = analysis.load_run(w)
        assert analysis.attention_choice(w) == run["ceilings"]["attention_backend"]
        c = analysis.stage_choice(w, "05_attention")
        assert c["evidence"]["tflops"]["self"] == run["ceilings"]["attention"]
    g = analysis.gelu_choice("t2v-a14b-720p")  # measured, and slower at 720p in that run
    run = analysis.load_run("t2v-a14b-720p")
    if "ffn_gelu" in run:
        assert g["measured"] and g["used"] == run["ffn_gelu"]["gelu_epilogue"]
    old = analysis.gelu_choice("t2v-a14b-480p")  # predates the measured choice: GELU ran as its own kernel
    assert old == {"used": False, "measured": False, "separate_ms": None, "epilogue_ms": None, "shape": None,
                   "relative_l2": None}


def test_stage_choice_reads_the_newer_format(tmp_path):
    timings = {"separate_ms": 3.0, "epilogue_ms": 2.5, "shape": [4, 8, 16], "relative_l2": 1e-3,
               "gelu_epilogue": True}
    attention = {"options": {"backend": "cudnn"}, "evidence": {"measured": True, "tflops": {"self": {"cudnn": 9}}}}
    fusion = {"options": {"gelu_epilogue": True}, "evidence": {"measured": True, "ffn_gelu": timings}}
    run = {"run_id": "r", "family": "t2v", "stages_captured": ["06_fusion"],
           "choices": {"05_attention": attention, "06_fusion": fusion}, "ceilings": {"attention_backend": "flash"},
           "alternatives": {"07_compile": {"label": "whole_model_compile", "timing": {"median": 1.0},
                                           "compile_s": 9.0, "warmup_ms": 10.0}}}
    write_capture(tmp_path, TINY, run, {"06_fusion": {"choice": fusion}})
    assert analysis.attention_choice(TINY, root=tmp_path) == "cudnn"  # not captured: capture.json's choices
    assert analysis.gelu_choice(TINY, root=tmp_path) == {"used": True, "measured": True, "separate_ms": 3.0,
                                                         "epilogue_ms": 2.5, "shape": [4, 8, 16],
                                                         "relative_l2": 1e-3}
    assert analysis.stage_choice(TINY, "06_fusion", root=tmp_path)["recorded"] == "choice"
    assert analysis.whole_model_compile(run) == {"timing": {"median": 1.0}, "compile_s": 9.0, "warmup_ms": 10.0}
    with pytest.raises(ValueError, match="makes no choice"):
        analysis.stage_choice(TINY, "03_tf32", root=tmp_path)


def test_whole_model_compile_in_both_formats():
    run = analysis.load_run("t2v-1.3b-480p")
    whole = analysis.whole_model_compile(run)
    assert whole is not None and whole["timing"]["median"] > 0 and whole["compile_s"] > 0
    assert analysis.whole_model_compile({"alternatives": {}}) is None
    assert analysis.whole_model_compile({"compile_whole_model": {"timing": {"median": 2}, "compile_s": 1,
                                                                 "warmup_ms": 3}})["compile_s"] == 1


def test_first_block_ratio_in_both_formats():
    m = analysis.load_manifest(MG2, "00_baseline")
    expected = m["first_block"].get("vs_steady_block") or m["first_block"]["timing"]["median"] / m["timing"]["median"]
    assert analysis.first_block_vs_steady(m) == pytest.approx(expected)
    assert analysis.first_block_vs_steady({"first_block": {"vs_steady_block": 1.5, "timing": {"median": 1}},
                                           "timing": {"median": 1}}) == 1.5


def test_provenance_names_the_commit_and_wraps_between_words():
    for w, stage in (("t2v-a14b-480p", "02_batched_cfg"), (MG2, "00_baseline"), (TINY, "00_baseline"),
                     ("t2v-a14b-720p-sp2", "09_sequence_parallel")):
        m = analysis.load_manifest(w, stage)
        text = analysis.provenance(m)
        commit = (m.get("versions") or {}).get("git_commit") or "not recorded"
        assert f"commit {commit}" in text and m["run_id"] in text and m["device"] in text
        lines = text.splitlines()
        assert all(len(line) <= 110 for line in lines)
        words = " ".join(line.strip() for line in lines).split()
        assert {w.rstrip(";") for w in m["step"].split()} <= {w.rstrip(";") for w in words}  # no word cut in two
        driver = (m.get("versions") or {}).get("driver")
        if driver:  # a 2-GPU run recorded the driver once per GPU: said once
            assert text.count(driver.split()[0]) == 1


def test_best_stage_and_peer():
    table = analysis.stage_table("t2v-1.3b-480p")
    assert analysis.best_stage("t2v-1.3b-480p") == table["step ms"].idxmin()
    run = analysis.load_run("t2v-1.3b-480p")
    best = analysis.best_peer(run)
    assert best is not None and all(run["peers"][best]["timing"]["median"] <= p["timing"]["median"]
                                    for p in analysis.peers(run).values())
    assert analysis.best_peer(analysis.load_run(MG2)) is None


# -- report: the live tiny Matrix-Game-2 model ----------------------------------------------------------------------


def test_count_item_calls_counts_per_forward():
    import torch

    class Model(torch.nn.Module):
        def forward(self, x):
            return x.sum().item() + x.max().item()

    model = Model()
    with report.count_item_calls(model, extra=lambda: {"seen": 1}) as calls:
        model(torch.ones(3))
        torch.ones(1).item()  # outside a forward: not attributed to one
        model(torch.ones(2))
    assert calls == [{"item calls": 2, "seen": 1}, {"item calls": 2, "seen": 1}]
    assert torch.Tensor.item(torch.ones(1)) == 1.0 and not model._forward_hooks  # restored, hooks removed


def test_tiny_mg2_item_calls_and_the_cache_window():
    from wanopt.configs import get_mg2_config

    live = report.tiny_mg2_item_calls(blocks=3)
    config = get_mg2_config("mg2-tiny")
    per_block = len(live) // 3
    assert list(live.index.names) == ["block", "eval", "#"] and len(live) == 3 * per_block
    assert (live[".item() calls"] > 0).all()
    assert np.allclose(live["per cached attention"] * report.cached_attentions(config), live[".item() calls"])
    keys = live["self-attention keys"].to_numpy()
    assert keys[0] < keys[-1] and keys[-1] == keys[-per_block]  # the window fills, then stays full
    assert report.tiny_mg2_eviction_error() == 0.0


# -- figures and table display ----------------------------------------------------------------------------------


def _bbox(artist, fig):
    return artist.get_window_extent(fig.canvas.get_renderer())


def test_category_bars_legend_clears_the_axis_label():
    cb = {s: analysis.category_breakdown(analysis.load_trace(TINY, s)) for s in ("00_baseline", "06_fusion")}
    fig = plots.category_bars(cb, "tiny")
    fig.canvas.draw()
    ax = fig.axes[0]
    legend = fig.legends[0]
    assert _bbox(legend, fig).y1 <= _bbox(ax.xaxis.label, fig).y0  # below the x label, not over it
    assert tuple(fig.get_size_inches()) == (plots.WIDTH, pytest.approx(1.9 + 0.42 * 2)) and fig.dpi == plots.DPI


def test_waterfall_labels_combined_bars_and_ends_on_the_fastest_stage():
    labels = report.waterfall_labels("t2v-a14b-720p")
    assert "combined" in labels["06_fusion"] and "07_compile" not in labels
    fig = report.stage_waterfall("t2v-a14b-720p")
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert ticks[-1].startswith(f"final: {analysis.best_stage('t2v-a14b-720p')}")
    assert any("combined" in t for t in ticks)
    assert report.device_of("t2v-a14b-720p") in fig.axes[0].get_title(loc="left")


def test_timeline_titles_name_the_workload_and_the_device():
    fig = report.step_timelines(TINY, "06_fusion", "07_compile")
    title = fig._suptitle.get_text()
    assert TINY in title and report.device_of(TINY) in title


def test_tidy_shows_tables_as_a_reader_wants_them():
    df = pd.DataFrame({"met": [True, False, None], "tolerance": [0.0, 1e-6, 0.05], "calls": [60.0, 30.0, np.nan],
                       "Δ ms": [-0.0, 1.25, -2.5], "what": ["a", None, "c"]})
    t = notebook.tidy(df)
    assert list(t["met"]) == ["yes", "no", "—"]
    assert list(t["tolerance"]) == ["0", "1e-06", "0.05"]
    assert list(t["calls"]) == ["60", "30", "—"]
    assert list(t["Δ ms"]) == ["0", "1.25", "-2.50"]
    assert list(t["what"]) == ["a", "—", "c"]
    s = notebook.tidy(pd.Series([1.0, np.nan]))
    assert list(s) == ["1", "—"]


def test_mg2_stage_numbers_come_from_the_manifests():
    from wanopt.profiling import report

    stages = ["00_baseline", "01_host_cache_indices"]
    table = report.mg2_stage_numbers("mg2-universal", stages)
    for stage in stages:
        m = analysis.load_manifest("mg2-universal", stage)
        assert table.loc[stage, "block median"] == round(m["timing"]["median"], 1)
        assert table.loc[stage, "first block"] == round(m["first_block"]["timing"]["median"], 1)
        assert table.loc[stage, "x0 error"] == m["error_vs_baseline"]["value"]


def test_mg2_block_budget_adds_up_to_the_block_and_to_the_manifests_floor():
    from wanopt.profiling import report

    budget = report.mg2_block_budget("mg2-universal", "07_cuda_graphs")
    m = analysis.load_manifest("mg2-universal", "07_cuda_graphs")
    # rounded to 0.1 ms per row: sums agree within the rounding of the rows
    assert abs(budget.loc["block (profiled)", "floor ms"] - m["kernel_floor_ms"]) <= 0.15
    parts = budget.drop("block (profiled)")
    assert abs(parts["measured ms"].sum() - budget.loc["block (profiled)", "measured ms"]) <= 0.3
    assert (parts["measured ms"] >= 0).all() and budget.loc["GEMM", "measured ms"] > 0


def test_mg2_cold_starts_are_the_stages_that_measured_one():
    from wanopt.profiling import report

    table = report.mg2_cold_starts("mg2-universal")
    measured = [s for s in analysis.stage_table("mg2-universal").index
                if analysis.load_manifest("mg2-universal", s).get("cold_start")]
    assert list(table.index) == measured and measured
    phases = table["build s"] + table["apply stages s"] + table["block 0 (compile, graph capture) s"]
    assert (table["process → block 0 out s"] >= phases - 0.2).all()  # the phases are inside the child's lifetime
