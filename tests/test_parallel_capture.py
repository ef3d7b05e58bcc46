"""The capture under torchrun, on the CPU: the tiny sequence-parallel workload as a gloo world of two processes
(what the GPU machines run with NCCL). One capture serves every check: a single-GPU stage captured on rank 0 alone,
the sequence-parallel stage on both ranks, a trace per rank, rank 0's manifest and capture.json. Stage 04 is the
single-GPU reference here (not 08 as on the GPU): the tiny blocks then compile once, in the sharded stage's
warm-up, which keeps the run near 20 s on two cores."""

import gzip
import json
import subprocess
import sys

import pytest

from wanopt.profiling.launch import run_capture, torchrun_command

WORKLOAD, SINGLE, SP = "tiny-t2v-sp2", "04_dtype_hygiene", "09_sequence_parallel"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sp-capture")
    done = run_capture(WORKLOAD, f"{SINGLE},{SP}", out)
    folder = out / WORKLOAD
    return {"folder": folder, "stdout": done.stdout,
            "manifest": json.loads((folder / SP / "manifest.json").read_text()),
            "single": json.loads((folder / SINGLE / "manifest.json").read_text()),
            "summary": json.loads((folder / "capture.json").read_text())}


def _distributed_info(path):
    with gzip.open(path) as f:
        return json.load(f)["distributedInfo"]


def test_each_rank_writes_its_trace_and_says_which_rank_it_is(run):
    folder = run["folder"] / SP
    infos = [_distributed_info(folder / f"rank{r}.pt.trace.json.gz") for r in (0, 1)]
    assert [i["rank"] for i in infos] == [0, 1]
    assert all(i["world_size"] == 2 and i["backend"] == "gloo" for i in infos)
    files = run["manifest"]["trace"]["ranks"]
    assert [f["file"] for f in files] == ["rank0.pt.trace.json.gz", "rank1.pt.trace.json.gz"]
    assert len({f["sha256"] for f in files}) == 2  # two traces, not one written twice


def test_the_single_gpu_stage_is_captured_on_rank_0_alone(run):
    folder = run["folder"] / SINGLE
    assert sorted(p.name for p in folder.glob("*.pt.trace.json.gz")) == ["rank0.pt.trace.json.gz"]
    assert _distributed_info(folder / "rank0.pt.trace.json.gz") == {"rank": 0, "world_size": 1}
    assert "world_size" not in run["single"]


def test_rank_0_records_every_rank_and_the_slowest(run):
    m = run["manifest"]
    assert m["world_size"] == 2 and run["summary"]["world_size"] == 2
    per_rank = m["rank_step_ms"]
    assert len(per_rank) == 2 and all(t > 0 for t in per_rank)
    assert m["slowest_rank"] == per_rank.index(max(per_rank))
    assert m["timing"]["median"] == max(per_rank)  # a step ends with its slowest rank
    assert [t["n"] for t in m["rank_timing"]] == [m["timing"]["n"]] * 2  # as many repeats on each rank
    row = run["summary"]["stages"][SP]
    assert row["slowest_rank"] == m["slowest_rank"] and row["rank_step_ms"] == per_rank


def test_speedup_and_error_against_the_single_gpu_stage_of_the_same_run(run):
    m, single = run["manifest"], run["single"]
    assert m["run_id"] == single["run_id"]
    assert m["single_gpu"] == {"stage": SINGLE, "step_ms": single["timing"]["median"]}
    assert m["speedup_vs_single_gpu"] == pytest.approx(single["timing"]["median"] / m["timing"]["median"])
    e = m["error_vs_single_gpu"]
    assert e["reference"] == SINGLE and f"vs {SINGLE} on one GPU" in e["metric"]
    assert e["value"] is not None and 0 <= e["value"] <= e["tolerance"] == 5e-2 and e["ok"] is True
    # no baseline in this run: no error against it, said so
    assert m["error_vs_baseline"]["value"] is None and "not measured" in m["error_vs_baseline"]["metric"]
    assert m["projection"]["steps_ms"] == pytest.approx(m["projection"]["steps"] * m["timing"]["median"])
    assert "sharded over 2 processes" in m["step"]


def test_a_world_size_that_does_not_match_the_workload_is_refused_before_anything_is_built():
    out = subprocess.run([sys.executable, "-m", "wanopt", "capture", "--workload", WORKLOAD, "--allow-cpu"],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert f"{WORKLOAD} spreads over 2 GPUs" in out.stderr and "one process (no torchrun)" in out.stderr
    assert f"torchrun --nproc-per-node 2 -m wanopt capture --workload {WORKLOAD}" in out.stderr
    out = subprocess.run(torchrun_command("tiny-t2v", "04_dtype_hygiene", "unused", allow_cpu=True, nproc=2),
                         capture_output=True, text=True)
    assert out.returncode != 0
    assert "tiny-t2v runs on one GPU (world size 1) but torchrun started WORLD_SIZE=2" in out.stderr
    assert WORKLOAD in out.stderr  # the workloads of that world size
