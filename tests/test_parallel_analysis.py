"""The multi-rank analyses on a synthetic two-rank trace written here (the GPU captures of the sequence-parallel
workloads do not exist yet): per rank, kernel types, communication/computation overlap, the all-to-all share of
the step, the straggler and the two ranks on one timeline; and the scaling table over the `-sp<N>` runs.

The step, in µs of GPU time, both ranks starting together: rank 1 computes 2 ms longer before the all-to-all, so
rank 0 enters it first and waits inside it (3 ms against rank 1's 1 ms); rank 0 also runs 1 ms of computation on a
second stream during its all-to-all. Every expected number below follows from this layout."""

import gzip
import json

import matplotlib
import pytest

from conftest import write_capture
from wanopt.profiling import analysis, plots

matplotlib.use("Agg")
WORKLOAD, STAGE = "t2v-a14b-720p-sp2", "09_sequence_parallel"
GEMM = "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64"
ATTENTION = "flash_fwd_kernel"
ELEMENTWISE = "void at::native::vectorized_elementwise_kernel<4, at::native::AddFunctor<float> >"
ALL_TO_ALL = "ncclDevKernel_AllToAll_RING_LL(ncclDevComm*, unsigned long, ncclWork*)"  # NCCL >= 2.19 names
ALL_GATHER = "ncclDevKernel_AllGather_RING_LL(ncclDevComm*, unsigned long, ncclWork*)"
# (name, stream, start µs, end µs) per rank
KERNELS = {
    0: [(GEMM, 7, 0, 4000), (ALL_TO_ALL, 7, 4000, 7000), (ELEMENTWISE, 20, 5000, 6000), (ATTENTION, 7, 7000, 9000),
        (ALL_GATHER, 7, 9000, 9500), ("Memcpy DtoD (Device -> Device)", 7, 9500, 9600)],
    1: [(GEMM, 7, 0, 6000), (ALL_TO_ALL, 7, 6000, 7000), (ATTENTION, 7, 7000, 9000), (ALL_GATHER, 7, 9000, 9500),
        ("Memcpy DtoD (Device -> Device)", 7, 9500, 9600)],
}
T0 = 1_000_000.0  # µs: the host starts the step here, the GPU 100 µs later


def write_rank_trace(path, rank, world=2):
    events = [{"ph": "X", "cat": "user_annotation", "name": "ProfilerStep#1", "pid": 100 + rank, "tid": 1,
               "ts": T0, "dur": 9800.0, "args": {"External id": 1}}]
    for i, (name, stream, start, end) in enumerate(KERNELS[rank]):
        corr = 1000 + i
        events.append({"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 100 + rank, "tid": 1,
                       "ts": T0 + 10 + i, "dur": 1.0, "args": {"correlation": corr, "External id": 2 + i}})
        cat = "gpu_memcpy" if name.startswith("Memcpy") else "kernel"
        events.append({"ph": "X", "cat": cat, "name": name, "pid": rank, "tid": stream, "ts": T0 + 100 + start,
                       "dur": float(end - start), "args": {"External id": 2 + i, "device": rank, "stream": stream,
                                                           "correlation": corr}})
    trace = {"schemaVersion": 1, "distributedInfo": {"rank": rank, "world_size": world, "backend": "nccl"},
             "traceEvents": events, "displayTimeUnit": "ms"}
    with gzip.open(path, "wt") as f:
        json.dump(trace, f)


def _manifest(workload, stage, step_ms, **extra):
    return {"workload": workload, "stage": stage, "run_id": "r1", "device": "NVIDIA H200", "stages_applied": [stage],
            "timing": {"median": step_ms, "n": 3}, "projection": {"total_s": 40 * step_ms / 1e3 + 30.0}, **extra}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("traces")
    sp2 = _manifest(WORKLOAD, STAGE, 11.0, rank_step_ms=[10.5, 11.0], slowest_rank=1,
                    single_gpu={"stage": "08_cuda_graphs", "step_ms": 20.0}, speedup_vs_single_gpu=20.0 / 11.0)
    write_capture(root, WORKLOAD, {"run_id": "r1", "world_size": 2},
                  {"08_cuda_graphs": _manifest(WORKLOAD, "08_cuda_graphs", 20.0), STAGE: sp2})
    for r in (0, 1):
        write_rank_trace(root / WORKLOAD / STAGE / f"rank{r}.pt.trace.json.gz", r)
    sp8 = _manifest("t2v-a14b-720p-sp8", STAGE, 3.2, rank_step_ms=[3.2] * 8, slowest_rank=0,
                    single_gpu={"stage": "08_cuda_graphs", "step_ms": 21.0}, speedup_vs_single_gpu=21.0 / 3.2)
    write_capture(root, "t2v-a14b-720p-sp8", {"run_id": "r2", "world_size": 8},
                  {"08_cuda_graphs": _manifest("t2v-a14b-720p-sp8", "08_cuda_graphs", 21.0), STAGE: sp8})
    return root


