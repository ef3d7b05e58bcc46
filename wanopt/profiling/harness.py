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

Under torchrun (a workload whose world size is above one) every rank builds the same pipeline and applies every
stage, with rank 0's choices and ceilings. A single-GPU stage is captured on rank 0 alone while the others wait;
a `distributed` stage (sequence parallel) is captured on all ranks at once: each timed repeat starts after a
barrier, each rank times itself with CUDA events and writes its own trace (rank<r>.pt.trace.json.gz), and rank 0
writes the manifest: every rank's times, the slowest rank (its time is the step's), the speedup over the last
single-GPU stage of the same run and the error of the outputs against that stage's. Only rank 0 writes manifests
and capture.json.
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

from .. import parallel
from ..measure import compile_seconds, cuda_time_ms, repeats_for, summarize, time_once_ms
from ..stages import ChoiceContext, Plan, cumulative_part_tolerance, cumulative_tolerance
from .records import MANIFEST, RUN_SUMMARY, environment, gib, new_run_id, sha256, trace_name, versions, write_json


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
                  world_size: int = 1, backend: str | None = None) -> Path:
    """Profile `warmup + n_steps` calls of run_step(i); the last n_steps are recorded, one ProfilerStep each.
    `distributedInfo` says which rank of how many GPUs the trace is (and the backend of a multi-GPU stage)."""
    for key, value in PROFILER_ENV.items():
        os.environ.setdefault(key, value)
    from torch.profiler import ProfilerActivity, profile, schedule

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    trace_path.parent.mkdir(parents=True, exist_ok=True)
    extra = {}
    if torch.cuda.is_available():
        # cudaDeviceSynchronize / cudaStreamSynchronize events: HTA's critical path and the host-sync counts
        extra["experimental_config"] = torch._C._profiler._ExperimentalConfig(enable_cuda_sync_events=True)
    info = {"rank": rank, "world_size": world_size}
    if backend is not None:
        info["backend"] = backend
        if backend == "nccl":
            version = torch.cuda.nccl.version()  # a tuple (major, minor, patch) in recent torch, an int before
            info["nccl_version"] = ".".join(map(str, version)) if isinstance(version, tuple) else str(version)
    with profile(activities=activities, schedule=schedule(wait=0, warmup=warmup, active=n_steps, repeat=1),
                 on_trace_ready=lambda p: p.export_chrome_trace(str(trace_path)), record_shapes=True,
                 with_stack=False, acc_events=False, **extra) as prof:
        prof.add_metadata_json("distributedInfo", json.dumps(info))
        prof.add_metadata("stage", stage)
        for i in range(warmup + n_steps):
            run_step(i)
            prof.step()
            if i == warmup - 1:  # torch writes its own distributedInfo when recording starts (the process group's
                # rank and size, also for a stage captured on rank 0 alone): ours, set again, replaces it
                prof.add_metadata_json("distributedInfo", json.dumps(info))
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
    main = parallel.rank() == 0  # writes the records; the other ranks of a torchrun world only compute
    summary = {"workload": wl.name, "family": wl.family, "run_id": parallel.from_rank0(new_run_id), "env": env,
               "unit": runner.unit, "world_size": wl.world_size, "stages_captured": plan.captured, "stages": {},
               "choices": {}}
    if parallel.world_size() > 1:
        summary["backend"] = parallel.backend()
    summary.update(runner.describe())
    if forced:
        summary["forced"] = forced
    if profile:
        summary["profiler_env"] = {k: os.environ.get(k, v) for k, v in PROFILER_ENV.items()}
    folder = out / wl.name
    summary["ceilings"] = ceil = parallel.from_rank0(runner.measure_ceilings)
    t0 = time.perf_counter()
    runner.build(summary)
    summary["build_s"] = time.perf_counter() - t0
    if parallel.world_size() > 1:
        parallel.check_same_everywhere(
            "the model and its inputs (a fingerprint of the weights, the text context and the noise)",
            runner.fingerprint(), "Every rank must build the same pipeline: the same --seed and --checkpoint on "
            "every rank, and the same GPU model and software on every rank (random weights are drawn on the GPU).")
    if before_stages is not None and main:
        before_stages(runner, summary)
    ctx = ChoiceContext(device="cuda" if torch.cuda.is_available() else "cpu", shapes=runner.shapes(),
                        ceilings=None if ceil.get("placeholder") else ceil, forced=forced or {})
    baseline, previous, single_gpu = None, None, None
    bar = tqdm(plan.stages, desc=f"{wl.name} stages", disable=not progress or not main)
    for stage in bar:
        bar.set_postfix_str(stage.name)
        try:
            if compare_alternatives and stage.alternative is not None and stage.name in plan.captured and main:
                summary.setdefault("alternatives", {})[stage.name] = time_alternative(runner, stage)
            choice = parallel.from_rank0(lambda: stage.options(ctx))  # all ranks run rank 0's choice
            if stage.choose is not None:
                summary["choices"][stage.name] = {"options": choice.options, "evidence": choice.evidence}
            t0 = time.perf_counter()
            runner.apply(stage, choice.options)
            apply_s = time.perf_counter() - t0
            if stage.name in plan.captured and (main or stage.distributed):
                m, outputs = capture_stage(runner, plan, stage, summary, baseline, previous, folder, profile,
                                           single_gpu)
                m["apply_s"] = apply_s
                if stage.choose is not None:
                    m["choice"] = summary["choices"][stage.name]
                if baseline is None and stage is plan.stages[0]:
                    baseline = outputs
                if not stage.distributed:
                    single_gpu = (m, outputs)
                if main:
                    write_json(folder / stage.name / MANIFEST, m)
                    summary["stages"][stage.name] = {k: m.get(k) for k in (
                        "timing", "peak_memory_gib", "mfu", "kernel_floor_ratio", "error_vs_baseline",
                        "speedup_vs_baseline", "compile_s", *runner.summary_keys)}
                    summary["stages"][stage.name].update({k: m[k] for k in DISTRIBUTED_KEYS if k in m})
                    write_json(folder / RUN_SUMMARY, summary)
                previous = m
                _free()
        except Exception as exc:  # keep what was captured; later stages build on this one, so stop here
            traceback.print_exc()
            summary["failed"] = {"stage": stage.name, "error": f"{type(exc).__name__}: {exc}"[:2000]}
            if stage.distributed and parallel.world_size() > 1:
                # the other ranks may be waiting inside a collective of this stage: end this process (torchrun then
                # ends the others) rather than meet them in another collective
                if main:
                    write_json(folder / RUN_SUMMARY, summary)
                raise
        if parallel.world_size() > 1:  # a rank's failure stops every rank (the barrier after each stage)
            failures = [dict(f, rank=r) for r, f in enumerate(parallel.gather(summary.get("failed"))) if f]
            if failures:
                summary["failed"] = failures[0]
        if "failed" in summary:
            break
    if main:
        write_json(folder / RUN_SUMMARY, summary)
        print_table(summary)
    return summary


