"""The targets per workload (wanopt.targets) and their evaluation against the committed runs and against runs in
the newer capture format."""

import json

import pandas as pd
import pytest

from wanopt import targets
from wanopt.configs import WORKLOADS
from wanopt.profiling import analysis
from conftest import write_capture

REAL = ["t2v-1.3b-480p", "t2v-a14b-480p", "t2v-a14b-720p", "mg2-universal"]
SEQUENCE_PARALLEL = ["t2v-a14b-720p-sp2", "t2v-a14b-720p-sp8"]  # targets of runs not captured yet
END_TO_END = ["mg2-universal-e2e"]


def test_every_real_workload_has_its_targets_and_no_other_does():
    assert sorted(targets.TARGETS) == sorted(REAL + SEQUENCE_PARALLEL + END_TO_END)
    assert set(targets.TARGETS) <= set(WORKLOADS)
    for w, ts in targets.TARGETS.items():
        assert ts and all(t.workload == w and t.metric in targets.METRICS for t in ts)
    assert targets.targets("tiny-t2v") == []
    assert targets.goal("t2v-a14b-480p", "video_s") == 200.0
    assert targets.goal("t2v-a14b-720p", "peak_gib_resident") == 76.0
    assert targets.goal("mg2-universal", "block_ms") == 80.0
    with pytest.raises(KeyError, match="no 'video_s' target"):
        targets.goal("mg2-universal", "video_s")


def test_reference_claims():
    assert targets.REFERENCE["mg2_claimed_fps"] == 25.0
    assert targets.REFERENCE["wan22_official_offload_s"] == {"t2v-a14b-480p": 326.9, "t2v-a14b-720p": 1041.5}


def test_evaluate_the_committed_runs():
    table = targets.evaluate(REAL)
    assert list(table.columns) == ["goal", "measured", "unit", "met", "gap %", "stage", "run", "device"]
    assert len(table) == sum(len(targets.TARGETS[w]) for w in REAL)
    for (w, what), row in table.iterrows():
        t = next(t for t in targets.TARGETS[w] if t.what == what)
        assert row["stage"] == analysis.best_stage(w)
        if row["measured"] is None or row["measured"] != row["measured"]:
            assert row["met"] is None
            continue
        assert row["met"] == (row["measured"] <= t.goal if t.lower_is_better else row["measured"] >= t.goal)
        assert (row["gap %"] >= 0) == row["met"]
    best = analysis.load_manifest("t2v-a14b-720p", analysis.best_stage("t2v-a14b-720p"))
    video = table.loc[("t2v-a14b-720p", "40-step video projected ≤ 820 s")]
    assert video["measured"] == pytest.approx(best["projection"]["total_s"], abs=1e-3)
    assert video["gap %"] == pytest.approx(100 * (820 - best["projection"]["total_s"]) / 820, abs=0.05)
    run = analysis.load_run("t2v-1.3b-480p")
    m = analysis.load_manifest("t2v-1.3b-480p", analysis.best_stage("t2v-1.3b-480p"))
    peer = table.loc[("t2v-1.3b-480p", "each step ≥ 1.2× faster than the best diffusers peer"), "measured"]
    assert peer == pytest.approx(run["peers"][analysis.best_peer(run)]["timing"]["median"] / m["timing"]["median"],
                                 abs=1e-3)




def _manifest(stage, median, **extra):
    return {"workload": "mg2-universal", "stage": stage, "run_id": "r1", "device": "NVIDIA H200",
            "stages_applied": ["00_baseline"] if stage == "00_baseline" else ["00_baseline", stage],
            "timing": {"median": median, "n": 10}, "speedup_vs_baseline": None, "speedup_vs_previous": None,
            "mfu": 0.5, "kernel_floor_ratio": 1.5, "peak_memory_gib": 4.0, "compile_s": 0.0,
            "error_vs_baseline": {"value": 0.0, "tolerance": 0.0}, **extra}


