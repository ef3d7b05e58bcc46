"""The pieces every stage notebook shows, in one place: the before/after numbers from the manifests, the live
correctness check on the tiny model, the before/after timelines, and the live host-sync count of the tiny
Matrix-Game-2 model."""

from __future__ import annotations

import contextlib

import numpy as np
import pandas as pd
import torch

from ..measure import rel_l2
from . import analysis, plots
from .results import short_device

T2V_WORKLOADS = ("t2v-1.3b-480p", "t2v-a14b-480p", "t2v-a14b-720p")


def sci(x: float, digits: int = 0) -> str:
    """An error for a table: one significant digit (CPUs differ in the last bits, the verdict does not), an exact
    zero as "0 (exact)" rather than 0e+00."""
    return "0 (exact)" if x == 0 else f"{x:.{digits}e}"


def previous_stage(workload: str, stage: str, root=None) -> str | None:
    """The stage captured just before `stage` in the same run (the workload's order; see wanopt.stages)."""
    return analysis.load_manifest(workload, stage, root).get("previous_stage")


def device_of(workload: str, stage: str = "00_baseline", root=None) -> str:
    """The short name of the GPU a workload's run was captured on ("H100", "H200")."""
    return short_device(analysis.load_manifest(workload, stage, root).get("device"))


def stage_comparison(stage: str, workloads=T2V_WORKLOADS, root=None) -> pd.DataFrame:
    """Per workload where `stage` was captured: the previous captured stage of the same run, both step times
    (median, CUDA events), the speedup, the error against the baseline, peak memory, MFU and the floor ratio.

    A stage that none of the workloads has is an error naming their stages; a stage that no run captured is an
    error naming what each run captured."""
    known = [w for w in workloads if stage in analysis.known_stages(w)]
    if not known:
        names = dict.fromkeys(s for w in workloads for s in analysis.known_stages(w))
        raise analysis.UnknownNameError(f"unknown stage {stage!r}; the stages of {', '.join(workloads)}: "
                                        f"{', '.join(names)}")
    rows = []
    for w in known:
        if stage not in analysis.captured_stages(w, root):
            continue
        m = analysis.load_manifest(w, stage, root)
        prev = m.get("previous_stage")
        p = analysis.load_manifest(w, prev, root) if prev else None
        err = m["error_vs_baseline"]
        rows.append({
            "workload": w, "run": m["run_id"], "previous stage": prev,
            "before ms": p["timing"]["median"] if p else None, "after ms": m["timing"]["median"],
            "speedup ×": m["speedup_vs_previous"], "vs baseline ×": m["speedup_vs_baseline"] or 1.0,
            "peak GiB before": p["peak_memory_gib"] if p else None, "peak GiB after": m["peak_memory_gib"],
            "MFU": m["mfu"], "floor ×": m["kernel_floor_ratio"],
            "error metric": next(k for k in ("x0", "velocity", "latents") if k in err["metric"] or k == "latents"),
            "error": err["value"],
        })
    if not rows:
        captured = "; ".join(f"{w}: {', '.join(analysis.captured_stages(w, root)) or 'nothing'}" for w in known)
        raise analysis.MissingTraceError(f"{stage} was captured in no run of {', '.join(known)} (captured: "
                                         f"{captured}); capture it on a GPU with "
                                         f"`{analysis.capture_command(known[0], stage)}`")
    df = pd.DataFrame(rows).set_index("workload")
    return df.round({"before ms": 1, "after ms": 1, "speedup ×": 3, "vs baseline ×": 2, "MFU": 3, "floor ×": 2})