def time_unit(runner, after_first=None, together: bool = False) -> tuple[float, list[float]]:
    """Warm-up from a prepared state, then the timed repeats (as many as the first one's duration asks for, each
    from a prepared state); `after_first()` runs between the first repeat and the others. Returns (warm-up ms,
    repeat times). `together`: every rank of the torchrun world times the unit at once; each repeat starts after
    a barrier, and the number of repeats follows the slowest rank's first one, so that all ranks run as many."""
    setup = runner.prepare
    if together:
        def setup():
            runner.prepare()
            parallel.barrier()
    setup()
    warm = time_once_ms(runner.unit_call)
    first = cuda_time_ms(runner.unit_call, setup=setup, repeats=1)[0]
    if after_first is not None:
        after_first()
    slowest_first = max(parallel.gather(first)) if together else first
    return warm, [first] + cuda_time_ms(runner.unit_call, setup=setup, repeats=repeats_for(slowest_first) - 1)


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
                  folder: Path, profile: bool, single_gpu: tuple[dict, dict] | None = None) -> tuple[dict, dict]:
    """Time, check and profile one stage (see the module docstring). A `distributed` stage under torchrun runs on
    every rank; `single_gpu` is (manifest, outputs) of the run's last single-GPU stage, on rank 0."""
    on_gpu = torch.cuda.is_available()
    wl = runner.workload
    together = stage.distributed and parallel.world_size() > 1
    n_gpus = parallel.world_size() if together else 1
    stage_dir = folder / stage.name
    stage_dir.mkdir(parents=True, exist_ok=True)

    warm, times = time_unit(runner, after_first=torch.cuda.reset_peak_memory_stats if on_gpu else None,
                            together=together)
    peak = gib(torch.cuda.max_memory_allocated()) if on_gpu else None  # over the timed repeats after the first
    timing = summarize(times)
    if together:  # a step ends when its slowest rank's does: that rank's times are the stage's
        ranks = parallel.gather({"timing": timing, "warmup_ms": warm, "peak_memory_gib": peak})
        slowest = max(range(n_gpus), key=lambda r: ranks[r]["timing"]["median"])
        timing, warm = ranks[slowest]["timing"], ranks[slowest]["warmup_ms"]
        peak = max((r["peak_memory_gib"] for r in ranks), default=None) if on_gpu else None
    median = timing["median"]

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
    for part, e in error.get("parts", {}).items():  # a runner's further checks, each against its own tolerance
        e["tolerance"] = cumulative_part_tolerance(plan.stages, stage.name, part)
        e["ok"] = None if e["value"] is None or e["tolerance"] is None else e["value"] <= e["tolerance"]
        if error["ok"] is not None and e["ok"] is not None:
            error["ok"] = error["ok"] and e["ok"]

    ceil = summary["ceilings"]
    flops = runner.flops()
    floor_s = runner.floor_s(ceil)
    m = {
        "workload": wl.name, "family": wl.family, "stage": stage.name, "title": stage.title,
        "run_id": summary["run_id"], "stages_applied": [s.name for s in plan.stages[: plan.stages.index(stage) + 1]],
        "device": summary["env"].get("device", "cpu"), "versions": versions(summary["env"]),
        "date": summary["env"]["date"], "step": runner.unit_description(),
        "timing": timing, "warmup_ms": warm,
        "compile_s": compile_seconds(warm, median) if stage.compiles else 0.0,
        "peak_memory_gib": peak,
        "flops_per_step": flops["per_unit"], **{k: v for k, v in flops.items() if k != "per_unit"},
        "ceilings": {"gemm_tflops": ceil["gemm_tflops"], "attention_tflops": ceil["attention"][ceil["attention_backend"]],
                     "attention_backend": ceil["attention_backend"], "attention_all": ceil["attention"],
                     "attention_cross_all": ceil.get("attention_cross")},
        "mfu": flops["per_unit"] / (median / 1e3 * ceil["gemm_tflops"] * 1e12 * n_gpus),
        "kernel_floor_ms": floor_s / n_gpus * 1e3, "kernel_floor_ratio": (median / 1e3) / (floor_s / n_gpus),
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
    if together:
        m.update(distributed_record(runner, plan, stage, outputs, ranks, slowest, single_gpu))
    m.update(runner.extras(stage, m, summary))
    if profile:
        rank = parallel.rank() if together else 0
        if together:
            parallel.barrier()  # the ranks' profiled steps start together
        n_active, step, profiled = runner.profile_plan()
        trace = profile_steps(step, n_active, stage_dir / trace_name(rank), stage.name, rank=rank,
                              world_size=n_gpus, backend=parallel.backend() if together else None)
        files = [{"file": trace.name, "sha256": sha256(trace), "bytes": trace.stat().st_size}]
        if together:
            files = parallel.gather(files[0])
        m["trace"] = {**files[0], "profiled_steps": profiled,
                      "note": "one warm-up unit precedes the profiled ones (profiler schedule warmup=1)"}
        if together:
            m["trace"]["ranks"] = files
    return m, outputs


# What a stage captured on every rank adds to its manifest and to capture.json's row.
DISTRIBUTED_KEYS = ("world_size", "rank_step_ms", "slowest_rank", "speedup_vs_single_gpu", "error_vs_single_gpu")


def distributed_record(runner, plan: Plan, stage, outputs: dict, ranks: list[dict], slowest: int,
                       single_gpu: tuple[dict, dict] | None) -> dict:
    """Every rank's times and peak memory, the slowest rank, and the comparison with the run's last single-GPU
    stage (its step time and its outputs on the same inputs; none when the run captured no single-GPU stage).
    The error's tolerance is the largest of the stages applied after that one, up to this one: only their
    rounding separates the two outputs."""
    median = ranks[slowest]["timing"]["median"]
    record = {"world_size": len(ranks), "backend": parallel.backend(),
              "rank_timing": [r["timing"] for r in ranks], "rank_step_ms": [r["timing"]["median"] for r in ranks],
              "rank_warmup_ms": [r["warmup_ms"] for r in ranks],
              "rank_peak_memory_gib": [r["peak_memory_gib"] for r in ranks], "slowest_rank": slowest,
              "timing_is": f"rank {slowest}'s, the slowest: a step ends when its last rank does"}
    if single_gpu is None:
        error = {**runner.errors(None, None, against="one GPU"), "value": None}
        error["metric"] += " (not measured: capture a single-GPU stage in the same run, e.g. the one before)"
        record.update(single_gpu=None, speedup_vs_single_gpu=None)
        tolerance = stage.tolerance
    else:
        ref, ref_outputs = single_gpu
        error = runner.errors(outputs, ref_outputs, against=f"{ref['stage']} on one GPU in the same run")
        record.update(single_gpu={"stage": ref["stage"], "step_ms": ref["timing"]["median"]},
                      speedup_vs_single_gpu=ref["timing"]["median"] / median)
        names = [s.name for s in plan.stages]
        tolerance = max(s.tolerance for s in plan.stages[names.index(ref["stage"]) + 1: names.index(stage.name) + 1])
    error.update(reference=single_gpu[0]["stage"] if single_gpu else None, tolerance=tolerance,
                 ok=None if error["value"] is None else error["value"] <= tolerance)
    record["error_vs_single_gpu"] = error
    return record


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
    for name, s in summary["stages"].items():
        if s.get("world_size"):  # a stage on every rank: the comparison its speedup column does not show
            err, sp = s["error_vs_single_gpu"], s["speedup_vs_single_gpu"]
            rows.append(f"{name} on {s['world_size']} ranks: ms per rank "
                        f"{', '.join(f'{t:.1f}' for t in s['rank_step_ms'])} (slowest: rank {s['slowest_rank']}); "
                        + ("no single-GPU stage in this run" if sp is None else
                           f"{sp:.2f}x vs {err['reference']} on one GPU, error {_sci(err['value'])}"))
    if "failed" in summary:
        rows.append(f"FAILED at {summary['failed']['stage']}: {summary['failed']['error'][:200]}")
    print(f"\n== {summary['workload']} (run {summary['run_id']}, {summary['env'].get('device', 'cpu')}, "
          f"{summary['unit']}) ==")
    print("\n".join(rows), flush=True)
