"""The pieces every stage notebook shows, in one place: the before/after numbers from the manifests, the live
correctness check on the tiny model, and the before/after timelines."""

from __future__ import annotations

import pandas as pd
import torch

from . import analysis, plots
from .timing import rel_l2

T2V_WORKLOADS = ("t2v-1.3b-480p", "t2v-a14b-480p", "t2v-a14b-720p")


def previous_stage(workload: str, stage: str, root=None) -> str | None:
    """The stage captured just before `stage` in the same run (the workload's order; see wanopt.stages)."""
    return analysis.load_manifest(workload, stage, root).get("previous_stage")


def stage_comparison(stage: str, workloads=T2V_WORKLOADS, root=None) -> pd.DataFrame:
    """Per workload where `stage` was captured: the previous captured stage of the same run, both step times
    (median, CUDA events), the speedup, the error against the baseline and its tolerance, peak memory."""
    rows = []
    for w in workloads:
        try:
            m = analysis.load_manifest(w, stage, root)
        except analysis.MissingTraceError:
            continue
        prev = m.get("previous_stage")
        p = analysis.load_manifest(w, prev, root) if prev else None
        err = m["error_vs_baseline"]
        rows.append({
            "workload": w, "run": m["run_id"], "previous stage": prev,
            "before ms": p["timing"]["median"] if p else None, "after ms": m["timing"]["median"],
            "speedup ×": m["speedup_vs_previous"], "vs baseline ×": m["speedup_vs_baseline"] or 1.0,
            "peak GiB before": p["peak_memory_gib"] if p else None, "peak GiB after": m["peak_memory_gib"],
            "MFU": m["mfu"], "floor ×": m["kernel_floor_ratio"],
            "error metric": "velocity" if "velocity" in err["metric"] else "latents", "error": err["value"],
        })
    df = pd.DataFrame(rows).set_index("workload")
    return df.round({"before ms": 1, "after ms": 1, "speedup ×": 3, "vs baseline ×": 2, "MFU": 3, "floor ×": 2})


def velocity_errors(workloads=T2V_WORKLOADS, root=None) -> pd.DataFrame:
    """Per captured stage: the relative L2 of one step's guided velocity against 00_baseline's, at real size on
    the H100 (the manifests' `error_vs_baseline`), with the stage's tolerance."""
    rows = []
    for w in workloads:
        for stage in analysis.stage_table(w, root=root).index:
            m = analysis.load_manifest(w, stage, root)
            e = m["error_vs_baseline"]
            if "velocity" not in e["metric"]:
                raise ValueError(f"{w}/{stage}: the manifest's error is not the velocity metric ({e['metric']!r}); "
                                 "re-capture it with `python -m wanopt capture`")
            rows.append({"workload": w, "stage": stage, "run": m["run_id"], "velocity rel L2": e["value"],
                         "tolerance": e["tolerance"], "ok": e["ok"]})
    return pd.DataFrame(rows).set_index(["workload", "stage"])


@torch.no_grad()
def tiny_stage_errors(upto: str, workload: str = "t2v-1.3b-480p", seed: int = 0) -> pd.DataFrame:
    """Live, on the CPU: the tiny A14B-like pipeline, the stages applied one by one in `workload`'s order up to
    `upto`, and after each the relative L2 of one step's guided velocity against the baseline's on the same
    inputs, with the stage's tolerance. Errors are shown to one significant digit: CPUs differ in the last
    bits of their float kernels, the verdict (within tolerance or not) does not."""
    from ..pipelines.t2v import WanT2V
    from ..stages import stages_up_to

    pipe = WanT2V("tiny", device="cpu", seed=seed, vae=False)
    context, context_null = pipe.encode_prompt("a paper boat drifting down a rain gutter")

    def step():
        state = pipe.prepare(context, context_null, sampling_steps=40, seed=seed)
        state.step_index = 1
        pipe.denoise_step(state)
        return state.velocity.clone()

    base = step()
    rows = []
    for stage in stages_up_to(upto, workload):
        if stage.apply is None:
            continue
        pipe = stage.apply(pipe, **({"backend": "flash"} if stage.name == "05_attention" else {}))
        v = step()
        err = rel_l2(v, base)
        tol = max(s.tolerance for s in stages_up_to(stage.name, workload))
        rows.append({"after stage": stage.name, "velocity rel L2": f"{err:.0e}", "tolerance": f"{tol:g}",
                     "within": "yes" if err <= tol else "NO"})
    return pd.DataFrame(rows).set_index("after stage")


def block_timelines(workload: str, before: str, after: str, label: str = "block05", root=None):
    """The kernels of one transformer block (first occurrence of `label`, i.e. the cond pass or the batched one)
    before and after a stage, on one time axis. Stages whose kernels run inside a CUDA graph have no block labels:
    their whole step is shown instead."""
    panels = []
    for stage in (before, after):
        a = analysis.load_trace(workload, stage, root)
        k = analysis.kernels(a)
        try:
            win, what = analysis.window(a, label), label
        except KeyError:
            win, what = analysis.window(a, "denoise_step"), "whole step (no block labels in a graph)"
        panels.append((k, win, f"{workload} {stage}, {what}"))
    return plots.timelines(panels)


def step_timelines(workload: str, before: str, after: str, root=None, occurrence: int = 0):
    """One whole profiled denoising step before and after a stage, on one time axis."""
    panels = []
    for stage in (before, after):
        a = analysis.load_trace(workload, stage, root)
        panels.append((analysis.kernels(a), analysis.window(a, "denoise_step", occurrence), f"{workload} {stage}"))
    return plots.timelines(panels)


def readme_table(root=None) -> str:
    """The README's results table, generated from the committed manifests (a test keeps the README in sync)."""
    lines = ["| workload | what | step | vs baseline | MFU | × kernel floor | peak GiB | projected video |",
             "|---|---|---|---|---|---|---|---|"]
    for w in T2V_WORKLOADS:
        table = analysis.stage_table(w, root=root)
        run = analysis.load_run(w, root)
        fastest = table["step ms"].idxmin()
        for stage in dict.fromkeys(["00_baseline", fastest]):
            m = analysis.load_manifest(w, stage, root)
            lines.append(f"| {w} | {stage} | {m['timing']['median'] / 1e3:.2f} s | "
                         f"{(m['speedup_vs_baseline'] or 1.0):.2f}× | {m['mfu']:.2f} | "
                         f"{m['kernel_floor_ratio']:.2f} | {m['peak_memory_gib']:.1f} | "
                         f"{m['projection']['total_s']:.0f} s ({m['projection']['steps']} steps) |")
        peers = {k: v for k, v in run.get("peers", {}).items() if isinstance(v, dict)}
        if peers:
            name = min(peers, key=lambda k: peers[k]["timing"]["median"])
            base = analysis.load_manifest(w, "00_baseline", root)["timing"]["median"]
            p = peers[name]["timing"]["median"]
            lines.append(f"| {w} | {name.replace('_', ' ')} (peer) | {p / 1e3:.2f} s | {base / p:.2f}× | | | | |")
    m = analysis.load_manifest("mg2-universal", "00_baseline", root)
    lines.append(f"| mg2-universal | 00_baseline, steady block | {m['timing']['median']:.0f} ms | 1.00× | "
                 f"{m['mfu']:.2f} | {m['kernel_floor_ratio']:.2f} | {m['peak_memory_gib']:.1f} | "
                 f"{m['dit_fps']:.1f} frames/s DiT-only |")
    return "\n".join(lines)