def velocity_errors(workloads=T2V_WORKLOADS, root=None) -> pd.DataFrame:
    """Per captured stage: the relative L2 of one step's guided velocity against 00_baseline's, at real size on the
    GPU (the manifests' `error_vs_baseline`), with the stage's tolerance and whether it is within."""
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
    inputs, with the stage's cumulative tolerance (wanopt.stages.tolerance_at). Errors are shown to one
    significant digit: CPUs differ in the last bits of their float kernels, the verdict (within tolerance or not)
    does not."""
    from ..pipelines.t2v import WanT2V
    from ..stages import apply_stage, stages_up_to, tolerance_at

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
        pipe = apply_stage(pipe, stage, stage.options().options)  # the stage's own choice on this CPU
        v = step()
        err = rel_l2(v, base)
        tol = tolerance_at(stage.name, workload)
        rows.append({"after stage": stage.name, "velocity rel L2": sci(err), "tolerance": f"{tol:g}",
                     "within": "yes" if err <= tol else "NO"})
    return pd.DataFrame(rows).set_index("after stage")


# -- timelines ----------------------------------------------------------------------------------------------------


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
        panels.append((k, win, f"{stage}, {what}"))
    return plots.timelines(panels, title=f"{workload} on an {device_of(workload, root=root)}: {label} before "
                                         f"and after {after}")


UNIT_LABELS = {"t2v": ("denoise_step", "one denoising step"), "mg2": ("mg2_block", "one block")}


def step_timelines(workload: str, before: str, after: str, root=None, occurrence: int = 0):
    """One whole profiled unit (a T2V denoising step, a Matrix-Game-2 block: `occurrence` picks which of the
    profiled ones) before and after a stage, on one time axis."""
    from ..configs import get_workload

    label, what = UNIT_LABELS[get_workload(workload).family]
    panels = []
    for stage in (before, after):
        a = analysis.load_trace(workload, stage, root)
        panels.append((analysis.kernels(a), analysis.window(a, label, occurrence), stage))
    return plots.timelines(panels, title=f"{workload} on an {device_of(workload, root=root)}: {what} before and "
                                         f"after {after}")


def waterfall_labels(workload: str, root=None) -> dict:
    """Tick labels for a stage waterfall: a captured stage whose previous captured stage is not the one just
    before it in the workload's order stands for several stages at once, and says so (720p: 06_fusion is stages
    01-06 combined)."""
    order = analysis.known_stages(workload)
    labels = {}
    for stage in analysis.stage_table(workload, root=root).index:
        prev = previous_stage(workload, stage, root)
        if prev in order and stage in order and order.index(stage) - order.index(prev) > 1:
            first = order[order.index(prev) + 1]
            labels[stage] = f"{stage}\n(stages {first[:2]}–{stage[:2]} combined)"
    return labels


def stage_waterfall(workload: str, root=None):
    """The step time of every captured stage of a run as a waterfall: the baseline, each captured stage's change
    over the one captured before it (labelled where it spans several stages), and the fastest stage last."""
    table = analysis.stage_table(workload, root=root)
    m = analysis.load_manifest(workload, table.index[0], root)
    title = (f"{workload}: step time per captured stage (ms), {short_device(m['device'])}, run {m['run_id']}")
    return plots.waterfall(table["step ms"], title, final=analysis.best_stage(workload, root),
                           labels=waterfall_labels(workload, root))


# -- host syncs, counted live on the tiny Matrix-Game-2 model ---------------------------------------------------


@contextlib.contextmanager
def count_item_calls(model: torch.nn.Module, extra=None):
    """Count `torch.Tensor.item` calls (each one a GPU→CPU copy and a host sync on a GPU) per forward of `model`.
    Yields a list that gets one dict per forward: {"item calls": n, **extra()} (extra: a function called after
    each forward, e.g. to read the cache's fill level)."""
    records, count, starts = [], [0], []
    original = torch.Tensor.item

    def counted(self):
        count[0] += 1
        return original(self)

    def pre(module, args):
        starts.append(count[0])

    def post(module, args, output):
        records.append({"item calls": count[0] - starts.pop(), **(extra() if extra else {})})

    hooks = [model.register_forward_pre_hook(pre), model.register_forward_hook(post)]
    torch.Tensor.item = counted
    try:
        yield records
    finally:
        torch.Tensor.item = original
        for h in hooks:
            h.remove()


def cached_attentions(config) -> int:
    """Attentions over the KV cache per Matrix-Game-2 eval: one self-attention per layer, a mouse and a keyboard
    one per action block (keyboard only without mouse)."""
    return config.num_layers + len(config.action.blocks) * (2 if config.action.enable_mouse else 1)


@torch.no_grad()
def tiny_mg2_item_calls(blocks: int = 3, config: str = "mg2-tiny", seed: int = 0) -> pd.DataFrame:
    """Live, on the CPU: `blocks` blocks of the tiny Matrix-Game-2 pipeline, one row per DiT eval: its block, kind
    (denoise_eval or cache_refresh) and position in the block, its `.item()` calls, the self-attention's key
    count after it, and the calls per cached attention (the number that scales to the real model)."""
    from ..pipelines.causal import CausalPipeline

    pipe = CausalPipeline(config, device="cpu", seed=seed)
    state = pipe.start(blocks, seed=seed)
    keys = lambda: {"self-attention keys": pipe.cache.layers[0].self_attn.local_end.tolist()[0]}  # noqa: E731
    with count_item_calls(pipe.model, extra=keys) as records:  # .tolist() is not .item(): the read is not counted
        for _ in range(blocks):
            pipe.next_block(state)
    kinds = ["denoise_eval"] * len(pipe.timesteps) + ["cache_refresh"]
    live = pd.DataFrame(records)
    live.insert(0, "block", np.repeat(range(blocks), len(kinds)))
    live.insert(1, "eval", kinds * blocks)
    live.insert(2, "#", list(range(len(kinds))) * blocks)
    live = live.rename(columns={"item calls": ".item() calls"})
    live["per cached attention"] = live[".item() calls"] / cached_attentions(pipe.config)
    return live.set_index(["block", "eval", "#"])


@torch.no_grad()
def tiny_mg2_eviction_error(config: str = "mg2-tiny", seed: int = 0) -> float:
    """Live check of the rolling KV cache on the tiny Matrix-Game-2 model: after block 2 the first half of the
    first layer's self-attention key buffer must hold what its second half held after block 1 (the oldest block
    evicted, the rest shifted). Returns the largest absolute difference (0 when the roll is exact)."""
    from ..pipelines.causal import CausalPipeline

    pipe = CausalPipeline(config, device="cpu", seed=seed)
    state = pipe.start(3, seed=seed)
    keys = []
    for _ in range(3):
        pipe.next_block(state)
        keys.append(pipe.cache.layers[0].self_attn.k.clone())
    half = keys[1].size(1) // 2
    return (keys[2][:, :half].float() - keys[1][:, half:].float()).abs().max().item()


@torch.no_grad()
def tiny_mg2_stage_errors(upto: str, blocks: int = 4, config: str = "mg2-tiny", seed: int = 0,
                          since: str | None = None) -> pd.DataFrame:
    """Live, on the CPU: the tiny Matrix-Game-2 pipeline in fp32 (attention too), the stages applied one by one up
    to `upto`, and after each (from `since` on, default every one) the relative L2 of a whole video's latents
    (`blocks` blocks: the window evicts from the third on) against the reference's, with the stage's tolerance, and
    the `.item()` calls per block. Stages before `since` are applied without making their video (on the CPU the
    Triton kernels of 05_fusion run in Triton's interpreter, about a minute per video)."""
    from ..models.layers import set_compute_dtype
    from ..pipelines.causal import CausalPipeline
    from ..stages import apply_stage, stages_up_to, tolerance_at

    pipe = CausalPipeline(config, device="cpu", dtype=torch.float32, seed=seed)
    set_compute_dtype(pipe.model, None)

    def video():
        with count_item_calls(pipe.model) as records:
            out = torch.cat(list(pipe.stream(blocks, seed=seed + 1)), dim=2)
        return out, sum(r["item calls"] for r in records) / blocks

    base, base_items = video()
    rows = [{"after stage": "00_baseline", "video latents rel L2": "0 (reference)", "tolerance": "0",
             ".item() calls per block": base_items, "within": "yes"}]
    stages = stages_up_to(upto, "mg2-universal")[1:]
    first = 0 if since is None else [s.name for s in stages].index(since)
    for i, stage in enumerate(stages):
        pipe = apply_stage(pipe, stage, stage.options().options)
        if i < first:
            continue
        out, items = video()
        err, tol = rel_l2(out, base), tolerance_at(stage.name, "mg2-universal")
        rows.append({"after stage": stage.name, "video latents rel L2": sci(err), "tolerance": f"{tol:g}",
                     ".item() calls per block": items, "within": "yes" if err <= tol else "NO"})
    return pd.DataFrame(rows).set_index("after stage")


def mg2_stage_numbers(workload: str, stages, root=None) -> pd.DataFrame:
    """Per Matrix-Game-2 stage of one run: the steady block's spread (min, median, max), the first block, one eval
    (medians, ms) and the errors against the baseline (the x0 after the window evicted, one eval's velocity)."""
    rows = {}
    for stage in stages:
        m = analysis.load_manifest(workload, stage, root)
        e = m["error_vs_baseline"]
        rows[stage] = {"block min": m["timing"]["min"], "block median": m["timing"]["median"],
                       "block max": m["timing"]["max"], "first block": m["first_block"]["timing"]["median"],
                       "one eval": m["eval"]["timing"]["median"], "x0 error": e["value"],
                       "eval velocity error": e.get("eval_velocity_relative_l2")}
    return pd.DataFrame(rows).T.round({"block min": 1, "block median": 1, "block max": 1, "first block": 1,
                                       "one eval": 1})


def mg2_block_budget(workload: str, stage: str, occurrence: int = 2, root=None) -> pd.DataFrame:
    """Where one profiled Matrix-Game-2 block's GPU time goes (occurrence 2: the steady-state block), against its
    kernel floor: GEMMs (the linear and action FLOPs at the run's bf16 GEMM ceiling), attention (its FLOPs at the
    fastest attention kernel of the run's ceilings), the kernels with no FLOP floor (norms, elementwise, casts,
    copies), and the time inside the block with no kernel running (gaps between launches)."""
    m = analysis.load_manifest(workload, stage, root)
    trace = analysis.load_trace(workload, stage, root)
    start, end = analysis.window(trace, "mg2_block", occurrence)
    cats = analysis.category_breakdown(analysis.in_window(analysis.kernels(trace), (start, end)))["ms"]
    flops, evals, ceil = m["flops_per_eval"], m["evals_per_block"], m["ceilings"]
    rows = {
        "GEMM": (cats["GEMM"], evals * (flops["linear"] + flops["action"]) / ceil["gemm_tflops"] / 1e9),
        "attention": (cats["attention"], evals * flops["attention"] / ceil["attention_tflops"] / 1e9),
        "norms, elementwise, casts, copies": (cats.drop(["GEMM", "attention"]).sum(), 0.0),
    }
    rows["no kernel running"] = ((end - start) / 1e3 - sum(ms for ms, _ in rows.values()), 0.0)
    out = pd.DataFrame(rows, index=["measured ms", "floor ms"]).T
    out.loc["block (profiled)"] = out.sum()
    out["over floor ms"] = out["measured ms"] - out["floor ms"]
    return out.round(1)


def mg2_cold_starts(workload: str, root=None) -> pd.DataFrame:
    """Per stage whose run measured it: process start to block 0 out in a fresh process (empty compile caches),
    and its phases, seconds; next to the steady and first block of the same stage, ms."""
    rows = {}
    for stage in analysis.stage_table(workload, root=root).index:
        m = analysis.load_manifest(workload, stage, root)
        cold = m.get("cold_start")
        if not cold or "error" in cold:
            continue
        rows[stage] = {"process → block 0 out s": cold["process_to_first_block_s"], "build s": cold["build_s"],
                       "apply stages s": cold["apply_s"], "block 0 (compile, graph capture) s": cold["first_block_s"],
                       "first block ms (warm)": m["first_block"]["timing"]["median"],
                       "steady block ms": m["timing"]["median"]}
    return pd.DataFrame(rows).T.round(1)