def test_evaluate_a_newer_mg2_run(tmp_path):
    """The newer Matrix-Game-2 manifest records first_block.vs_steady_block; the frames/s target reads dit_fps.
    End to end is its own workload, measured where the run records `e2e.fps`."""
    base = _manifest("00_baseline", 300.0, dit_fps=40.0,
                     first_block={"timing": {"median": 330.0}, "vs_steady_block": 1.1})
    fast = _manifest("09_fast", 60.0, dit_fps=200.0,
                     first_block={"timing": {"median": 63.0}, "vs_steady_block": 1.05})
    write_capture(tmp_path, "mg2-universal", {"run_id": "r1", "family": "mg2"}, {"00_baseline": base, "09_fast": fast})
    table = targets.evaluate("mg2-universal", root=tmp_path).droplevel("workload")
    assert (table["stage"] == "09_fast").all()
    assert table.loc["≥ 5× faster than the baseline of the same run", "measured"] == 5.0
    assert table.loc["first block within 1.1× of the steady block", "measured"] == 1.05
    assert table["met"].tolist() == [True, True, True, True]
    e2e = {**_manifest("12_overlap", 140.0, e2e={"fps": 12 / 0.140}), "workload": "mg2-universal-e2e"}
    write_capture(tmp_path, "mg2-universal-e2e", {"run_id": "r1", "family": "mg2"},
                  {"00_baseline": {**base, "workload": "mg2-universal-e2e"}, "12_overlap": e2e})
    row = targets.evaluate("mg2-universal-e2e", root=tmp_path).iloc[0]
    assert row["stage"] == "12_overlap" and row["measured"] == pytest.approx(85.71, abs=0.01) and row["met"]
    del e2e["e2e"]
    (tmp_path / "mg2-universal-e2e" / "12_overlap" / "manifest.json").write_text(json.dumps(e2e))
    row = targets.evaluate("mg2-universal-e2e", root=tmp_path).iloc[0]
    assert row["met"] is None and pd.isna(row["gap %"])  # not measured: no verdict, no gap


def test_memory_target_needs_both_experts_resident(tmp_path):
    m = {"workload": "t2v-a14b-720p", "stage": "00_baseline", "run_id": "r", "device": "x",
         "stages_applied": ["00_baseline"], "timing": {"median": 1.0, "n": 3}, "speedup_vs_baseline": None,
         "speedup_vs_previous": None, "mfu": 0.4, "kernel_floor_ratio": 2.0, "peak_memory_gib": 60.0,
         "compile_s": 0.0, "error_vs_baseline": {"value": 0.0, "tolerance": 0.0},
         "step": "one denoising step; offload on: one expert resident", "projection": {"total_s": 1000.0}}
    write_capture(tmp_path, "t2v-a14b-720p", {"run_id": "r"}, {"00_baseline": m})
    row = targets.evaluate("t2v-a14b-720p", root=tmp_path).iloc[0]
    assert row["measured"] is None or row["measured"] != row["measured"]


def test_sequence_parallel_target_is_the_speedup_over_one_gpu_of_the_same_run(tmp_path):
    assert targets.goal("t2v-a14b-720p-sp2", "vs_single_gpu") == 1.85
    assert targets.REFERENCE["wan22_official_by_gpus_s"]["t2v-a14b-720p"] == {1: 1041.5, 4: 288.7, 8: 155.1}
    single = {**_manifest("08_cuda_graphs", 20000.0), "workload": "t2v-a14b-720p-sp2"}
    sp = {**_manifest("09_sequence_parallel", 11000.0), "workload": "t2v-a14b-720p-sp2",
          "speedup_vs_single_gpu": 20000.0 / 11000.0}
    write_capture(tmp_path, "t2v-a14b-720p-sp2", {"run_id": "r1"}, {"08_cuda_graphs": single,
                                                                    "09_sequence_parallel": sp})
    row = targets.evaluate("t2v-a14b-720p-sp2", root=tmp_path).iloc[0]
    assert row["stage"] == "09_sequence_parallel" and row["measured"] == pytest.approx(1.818, abs=1e-3)
    assert not row["met"] and row["gap %"] == pytest.approx(100 * (20 / 11 - 1.85) / 1.85, abs=0.05)