@pytest.fixture(scope="module")
def trace(root):
    return analysis.load_trace(WORKLOAD, STAGE, root)


def test_both_ranks_are_read_from_their_distributed_info(trace):
    assert analysis.trace_ranks(trace) == [0, 1]
    assert len(analysis.kernels(trace, 0)) == 6 and len(analysis.kernels(trace, 1)) == 5


def test_kernel_types_per_rank(trace):
    t = analysis.rank_kernel_types(trace)
    assert t.loc[0, "communication ms"] == 3.5 and t.loc[1, "communication ms"] == 1.5
    assert t.loc[0, "computation ms"] == 7.0 and t.loc[1, "computation ms"] == 8.0
    assert t.loc[0, "memory ms"] == t.loc[1, "memory ms"] == 0.1
    assert t.loc[1, "communication %"] == pytest.approx(100 * 1.5 / 9.6, abs=0.01)


def test_comm_comp_overlap_per_rank(trace):
    o = analysis.comm_comp_overlap(trace)["comm/comp overlap %"]
    assert o[0] == pytest.approx(100 * 1000 / 3500, abs=0.01)  # 1 ms of computation inside 3.5 ms of communication
    assert o[1] == 0


def test_all_to_all_share_of_the_step(trace):
    a = analysis.all_to_all_share(trace)
    assert a["step span ms"].tolist() == [9.6, 9.6]
    assert a["all-to-all ms"].tolist() == [3.0, 1.0] and a["all-to-all calls"].tolist() == [1, 1]
    assert a["other communication ms"].tolist() == [0.5, 0.5]
    assert a.loc[0, "all-to-all % of step"] == pytest.approx(100 * 3 / 9.6, abs=0.01)


def test_straggler_from_hta_and_from_the_manifest(root):
    s = analysis.stragglers(WORKLOAD, STAGE, root)
    assert s["slowest (manifest)"].tolist() == [False, True]
    # rank 1 enters the all-to-all last (HTA's own metric, over NCCL's newer kernel names too)
    assert s["HTA potential straggler"].tolist() == [False, True]
    with pytest.raises(ValueError, match="captured on one GPU"):
        analysis.stragglers(WORKLOAD, "08_cuda_graphs", root)


def test_both_ranks_on_one_timeline(trace):
    per_rank = analysis.rank_timelines(trace)
    (k0, w0), (k1, w1) = per_rank[0], per_rank[1]
    assert w0 == w1 == (0.0, 9600.0)  # the same clock: both ranks' steps start together
    assert k1.loc[k1["name"] == ALL_TO_ALL, "start_us"].item() == 6000.0
    fig = plots.rank_timelines(per_rank, title="two ranks")
    assert len(fig.axes) == 2 and tuple(fig.get_size_inches()) == (plots.WIDTH, 1.6 + 1.1 * 2 + 0.3)
    assert fig.dpi == plots.DPI
    matplotlib.pyplot.close(fig)


def test_scaling_table_over_the_captured_runs(root):
    official = {1: 1041.5, 4: 288.7, 8: 155.1}
    t = analysis.scaling_table("t2v-a14b-720p", root=root, official=official)
    assert t.index.tolist() == [1, 2, 8]  # one GPU from the 2-GPU run, then each captured run
    assert t["step ms"].tolist() == [20.0, 11.0, 3.2]
    assert t.loc[2, "speedup ×"] == pytest.approx(20 / 11, abs=0.01)
    assert t.loc[8, "efficiency"] == pytest.approx(21 / 3.2 / 8, abs=0.01)
    assert t.loc[8, "video s (projected)"] == pytest.approx(40 * 3.2e-3 + 30, abs=0.1)
    assert t.loc[8, "official Wan2.2 s"] == 155.1 and t.loc[2, "official Wan2.2 s"] != t.loc[2, "official Wan2.2 s"]
    with pytest.raises(analysis.MissingTraceError, match="torchrun --nproc-per-node 2"):
        analysis.scaling_table("t2v-1.3b-480p", root=root)


def test_sp_comparison_reads_the_run_against_its_own_single_gpu_stage(root):
    sp2 = json.loads((root / WORKLOAD / STAGE / "manifest.json").read_text())
    sp2["error_vs_single_gpu"] = {"value": 0.01, "tolerance": 0.05}
    sp2.update(world_size=2, peak_memory_gib=70.0)
    (root / WORKLOAD / STAGE / "manifest.json").write_text(json.dumps(sp2))
    row = analysis.sp_comparison([WORKLOAD], root=root).loc[WORKLOAD]
    assert row["single-GPU stage"] == "08_cuda_graphs" and row["1 GPU ms"] == 20.0 and row["GPUs"] == 2
    assert row["ms per rank"] == "10.5, 11.0" and row["slowest rank"] == 1
    assert row["speedup ×"] == pytest.approx(20 / 11, abs=0.01)
    assert row["efficiency"] == pytest.approx(10 / 11, abs=0.01)
    assert row["error vs 1 GPU"] == 0.01 and row["tolerance"] == 0.05
