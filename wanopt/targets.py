"""The performance targets per workload, as data, and their evaluation against a capture run's manifests.

The targets are the project's workloads spec, stated here so that the repository carries them itself: the
notebooks, the README and the tests read them from this module, never from a copy typed into prose. Each target
is measured on the run's fastest captured stage (the one the README quotes), from numbers of that one run:

    t2v-1.3b-480p   one eval within 1.10× of the kernel floor; each step ≥ 1.2× faster than the best diffusers peer
    t2v-a14b-480p   ≥ 1.2× faster per step than the best diffusers peer; the full 40-step video (T5 + DiT + VAE,
                    no offload) projected ≤ 200 s
    t2v-a14b-720p   peak memory ≤ 76 GiB with both experts resident; the full video projected ≤ 820 s
    ...-720p-sp2    sequence parallel: 2 GPUs ≥ 1.85× faster per step than 1 GPU in the same run
    ...-720p-sp8    sequence parallel: 8 GPUs, a 40-step video projected ≤ 120 s
    mg2-universal   a steady block ≤ 80 ms DiT-only (≥ 150 generated frames/s) and ≥ 5× faster than the baseline of
                    the same run; the first block within 1.1× of the steady block
    mg2-universal-e2e  end to end with the streaming VAE decode ≥ 80 frames/s

REFERENCE holds the outside claims the notebooks compare with (upstream's numbers, not targets, not measured here).

    evaluate("t2v-a14b-720p")    # one row per target: target, goal, measured, met, gap %
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd


@dataclass(frozen=True)
class Target:
    workload: str
    what: str  # the target in words, as the table shows it
    metric: str  # what is measured (a key of METRICS)
    goal: float
    lower_is_better: bool
    unit: str


TARGETS: dict[str, list[Target]] = {
    "t2v-1.3b-480p": [
        Target("t2v-1.3b-480p", "one eval within 1.10× of the kernel floor", "floor_ratio", 1.10, True, "×"),
        Target("t2v-1.3b-480p", "each step ≥ 1.2× faster than the best diffusers peer", "vs_best_peer", 1.2, False,
               "×"),
    ],
    "t2v-a14b-480p": [
        Target("t2v-a14b-480p", "each step ≥ 1.2× faster than the best diffusers peer", "vs_best_peer", 1.2, False,
               "×"),
        Target("t2v-a14b-480p", "40-step video (T5 + DiT + VAE, no offload) projected ≤ 200 s", "video_s", 200.0,
               True, "s"),
    ],
    "t2v-a14b-720p": [
        Target("t2v-a14b-720p", "peak memory ≤ 76 GiB with both experts resident", "peak_gib_resident", 76.0, True,
               "GiB"),
        Target("t2v-a14b-720p", "40-step video projected ≤ 820 s", "video_s", 820.0, True, "s"),
    ],
    # sequence parallel: against one GPU of the same run (the single-GPU stage captured beside the parallel one)
    "t2v-a14b-720p-sp2": [
        Target("t2v-a14b-720p-sp2", "2 GPUs ≥ 1.85× faster per step than 1 GPU in the same run", "vs_single_gpu",
               1.85, False, "×"),
    ],
    "t2v-a14b-720p-sp8": [
        Target("t2v-a14b-720p-sp8", "8 GPUs: 40-step video projected ≤ 120 s", "video_s", 120.0, True, "s"),
    ],
    "mg2-universal": [
        Target("mg2-universal", "steady block ≤ 80 ms, DiT only", "block_ms", 80.0, True, "ms"),
        Target("mg2-universal", "≥ 150 generated frames/s, DiT only", "dit_fps", 150.0, False, "frames/s"),
        Target("mg2-universal", "≥ 5× faster than the baseline of the same run", "vs_baseline", 5.0, False, "×"),
        Target("mg2-universal", "first block within 1.1× of the steady block", "first_vs_steady", 1.1, True, "×"),
    ],
    "mg2-universal-e2e": [
        Target("mg2-universal-e2e", "end to end with the streaming VAE decode ≥ 80 frames/s", "e2e_fps", 80.0, False,
               "frames/s"),
    ],
}

# Outside claims, for comparison only.
REFERENCE = {
    # Matrix-Game-2's README / paper: ~25 FPS, VAE decode included; the GPU behind it is not stated (unverified)
    "mg2_claimed_fps": 25.0,
    # the official Wan2.2 README table, one GPU, --offload_model True --convert_model_dtype: total seconds per video
    "wan22_official_offload_s": {"t2v-a14b-480p": 326.9, "t2v-a14b-720p": 1041.5},
    # the same table by GPU count (1: with offload; 4 and 8: FSDP + Ulysses), total seconds per video
    "wan22_official_by_gpus_s": {"t2v-a14b-720p": {1: 1041.5, 4: 288.7, 8: 155.1}},
}


def targets(workload: str) -> list[Target]:
    """The targets of a workload (an empty list for a workload without targets, e.g. the tiny ones)."""
    return list(TARGETS.get(workload, []))


def goal(workload: str, metric: str) -> float:
    """The goal of one target, by its metric (e.g. goal("t2v-a14b-480p", "video_s") -> 200.0)."""
    for t in TARGETS.get(workload, []):
        if t.metric == metric:
            return t.goal
    raise KeyError(f"{workload} has no {metric!r} target; its targets: "
                   f"{', '.join(t.metric for t in TARGETS.get(workload, [])) or 'none'}")


# -- measuring ----------------------------------------------------------------------------------------------------


def _peer_ratio(m, run, base):
    from .profiling import analysis

    name = analysis.best_peer(run)
    return None if name is None else run["peers"][name]["timing"]["median"] / m["timing"]["median"]


def _resident_peak(m, run, base):
    return m["peak_memory_gib"] if "both experts resident" in m.get("step", "") else None


def _vs_baseline(m, run, base):
    return base["timing"]["median"] / m["timing"]["median"] if base else m.get("speedup_vs_baseline")


def _first_vs_steady(m, run, base):
    from .profiling import analysis

    return analysis.first_block_vs_steady(m)


def _e2e_fps(m, run, base):
    return (m.get("e2e") or {}).get("fps")


METRICS = {
    "floor_ratio": lambda m, run, base: m["kernel_floor_ratio"],
    "vs_best_peer": _peer_ratio,
    "video_s": lambda m, run, base: (m.get("projection") or {}).get("total_s"),
    "peak_gib_resident": _resident_peak,
    "block_ms": lambda m, run, base: m["timing"]["median"],
    "dit_fps": lambda m, run, base: m.get("dit_fps"),
    "vs_baseline": _vs_baseline,
    "first_vs_steady": _first_vs_steady,
    "e2e_fps": _e2e_fps,  # the streaming VAE decode: `e2e.fps` of an end-to-end run (mg2-universal-e2e)
    "vs_single_gpu": lambda m, run, base: m.get("speedup_vs_single_gpu"),  # a stage captured on every rank
}


def evaluate(workloads, root=None) -> pd.DataFrame:
    """Every target of the workloads against their runs: one row per target with the goal, the measured value on
    the run's fastest captured stage, `met` (True / False; None where the run did not measure it) and `gap %`, the
    signed margin relative to the goal (positive: met with that much to spare; negative: short by that much).
    Also the stage measured, its run and device."""
    from .profiling import analysis

    if isinstance(workloads, str):
        workloads = [workloads]
    rows = []
    for w in workloads:
        if not TARGETS.get(w):
            continue
        run = analysis.load_run(w, root)
        stage = analysis.best_stage(w, root)
        m = analysis.load_manifest(w, stage, root)
        try:
            base = analysis.load_manifest(w, "00_baseline", root)
        except analysis.MissingTraceError:
            base = None
        for t in TARGETS[w]:
            value = METRICS[t.metric](m, run, base)
            met = gap = None
            if value is not None:
                met = bool(value <= t.goal) if t.lower_is_better else bool(value >= t.goal)
                gap = 100 * ((t.goal - value) if t.lower_is_better else (value - t.goal)) / t.goal
            rows.append({"workload": w, "target": t.what, "goal": t.goal, "measured": value, "unit": t.unit,
                         "met": met, "gap %": gap, "stage": stage, "run": m["run_id"], "device": m["device"]})
    df = pd.DataFrame(rows, columns=["workload", "target", "goal", "measured", "unit", "met", "gap %", "stage", "run",
                                     "device"])
    return df.set_index(["workload", "target"]).round({"measured": 3, "gap %": 1})
