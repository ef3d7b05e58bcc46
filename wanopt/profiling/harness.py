"""The capture harness, the same for every model family.

    plan → ceilings → build → per stage: choose → apply → warm up → time → peak memory → error → profile → manifest

A runner (wanopt.profiling.t2v, wanopt.profiling.mg2) says what the family's timed unit is; this module knows
nothing of families or of stage names. Per captured stage:
  - warm-up: one unit from the state a timed unit starts from; compile and CUDA-graph capture happen here, and for a
    stage that `compiles` the warm-up minus a timed unit is reported as `compile_s`;
  - timing: CUDA events around each unit, `runner.prepare()` (untimed) before each; the median of >= 10 repeats
    (>= 3 when one takes over a second), min and max kept;
  - peak memory over the timed repeats (torch.cuda.max_memory_allocated);
  - error: the runner's outputs from a fixed state against the baseline's outputs of the same run, with the
    stage's cumulative tolerance;
  - a torch.profiler trace of the runner's profiled units (one warm-up unit first), gzip'd, with ProfilerStep
    markers and rank metadata as HTA wants them;
  - traces/<workload>/<stage>/{manifest.json, rank0.pt.trace.json.gz}; <workload>/capture.json after every stage,
    so a later failure loses nothing.
Every speedup compares numbers of the same run; every record carries the run id and the commit.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import time
import traceback
from pathlib import Path

import torch
from tqdm import tqdm

from ..measure import compile_seconds, cuda_time_ms, repeats_for, summarize, time_once_ms
from ..stages import ChoiceContext, Plan, cumulative_tolerance
from .records import MANIFEST, RUN_SUMMARY, TRACE_NAME, environment, gib, new_run_id, sha256, versions, write_json


class CaptureNeedsGPU(RuntimeError):
    pass


def require_cuda():
    if not torch.cuda.is_available():
        raise CaptureNeedsGPU(
            "capture needs a CUDA GPU: it times and profiles the real kernels. This machine has none. The traces "
            "and manifests captured on the GPU machines are committed under traces/, and every notebook reads those.")


# Kineto leaves CUPTI's callbacks installed after a profiling session unless told to tear it down, and every later
# launch pays for them (10-20 % of a training step in pytorch/pytorch#146604). Each stage is timed after the
# previous stage's trace, so the harness asks for the teardown: without it, the launch-bound MG2 stages timed after
# a traced stage measured 480 and 534 ms per block (traces/logs/mg2-universal.no-cupti-teardown.capture.log); with
# it, 387 and 395 ms, as in a run that traced nothing (381 and 365 ms, logs/mg2-universal.no-profile.capture.log).
PROFILER_ENV = {"TEARDOWN_CUPTI": "1"}


def profile_steps(run_step, n_steps: int, trace_path: Path, stage: str, warmup: int = 1, rank: int = 0,
                  world_size: int = 1) -> Path:
    """Profile `warmup + n_steps` calls of run_step(i); the last n_steps are recorded, one ProfilerStep each."""
    for key, value in PROFILER_ENV.items():
        os.environ.setdefault(key, value)
    from torch.profiler import ProfilerActivity, profile, schedule

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    trace_path.parent.mkdir(parents=True, exist_ok=True)
    extra = {}
    if torch.cuda.is_available():
        # cudaDeviceSynchronize / cudaStreamSynchronize events: HTA's critical path and the host-sync counts
        extra["experimental_config"] = torch._C._profiler._ExperimentalConfig(enable_cuda_sync_events=True)
    with profile(activities=activities, schedule=schedule(wait=0, warmup=warmup, active=n_steps, repeat=1),
                 on_trace_ready=lambda p: p.export_chrome_trace(str(trace_path)), record_shapes=True,
                 with_stack=False, acc_events=False, **extra) as prof:
        prof.add_metadata_json("distributedInfo", json.dumps({"rank": rank, "world_size": world_size}))
        prof.add_metadata("stage", stage)
        for i in range(warmup + n_steps):
            run_step(i)
            prof.step()
    return trace_path


def _free():
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def run_plan(runner, plan: Plan, out: Path, *, profile: bool = True, progress: bool = True,
             forced: dict | None = None, compare_alternatives: bool = False, before_stages=None) -> dict:
    """Capture `plan` with `runner` (see the module docstring); returns the run summary also written to
    <out>/<workload>/capture.json. `before_stages(runner, summary)` runs once the model is built (peers)."""
    out = Path(out)
    env = environment()
    wl = runner.workload
    summary = {"workload": wl.name, "family": wl.family, "run_id": new_run_id(), "env": env,
               "unit": runner.unit, "stages_captured": plan.captured, "stages": {}, "choices": {}}
    summary.update(runner.describe())
    if forced:
        summary["forced"] = forced
    if profile:
        summary["profiler_env"] = {k: os.environ.get(k, v) for k, v in PROFILER_ENV.items()}
    folder = out / wl.name
    summary["ceilings"] = ceil = runner.measure_ceilings()
    t0 = time.perf_counter()
    runner.build(summary)
    summary["build_s"] = time.perf_counter() - t0
    if before_stages is not None:
        before_stages(runner, summary)
    ctx = ChoiceContext(device="cuda" if torch.cuda.is_available() else "cpu", shapes=runner.shapes(),
                        ceilings=None if ceil.get("placeholder") else ceil, forced=forced or {})
    baseline, previous = None, None
    bar = tqdm(plan.stages, desc=f"{wl.name} stages", disable=not progress)
    for stage in bar:
        bar.set_postfix_str(stage.name)
        try:
            if compare_alternatives and stage.alternative is not None and stage.name in plan.captured:
                summary.setdefault("alternatives", {})[stage.name] = time_alternative(runner, stage)
            choice = stage.options(ctx)
            if stage.choose is not None:
                summary["choices"][stage.name] = {"options": choice.options, "evidence": choice.evidence}
            t0 = time.perf_counter()
            runner.apply(stage, choice.options)
            apply_s = time.perf_counter() - t0
            if stage.name not in plan.captured:
                continue
            m, outputs = capture_stage(runner, plan, stage, summary, baseline, previous, folder, profile)
            m["apply_s"] = apply_s
            if stage.choose is not None:
                m["choice"] = summary["choices"][stage.name]
            if baseline is None and stage is plan.stages[0]:
                baseline = outputs
            write_json(folder / stage.name / MANIFEST, m)
            summary["stages"][stage.name] = {k: m.get(k) for k in (
                "timing", "peak_memory_gib", "mfu", "kernel_floor_ratio", "error_vs_baseline", "speedup_vs_baseline",
                "compile_s", *runner.summary_keys)}
            write_json(folder / RUN_SUMMARY, summary)
            previous = m
            _free()
        except Exception as exc:  # keep what was captured; later stages build on this one, so stop here
            traceback.print_exc()
            summary["failed"] = {"stage": stage.name, "error": f"{type(exc).__name__}: {exc}"[:2000]}
            break
    write_json(folder / RUN_SUMMARY, summary)
    print_table(summary)
    return summary


def time_unit(runner, after_first=None) -> tuple[float, list[float]]:
    """Warm-up from a prepared state, then the timed repeats (as many as the first one's duration asks for, each
    from a prepared state); `after_first()` runs between the first repeat and the others. Returns (warm-up ms,
    repeat times)."""
    runner.prepare()
    warm = time_once_ms(runner.unit_call)
    first = cuda_time_ms(runner.unit_call, setup=runner.prepare, repeats=1)[0]
    if after_first is not None:
        after_first()
    return warm, [first] + cuda_time_ms(runner.unit_call, setup=runner.prepare, repeats=repeats_for(first) - 1)


def time_alternative(runner, stage) -> dict:
    """The stage's alternative (say, whole-model compile against regional), timed in this run from the state
    before the stage, then undone."""
    label, apply, undo = stage.alternative
    try:
        runner.apply_function(apply)
        warm, times = time_unit(runner)
    except Exception as exc:  # optional: recorded, and the stage itself still runs
        traceback.print_exc()
        return {"label": label, "error": f"{type(exc).__name__}: {exc}"[:1000]}
    finally:
        runner.apply_function(undo)
    median = statistics.median(times)
    return {"label": label, "timing": summarize(times), "warmup_ms": warm, "compile_s": compile_seconds(warm, median)}


def capture_stage(runner, plan: Plan, stage, summary: dict, baseline: dict | None, previous: dict | None,
                  folder: Path, profile: bool) -> tuple[dict, dict]:
    on_gpu = torch.cuda.is_available()
    wl = runner.workload
    stage_dir = folder / stage.name
    stage_dir.mkdir(parents=True, exist_ok=True)

    warm, times = time_unit(runner, after_first=torch.cuda.reset_peak_memory_stats if on_gpu else None)
    peak = gib(torch.cuda.max_memory_allocated()) if on_gpu else None  # over the timed repeats after the first
    median = statistics.median(times)

    outputs = runner.outputs()
    tolerance = cumulative_tolerance(plan.stages, stage.name)
    if baseline is None and stage is plan.stages[0]:
        error = runner.errors(outputs, outputs)
    elif baseline is None:  # the baseline was not captured in this run: nothing to compare with, so no number
        error = {**runner.errors(None, None), "value": None}
        error["metric"] += " (not measured: capture 00_baseline in the same run)"
    else:
        error = runner.errors(outputs, baseline)
    error.update(tolerance=tolerance, ok=None if error["value"] is None else error["value"] <= tolerance)

    ceil = summary["ceilings"]
    flops = runner.flops()
    floor_s = runner.floor_s(ceil)
    m = {
        "workload": wl.name, "family": wl.family, "stage": stage.name, "title": stage.title,
        "run_id": summary["run_id"], "stages_applied": [s.name for s in plan.stages[: plan.stages.index(stage) + 1]],
        "device": summary["env"].get("device", "cpu"), "versions": versions(summary["env"]),
        "date": summary["env"]["date"], "step": runner.unit_description(),
        "timing": summarize(times), "warmup_ms": warm,
        "compile_s": compile_seconds(warm, median) if stage.compiles else 0.0,
        "peak_memory_gib": peak,
        "flops_per_step": flops["per_unit"], **{k: v for k, v in flops.items() if k != "per_unit"},
        "ceilings": {"gemm_tflops": ceil["gemm_tflops"], "attention_tflops": ceil["attention"][ceil["attention_backend"]],
                     "attention_backend": ceil["attention_backend"], "attention_all": ceil["attention"],
                     "attention_cross_all": ceil.get("attention_cross")},
        "mfu": flops["per_unit"] / (median / 1e3 * ceil["gemm_tflops"] * 1e12),
        "kernel_floor_ms": floor_s * 1e3, "kernel_floor_ratio": (median / 1e3) / floor_s,
        "error_vs_baseline": error,
        "speedup_vs_baseline": None, "speedup_vs_previous": None,
        "random_weights": list(getattr(runner.pipe, "random_components", ())) or runner.checkpoint is None,
    }
    if baseline is not None or stage is plan.stages[0]:
        base = summary["stages"].get(plan.stages[0].name, {}).get("timing", {}).get("median", median)
        m["speedup_vs_baseline"] = base / median
    if previous is not None:
        m["previous_stage"] = previous["stage"]
        m["speedup_vs_previous"] = previous["timing"]["median"] / median
    m.update(runner.extras(stage, m, summary))
    if profile:
        n_active, step, profiled = runner.profile_plan()
        trace = profile_steps(step, n_active, stage_dir / TRACE_NAME, stage.name, world_size=wl.world_size)
        m["trace"] = {"file": TRACE_NAME, "sha256": sha256(trace), "bytes": trace.stat().st_size,
                      "profiled_steps": profiled,
                      "note": "one warm-up unit precedes the profiled ones (profiler schedule warmup=1)"}
    return m, outputs


def _sci(x) -> str:
    return "n/a" if x is None else f"{x:.2e}"


def print_table(summary: dict):
    """The run's short table, printed last (the device tool returns the end of the output)."""
    rows = [f"{'stage':<18}{'ms':>10}{'speedup':>9}{'MFU':>7}{'floor×':>8}{'mem GiB':>9}{'err':>10}"]
    for name, s in summary["stages"].items():
        sp = s.get("speedup_vs_baseline") or 1.0
        mem = s.get("peak_memory_gib")
        rows.append(f"{name:<18}{s['timing']['median']:>10.1f}{sp:>9.2f}{s['mfu']:>7.2f}"
                    f"{s['kernel_floor_ratio']:>8.2f}{(mem if mem is not None else float('nan')):>9.1f}"
                    f"{_sci(s['error_vs_baseline']['value']):>10}")
    for label, p in summary.get("peers", {}).items():
        if isinstance(p, dict) and "timing" in p:
            rows.append(f"{label:<34}{p['timing']['median']:>10.1f} ms (compile {p['compile_s']:.0f} s)")
    for stage, a in summary.get("alternatives", {}).items():
        rows.append(f"{a['label']:<34}" + (f"{a['timing']['median']:>10.1f} ms (compile {a['compile_s']:.0f} s)"
                                           if "timing" in a else f"  failed: {a['error'][:120]}"))
    if "failed" in summary:
        rows.append(f"FAILED at {summary['failed']['stage']}: {summary['failed']['error'][:200]}")
    print(f"\n== {summary['workload']} (run {summary['run_id']}, {summary['env'].get('device', 'cpu')}, "
          f"{summary['unit']}) ==")
    print("\n".join(rows), flush=True)
