"""python -m wanopt capture --workload W --stages all --out traces/: a named workload's stages on a GPU.

One call is one capture run: the workload's runner (T2V: a denoising step; Matrix-Game-2: a block) and the
family-agnostic harness (wanopt.profiling.harness) measure the ceilings, then apply the stages cumulatively in the
workload's order and capture the ones asked for. Optional in the same run: diffusers' peers (T2V) and each
stage's alternative (whole-model against regional compile).

A workload of world size N (`t2v-a14b-720p-sp2`) runs under `torchrun --nproc-per-node N -m wanopt capture ...`:
one process per GPU, joined here (wanopt.parallel) before anything is built.
"""

from __future__ import annotations

from pathlib import Path

from .. import parallel
from ..configs import WORKLOADS, get_workload
from ..models.layers import check_attention_backend
from ..stages import choose_attention, choose_mg2_attention
from ..stages import plan as make_plan
from .harness import CaptureNeedsGPU, require_cuda, run_plan
from .mg2 import MG2Runner
from .t2v import T2VRunner

RUNNERS = {"t2v": T2VRunner, "mg2": MG2Runner}


def check_request(workload: str, stages="all", peers: bool = False, attention_backend: str | None = None):
    """The workload and its plan, or a KeyError / ValueError that names the problem and the choices: everything a
    capture is asked can be checked before anything needs a GPU."""
    wl = get_workload(workload)
    plan = make_plan(wl.name, stages)
    if attention_backend is not None:
        check_attention_backend(attention_backend)
        if not any(s.choose in (choose_attention, choose_mg2_attention) for s in plan.stages):
            raise ValueError(f"--attention-backend: no stage of {wl.name} chooses an attention kernel (stages: "
                             f"{', '.join(s.name for s in plan.stages)})")
    if peers and wl.family != "t2v":
        raise ValueError(f"--peers: diffusers' peer is a text-to-video model; {wl.name} is {wl.family}")
    check_world_size(wl)
    return wl, plan


def check_world_size(wl):
    """The workload's world size against the processes torchrun started (WORLD_SIZE; 1 without torchrun)."""
    started = parallel.env_world_size()
    if started == wl.world_size:
        return
    if wl.world_size > 1:
        raise ValueError(
            f"{wl.name} spreads over {wl.world_size} GPUs (world size {wl.world_size}) but this run has "
            f"{'WORLD_SIZE=' + str(started) if parallel.launched_by_torchrun() else 'one process (no torchrun)'}: "
            f"run `torchrun --nproc-per-node {wl.world_size} -m wanopt capture --workload {wl.name} ...`")
    multi = [w for w, x in WORKLOADS.items() if x.world_size == started]
    raise ValueError(f"{wl.name} runs on one GPU (world size 1) but torchrun started WORLD_SIZE={started} processes: "
                     f"run it without torchrun (python -m wanopt capture ...), or pick a workload of world size "
                     f"{started}: {', '.join(multi) or 'none exists'}")


def capture(workload: str, stages="all", out="traces", checkpoint=None, seed: int = 0, profile: bool = True,
            peers: bool = False, compare_alternatives: bool = False, allow_cpu: bool = False,
            progress: bool = True, attention_backend: str | None = None) -> dict:
    """Capture a workload (see the module docstring); returns the run summary also written to
    <out>/<workload>/capture.json. Names are checked before anything needs a GPU.

    attention_backend forces the attention stage's kernel instead of the fastest measured: to try a newly
    installed kernel through the later stages in a short run before a long one."""
    wl, plan = check_request(workload, stages, peers, attention_backend)
    if not allow_cpu:
        require_cuda()
    joined = wl.world_size > 1 and not parallel.is_distributed()
    if wl.world_size > 1:
        parallel.init_from_env()  # NCCL on GPUs, gloo on CPUs (allow_cpu: the tiny workload in CI)
    runner = RUNNERS[wl.family](wl, checkpoint=checkpoint, seed=seed)
    before = None
    if peers:
        from .peers import capture_peers

        before = capture_peers
    forced = {"attention_backend": attention_backend} if attention_backend else {}
    summary = run_plan(runner, plan, Path(out), profile=profile, progress=progress, forced=forced,
                       compare_alternatives=compare_alternatives, before_stages=before)
    if joined:  # not after an exception: a rank that left a collective would wait here for the others
        parallel.destroy()
    return summary


__all__ = ["capture", "check_request", "check_world_size", "CaptureNeedsGPU", "require_cuda", "RUNNERS"]
