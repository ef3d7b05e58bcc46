"""Capture: run a named workload with its stages on a GPU; per stage, time one step, profile it, write a manifest.

    python -m wanopt capture --workload t2v-a14b-480p --stages all --out traces/

One call is one "capture run": it measures the ceilings first, then applies the stages cumulatively in the order
of wanopt.stages.stage_order(workload) and captures the ones asked for. Every speedup in the manifests compares numbers
taken in the same run on the same machine, and each manifest carries the run's id.

Per captured stage: a warm-up step (compile and graph capture happen here and are reported as compile time),
then a step timed with CUDA events from a fresh state (median, min, max of >= 10 repeats, or >= 3 when a step
takes over a second), its peak memory, the error of its output against the baseline's, and a torch.profiler
trace of one step (two for the A14B offload baseline: a normal step and the expert-switch step), gzip'd, with
ProfilerStep markers and rank metadata as HTA wants them.
"""

from __future__ import annotations

import datetime
import gc
import json
import statistics
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ..configs import get_config, get_workload, num_tokens
from ..models.layers import check_attention_backend
from ..stages import best_backend, get_stage, stage_order, uncompile
from .flops import kernel_floor_s, wan_eval_flops
from .timing import (attention_ceilings_tflops, cuda_time_ms, environment, gemm_ceiling_tflops, gib, rel_l2, sha256,
                     summarize)

PROMPT = "A cat in a tiny astronaut suit walks across the surface of the moon, slow dolly shot, golden rim light"
TRACE_NAME = "rank0.pt.trace.json.gz"


class CaptureNeedsGPU(RuntimeError):
    pass


def require_cuda():
    if not torch.cuda.is_available():
        raise CaptureNeedsGPU(
            "capture needs a CUDA GPU: it times and profiles the real kernels. This machine has none. The traces "
            "and manifests captured on an H100 are committed under traces/, and every notebook reads those.")


# -- profiling --------------------------------------------------------------------------------------------------


def profile_steps(run_step, n_steps: int, trace_path: Path, stage: str, warmup: int = 1) -> Path:
    """Profile `warmup + n_steps` calls of run_step(i); the last n_steps are recorded, one ProfilerStep each."""
    from torch.profiler import ProfilerActivity, profile, schedule

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    trace_path.parent.mkdir(parents=True, exist_ok=True)
    extra = {}
    if torch.cuda.is_available():
        # cudaDeviceSynchronize / cudaStreamSynchronize events: HTA's critical path and the host-sync counts
        extra["experimental_config"] = torch._C._profiler._ExperimentalConfig(enable_cuda_sync_events=True)
    with profile(activities=activities, schedule=schedule(wait=0, warmup=warmup, active=n_steps, repeat=1),
                 on_trace_ready=lambda p: p.export_chrome_trace(str(trace_path)), record_shapes=True,
                 with_stack=False, **extra) as prof:
        prof.add_metadata_json("distributedInfo", json.dumps({"rank": 0, "world_size": 1}))
        prof.add_metadata("stage", stage)
        for i in range(warmup + n_steps):
            run_step(i)
            prof.step()
    return trace_path


# -- T2V --------------------------------------------------------------------------------------------------------


def measure_ceilings(label: str, heads: int, q_len: int, k_len: int, head_dim: int,
                     text_len: int | None = None) -> dict:
    """bf16 GEMM ceiling and every attention kernel at the workload's shapes (self-attention, and cross-attention
    over text_len text tokens where given), on this GPU, now. Without CUDA (bookkeeping tests only) unit
    placeholders stand in."""
    if not torch.cuda.is_available():
        return {"gemm_tflops": 1.0, "attention": {"flash": 1.0}, "attention_backend": "flash"}
    attn = attention_ceilings_tflops(heads, q_len, k_len, head_dim)
    ceil = {"gemm_tflops": gemm_ceiling_tflops(), "attention": attn,
            "attention_shape": [1, heads, q_len, k_len, head_dim]}
    if text_len:
        ceil["attention_cross"] = attention_ceilings_tflops(heads, q_len, text_len, head_dim)
        ceil["attention_cross_shape"] = [1, heads, q_len, text_len, head_dim]
        ceil["attention_cross_share"] = text_len / (k_len + text_len)  # of a block's attention FLOPs
    ceil["attention_backend"] = best_backend(attn, ceil.get("attention_cross"),
                                             ceil.get("attention_cross_share", 0.0))

    def rates(d):
        return {k: round(v) for k, v in d.items() if isinstance(v, float)}
    cross = f", cross ({text_len} keys) {rates(ceil['attention_cross'])}" if text_len else ""
    print(f"[{label}] ceilings: GEMM {ceil['gemm_tflops']:.0f} TFLOP/s, attention {rates(attn)}{cross} TFLOP/s; "
          f"picked {ceil['attention_backend']}", flush=True)
    return ceil


class T2VRun:
    """State of one T2V capture run: the pipeline, the prompts, fresh-state factories and step runners."""

    def __init__(self, workload, config, pipe, context, context_null, seed: int):
        self.workload, self.config, self.pipe = workload, config, pipe
        self.context, self.context_null, self.seed = context, context_null, seed
        ts = pipe.prepare(context, context_null, size=workload.size, frame_num=workload.frame_num).timesteps
        self.timesteps = ts.tolist()
        self.normal_index = 1  # a steady step on the (first) expert; step 0 carries the upload with offload
        self.switch_index = next((i for i, t in enumerate(self.timesteps)
                                  if config.num_experts == 2 and t < config.boundary * 1000), None)

    def state_at(self, index: int):
        state = self.pipe.prepare(self.context, self.context_null, size=self.workload.size,
                                  frame_num=self.workload.frame_num, seed=self.seed)
        state.step_index = index
        return state

    def step_from_fresh(self, index: int):
        """Returns (setup, run, last_output): setup builds a fresh state at `index`, run does one step on it."""
        box = {}

        def setup():
            box["state"] = self.state_at(index)

        def run():
            self.pipe.denoise_step(box["state"])
            box["out"] = box["state"].latents
            box["v"] = box["state"].velocity

        return setup, run, box


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed_once(fn) -> float:
    return cuda_time_ms(fn, repeats=1)[0]


def capture(workload: str, stages="all", out="traces", checkpoint=None, seed: int = 0, profile: bool = True,
            peers: bool = False, compare_whole_compile: bool = False, allow_cpu: bool = False,
            progress: bool = True, attention_backend: str | None = None) -> dict:
    """Capture a workload (see module docstring). Returns the run summary also written to <out>/<workload>/.

    attention_backend forces stage 05's kernel instead of the fastest measured (T2V): to try a newly installed
    kernel through the later stages (compile, CUDA graphs) in a short run before a long one.
    """
    if attention_backend is not None:
        check_attention_backend(attention_backend)
    if not allow_cpu:
        require_cuda()
    wl = get_workload(workload)
    if wl.config.startswith("mg2"):
        from .capture_mg2 import capture_mg2

        return capture_mg2(wl, stages, out, checkpoint, seed, profile, allow_cpu, progress)
    return capture_t2v(wl, stages, Path(out), checkpoint, seed, profile, peers, compare_whole_compile, progress,
                       attention_backend)


def _stage_list(stages, order) -> list[str]:
    if stages in ("all", None):
        return [s.name for s in order]
    names = stages.split(",") if isinstance(stages, str) else list(stages)
    return [get_stage(n.strip()).name for n in names if n.strip()]


def capture_t2v(wl, stages, out: Path, checkpoint, seed, profile, peers, compare_whole_compile, progress,
                attention_backend=None) -> dict:
    from ..pipelines.t2v import WanT2V

    config = get_config(wl.config)
    order = stage_order(wl.name)
    wanted = _stage_list(stages, order)
    last = max(i for i, s in enumerate(order) if s.name in wanted)
    plan = order[: last + 1]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    env = environment()
    run_id = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    tokens = num_tokens(config, wl.size, wl.frame_num)
    summary = {"workload": wl.name, "run_id": run_id, "config": config.name, "tokens": tokens, "env": env,
               "stages_captured": wanted, "stages": {}, "peers": {}}

    # 1. Ceilings, on this GPU, in this run
    summary["ceilings"] = ceil = measure_ceilings(wl.name, config.dit.num_heads, tokens, tokens, config.dit.head_dim,
                                                   text_len=config.dit.text_len)
    if torch.cuda.is_available() and any(s.name == "06_fusion" for s in plan):
        from ..stages.fusion import gelu_epilogue_timings

        # stage 6's FFN at the batched-CFG shape: GELU in the GEMM epilogue only where it measures faster here
        summary["ffn_gelu"] = gelu_epilogue_timings(2 * tokens, config.dit.dim, config.dit.ffn_dim)
        print(f"[{wl.name}] FFN up + GELU: separate {summary['ffn_gelu']['separate_ms']:.2f} ms, epilogue "
              f"{summary['ffn_gelu']['epilogue_ms']:.2f} ms", flush=True)

    # 2. The official pipeline, random weights at real size (or the checkpoint), offload on
    t0 = time.perf_counter()
    pipe = WanT2V(config, checkpoint_dir=checkpoint, device=device, offload=True, seed=seed)
    summary["build_s"] = time.perf_counter() - t0

    # 3. T5 as the official offload path runs it (to the GPU and back), then resident
    box = {}
    summary["t5_encode_offload_ms"] = _timed_once(lambda: box.update(ctx=pipe.encode_prompt(PROMPT)))
    context, context_null = box["ctx"]
    pipe.text_encoder.to(device)
    pipe.offload = False
    pipe.encode_prompt(PROMPT)
    summary["t5_encode_resident_ms"] = summarize(cuda_time_ms(lambda: pipe.encode_prompt(PROMPT), repeats=3))
    pipe.offload = True
    pipe.text_encoder.to("cpu")
    run = T2VRun(wl, config, pipe, context, context_null, seed)
    summary["timesteps"] = run.timesteps

    # 4. Peers: diffusers' WanTransformer3DModel on the same (high-noise / only) expert weights
    if peers:
        summary["peers"] = capture_peers(run, env["diffusers"], compare_cudnn=config.dit.dim < 4096)
        for m in pipe.experts.values():
            m.to("cpu")
        gc.collect()
        torch.cuda.empty_cache()
        torch._dynamo.reset()

    # 5. Stages, cumulatively
    baseline_out, previous = None, None
    if attention_backend is not None:  # forced: recorded, and the manifests' ceilings still say what was fastest
        summary["attention_backend_forced"] = attention_backend
    options = {"05_attention": {"backend": attention_backend or ceil["attention_backend"]}}
    if "ffn_gelu" in summary:
        options["06_fusion"] = {"gelu_epilogue": summary["ffn_gelu"]["gelu_epilogue"]}
    bar = tqdm(plan, desc=f"{wl.name} stages", disable=not progress)
    for stage in bar:
        bar.set_postfix_str(stage.name)
        try:
            if stage.name == "03_tf32" and "02_batched_cfg" in [s.name for s in plan[plan.index(stage):]]:
                summary["batched_cfg_on_reference_numerics"] = try_batched_reference(run)
            previous, baseline_out = _run_stage(run, stage, wanted, options, out, summary, baseline_out, previous,
                                                profile, compare_whole_compile, plan)
        except Exception as exc:  # keep what was captured; later stages build on this one, so stop here
            import traceback

            traceback.print_exc()
            summary["failed"] = {"stage": stage.name, "error": f"{type(exc).__name__}: {exc}"[:2000]}
            break
        pipe = run.pipe
    _write_summary(out / wl.name, summary)
    print_table(summary)
    return summary


def try_batched_reference(run) -> dict:
    """Where batched CFG comes after dtype hygiene: one batched step on the reference numerics, to record whether
    it fits (and its peak memory) or runs out of memory, in this run."""
    pipe = run.pipe
    setup, step, box = run.step_from_fresh(run.normal_index)
    setup()
    pipe.batch_cfg = True
    try:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        ms = _timed_once(step)
        result = {"fits": True, "step_ms": ms,
                  "peak_memory_gib": gib(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None}
    except torch.OutOfMemoryError as exc:
        result = {"fits": False, "error": str(exc).split(" See documentation")[0][:600]}
    finally:
        pipe.batch_cfg = False
        box.clear()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    print(f"  batched CFG on the reference numerics: {result}", flush=True)
    return result


def _run_stage(run, stage, wanted, options, out, summary, baseline_out, previous, profile, compare_whole_compile,
               plan):
    wl, config, pipe = run.workload, run.config, run.pipe
    t0 = time.perf_counter()
    if stage.apply is not None:
        if stage.name == "07_compile" and compare_whole_compile and stage.name in wanted:
            summary["compile_whole_model"] = compare_whole_model_compile(run)
        pipe = stage.apply(pipe, **options.get(stage.name, {}))
        pipe.applied_stages = [*getattr(pipe, "applied_stages", []), stage.name]
        run.pipe = pipe
    apply_s = time.perf_counter() - t0
    if stage.name not in wanted:
        return previous, baseline_out
    m = capture_stage(run, stage, out / wl.name / stage.name, summary, baseline_out, previous, profile, plan)
    m["apply_s"] = apply_s
    output = m.pop("_output")
    if stage.name == "00_baseline":
        baseline_out = output
        m["vae_decode_ms"] = summary["vae_decode_ms"] = time_vae_decode(run)
    m["projection"] = project_video(m, summary, config)
    _write_manifest(out / wl.name / stage.name, m)
    summary["stages"][stage.name] = {k: m[k] for k in ("timing", "peak_memory_gib", "mfu", "kernel_floor_ratio",
                                                        "error_vs_baseline", "speedup_vs_baseline",
                                                        "compile_s", "projection") if k in m}
    _write_summary(out / wl.name, summary)  # after every stage: a later failure loses nothing
    _sync()
    return m, baseline_out


def capture_errors(workloads: list[str], stages, out="traces", seed: int = 0, allow_cpu: bool = False) -> dict:
    """Errors only, no timing: one pipeline (the workloads must share a config), the stages applied in order, and
    for each stage asked for and each workload's size one denoising step from the same fresh state; the guided
    velocity and the latents compared with the baseline's. Writes <out>/<workload>/errors.json."""
    from ..pipelines.t2v import WanT2V

    if not allow_cpu:
        require_cuda()
    wls = [get_workload(w) for w in workloads]
    config = get_config(wls[0].config)
    if any(w.config != wls[0].config for w in wls):
        raise ValueError("capture_errors needs workloads of one model config")
    order = stage_order(wls[0].name)
    wanted = _stage_list(stages, order)
    plan = order[: max(i for i, s in enumerate(order) if s.name in wanted) + 1]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    env = environment()
    run_id = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    pipe = WanT2V(config, device=device, offload=True, seed=seed)
    context, context_null = pipe.encode_prompt(PROMPT)
    runs = [T2VRun(w, config, pipe, context, context_null, seed) for w in wls]
    results = {w.name: {"workload": w.name, "run_id": run_id, "env": env, "kind": "errors only (no timing)",
                        "metric": "relative L2 vs 00_baseline on the same inputs: the guided velocity "
                                  "v_u + g(v_c - v_u) of one step, and the latents after it",
                        "stages": {}} for w in wls}
    baseline = {}
    options = {"05_attention": {"backend": "cudnn" if device == "cuda" else "flash"}}
    for stage in tqdm(plan, desc="errors"):
        if stage.apply is not None:
            pipe = stage.apply(pipe, **options.get(stage.name, {}))
            for r in runs:
                r.pipe = pipe
        if stage.name not in wanted:
            continue
        tolerance = max(s.tolerance for s in plan[: plan.index(stage) + 1])
        for r in runs:
            state = r.state_at(r.normal_index)
            pipe.denoise_step(state)
            v, lat = state.velocity.detach().clone(), state.latents.detach().clone()
            if stage.name == "00_baseline":
                baseline[r.workload.name] = (v, lat)
            bv, bl = baseline[r.workload.name]
            e = {"velocity": rel_l2(v, bv), "latents": rel_l2(lat, bl), "tolerance": tolerance,
                 "stages_applied": [s.name for s in plan[: plan.index(stage) + 1]]}
            e["ok"] = e["velocity"] <= tolerance
            results[r.workload.name]["stages"][stage.name] = e
            print(f"  {r.workload.name} {stage.name}: velocity {e['velocity']:.2e}, latents {e['latents']:.2e}",
                  flush=True)
            del state
        _sync()
    for name, res in results.items():
        _write_json(Path(out) / name / "errors.json", res)
    return results


def _write_json(path: Path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")


def capture_stage(run: T2VRun, stage, folder: Path, summary: dict, baseline_out, previous, profile: bool,
                  plan) -> dict:
    pipe, config, wl = run.pipe, run.config, run.workload
    folder.mkdir(parents=True, exist_ok=True)
    on_gpu = torch.cuda.is_available()
    ceil = summary["ceilings"]

    # warm-up from a fresh state (with offload this is the step that uploads the expert)
    setup, step, box = run.step_from_fresh(run.normal_index)
    setup()
    warm_ms = _timed_once(step)
    first = cuda_time_ms(step, setup=setup, repeats=1)[0]
    repeats = 3 if first > 1000 else 10
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    outputs = []

    def step_and_keep():
        step()
        if not outputs:
            outputs.append((box["out"].detach().clone(), box["v"].detach().clone()))

    times = [first] + cuda_time_ms(step_and_keep, setup=setup, repeats=repeats - 1)
    peak = gib(torch.cuda.max_memory_allocated()) if on_gpu else None
    median = statistics.median(times)
    output = outputs[0]

    model = next(iter(pipe.experts.values()))
    inner = getattr(model, "model", model)  # GraphedDiT wraps the model
    per_token = bool(getattr(inner, "per_token_time", False)) and type(inner).__name__ == "WanModel"
    eval_flops = wan_eval_flops(config.dit, num_tokens(config, wl.size, wl.frame_num), per_token)
    step_flops = 2 * eval_flops["total"]
    attn_tflops = ceil["attention"][ceil["attention_backend"]]
    floor_s = 2 * kernel_floor_s(eval_flops, ceil["gemm_tflops"], attn_tflops)
    if stage.name == "00_baseline":
        err = err_latents = 0.0
    elif baseline_out is None:  # 00_baseline not captured in this run: nothing to compare with, so no number
        err = err_latents = None
    else:
        err, err_latents = rel_l2(output[1], baseline_out[1]), rel_l2(output[0], baseline_out[0])
    tolerance = max(s.tolerance for s in plan[: plan.index(stage) + 1])  # errors add up along the stages
    m = {
        "workload": wl.name, "stage": stage.name, "title": stage.title, "run_id": summary["run_id"],
        "stages_applied": [s.name for s in plan[: plan.index(stage) + 1]],
        "device": summary["env"].get("device", "cpu"),
        "versions": {k: summary["env"].get(k) for k in ("torch", "cuda", "cudnn", "driver", "triton", "python",
                                                         "diffusers", "transformers", "git_commit")},
        "date": summary["env"]["date"],
        "step": wl.step + (" (batched: one forward of batch 2)" if pipe.batch_cfg else " (two sequential forwards)")
                + ("; offload on: one expert resident" if pipe.offload else "; both experts resident"),
        "step_index": run.normal_index, "timestep": run.timesteps[run.normal_index],
        "timing": summarize(times),
        "eval_ms": median / 2,  # CFG: two evals per step (the scheduler step is ~0.1 % of it)
        "warmup_ms": warm_ms,
        "compile_s": max(0.0, (warm_ms - median) / 1e3) if stage.name in ("07_compile", "08_cuda_graphs") else 0.0,
        "peak_memory_gib": peak,
        "flops_per_step": step_flops, "flops_per_eval": eval_flops,
        "ceilings": {"gemm_tflops": ceil["gemm_tflops"], "attention_tflops": attn_tflops,
                     "attention_backend": ceil["attention_backend"], "attention_all": ceil["attention"],
                     "attention_cross_all": ceil.get("attention_cross")},
        "attention_backend_used": getattr(pipe, "attention_backend", "flash"),
        "fusion": _fusion_choices(pipe),
        "mfu": step_flops / (median / 1e3 * ceil["gemm_tflops"] * 1e12),
        "kernel_floor_ms": floor_s * 1e3, "kernel_floor_ratio": (median / 1e3) / floor_s,
        "error_vs_baseline": {"metric": "relative L2 of the guided velocity v_u + g(v_c - v_u) of one step, vs "
                                        "00_baseline on the same inputs"
                                        + ("" if err is not None else " (not measured: capture 00_baseline in the "
                                                                       "same run)"),
                              "value": err, "tolerance": tolerance,
                              "ok": None if err is None else err <= tolerance, "latents_relative_l2": err_latents},
        "speedup_vs_baseline": None, "speedup_vs_previous": None,
    }
    if baseline_out is not None:
        base = summary["stages"]["00_baseline"]["timing"]["median"]
        m["speedup_vs_baseline"] = base / median
    if previous is not None:
        m["previous_stage"] = previous["stage"]
        m["speedup_vs_previous"] = previous["timing"]["median"] / median
    if stage.name == "00_baseline":
        m["first_step_with_upload_ms"] = warm_ms

    # the expert switch with offload: the low-noise expert in, the high-noise one out, in the timed step
    if pipe.offload and run.switch_index is not None and on_gpu:
        def switch_setup():
            pipe.prepare_expert("high_noise")
            box["state"] = run.state_at(run.switch_index)
        n = 2 if median < 20000 else 1
        m["switch_step"] = summarize(cuda_time_ms(step, setup=switch_setup, repeats=n))
        pipe.prepare_expert("high_noise")

    # the trace: consecutive steps of one run from a fresh state
    if profile:
        if pipe.offload and run.switch_index is not None:
            start, active, profiled = run.switch_index - 2, 2, ["normal step", "expert-switch step"]
        else:
            start, active, profiled = run.normal_index - 1 if run.normal_index else 0, 1, ["normal step"]
        state = run.state_at(max(start, 0))
        trace = profile_steps(lambda i: pipe.denoise_step(state), active, folder / TRACE_NAME, stage.name)
        m["trace"] = {"file": TRACE_NAME, "sha256": sha256(trace), "bytes": trace.stat().st_size,
                      "profiled_steps": [{"step_index": max(start, 0) + 1 + i, "what": w,
                                          "timestep": run.timesteps[max(start, 0) + 1 + i]}
                                         for i, w in enumerate(profiled)],
                      "note": "one warm-up step precedes the profiled ones (profiler schedule warmup=1)"}
    m["_output"] = output
    return m


def time_vae_decode(run: T2VRun) -> float:
    """Decode the workload's latent once (after a 2-frame warm-up decode), experts offloaded first as upstream."""
    pipe = run.pipe
    pipe.offload_all()
    latents = run.state_at(0).latents
    pipe.decode(latents[:, :, :2])
    return _timed_once(lambda: pipe.decode(latents))


def project_video(m: dict, summary: dict, config) -> dict:
    """A full video from numbers of this run: T5 + all steps (+ offload uploads and the switch) + VAE decode."""
    steps = config.sample_steps
    step_ms = m["timing"]["median"]
    offload = "offload on" in m["step"]
    t5 = summary["t5_encode_offload_ms"] if offload else summary["t5_encode_resident_ms"]["median"]
    parts = {"t5_ms": t5, "steps_ms": steps * step_ms, "vae_ms": summary.get("vae_decode_ms")}
    if offload and "first_step_with_upload_ms" in m:
        parts["first_upload_ms"] = m["first_step_with_upload_ms"] - step_ms
    if offload and "switch_step" in m:
        parts["switch_extra_ms"] = m["switch_step"]["median"] - step_ms
    total = sum(v for v in parts.values() if v is not None)
    return {**parts, "total_s": total / 1e3, "steps": steps,
            "formula": "T5 + steps × step (+ first upload + switch overhead with offload) + VAE decode"}


# -- peers ------------------------------------------------------------------------------------------------------


def diffusers_twin(model):
    """diffusers' WanTransformer3DModel sharing `model`'s bf16 weights (no copy), with the modules diffusers keeps
    in fp32 (`_keep_in_fp32_modules`) in fp32, as `from_pretrained(torch_dtype=bf16)` gives a user."""
    from diffusers import WanTransformer3DModel

    from ..weights import wan_state_dict_to_diffusers

    c = model.config
    with torch.device("meta"):
        twin = WanTransformer3DModel(patch_size=c.patch_size, num_attention_heads=c.num_heads,
                                     attention_head_dim=c.head_dim, in_channels=c.in_dim, out_channels=c.out_dim,
                                     text_dim=c.text_dim, freq_dim=c.freq_dim, ffn_dim=c.ffn_dim,
                                     num_layers=c.num_layers, cross_attn_norm=c.cross_attn_norm, eps=c.eps)
    keep = WanTransformer3DModel._keep_in_fp32_modules
    state = {}
    for k, v in wan_state_dict_to_diffusers(model.state_dict()).items():
        state[k] = v.float() if any(part in k.split(".") or k.startswith(part) for part in keep) else v
    twin.load_state_dict(state, strict=True, assign=True)
    twin.rope = type(twin.rope)(c.head_dim, c.patch_size, 1024).to(next(model.parameters()).device)
    return twin.eval().requires_grad_(False)


def capture_peers(run: T2VRun, diffusers_version: str, compare_cudnn: bool = False) -> dict:
    """One denoising step with diffusers' model as the transformer (two sequential CFG evals, as diffusers'
    WanPipeline does), eager and regional-compiled (`compile_repeated_blocks`), same weights, same inputs."""
    pipe = run.pipe
    name = "high_noise" if run.config.num_experts == 2 else "model"
    model = pipe.prepare_expert(name)
    twin = diffusers_twin(model)
    results = {}

    text_len = run.config.dit.text_len
    ctx, ctx_null = (torch.cat([c, c.new_zeros(1, text_len - c.size(1), c.size(2))], 1)
                     for c in (run.context, run.context_null))  # diffusers' pipeline pads to 512 as well

    def twin_step(state):
        t = state.timesteps[state.step_index]
        g = pipe.guide_scale_for(t)
        x = state.latents
        xb = x.to(torch.bfloat16)  # WanPipeline feeds the transformer its own dtype
        v_c = twin(xb, t.reshape(1), ctx, return_dict=False)[0]
        v_u = twin(xb, t.reshape(1), ctx_null, return_dict=False)[0]
        state.velocity = v_u + g * (v_c - v_u)
        state.latents = state.scheduler.step(state.velocity, t, x, return_dict=False)[0]
        state.step_index += 1

    def measure(label):
        box = {}

        def setup():
            box["s"] = run.state_at(run.normal_index)

        setup()
        warm = _timed_once(lambda: twin_step(box["s"]))
        times = cuda_time_ms(lambda: twin_step(box["s"]), setup=setup, repeats=3 if warm > 1000 else 10)
        setup()
        twin_step(box["s"])
        ours = run.state_at(run.normal_index)
        pipe.denoise_step(ours)
        results[label] = {"timing": summarize(times), "warmup_ms": warm,
                          "compile_s": max(0.0, (warm - statistics.median(times)) / 1e3),
                          "error_vs_baseline": rel_l2(box["s"].latents, ours.latents),  # latents after the step
                          "velocity_error_vs_baseline": rel_l2(box["s"].velocity, ours.velocity)}
        print(f"  peer {label}: {statistics.median(times):.1f} ms/step", flush=True)

    with torch.no_grad():
        measure("diffusers_eager")
        twin.compile_repeated_blocks(fullgraph=True)
        measure("diffusers_regional_compile")
        if compare_cudnn:
            torch._dynamo.reset()
            twin.set_attention_backend("_native_cudnn")
            measure("diffusers_regional_compile_cudnn")
    results["note"] = (f"diffusers {diffusers_version}, default attention backend "
                       "(native SDPA dispatch) unless the label says cudnn; the twin shares the expert's bf16 "
                       "weights and keeps diffusers' fp32 modules in fp32")
    twin = None  # noqa: F841 - drop the twin's reference before freeing memory
    gc.collect()
    torch.cuda.empty_cache()
    return results


def compare_whole_model_compile(run: T2VRun) -> dict:
    """torch.compile of the whole model, timed in this run before the regional compile replaces it."""
    from ..stages import compile_model

    compile_model(run.pipe)
    setup, step, box = run.step_from_fresh(run.normal_index)
    setup()
    warm = _timed_once(step)
    times = cuda_time_ms(step, setup=setup, repeats=3 if warm > 1000 else 10)
    uncompile(run.pipe)
    return {"timing": summarize(times), "warmup_ms": warm,
            "compile_s": max(0.0, (warm - statistics.median(times)) / 1e3)}


# -- output -----------------------------------------------------------------------------------------------------


def _write_manifest(folder: Path, m: dict):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps(m, indent=2, default=_json_default) + "\n")


def _fusion_choices(pipe) -> dict | None:
    """Stage 6's measured choice, where it ran: whether the FFN's GELU runs in the GEMM epilogue."""
    return {"gelu_epilogue": pipe.gelu_epilogue} if hasattr(pipe, "gelu_epilogue") else None


def _write_summary(folder: Path, summary: dict):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "capture.json").write_text(json.dumps(summary, indent=2, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, (torch.dtype, torch.device, Path)):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def _sci(x) -> str:
    return "n/a" if x is None else f"{x:.2e}"


def print_table(summary: dict):
    rows = [f"{'stage':<18}{'step ms':>10}{'speedup':>9}{'MFU':>7}{'floor×':>8}{'mem GiB':>9}{'err':>10}"]
    for name, s in summary["stages"].items():
        sp = s.get("speedup_vs_baseline") or 1.0
        mem = s.get("peak_memory_gib")
        rows.append(f"{name:<18}{s['timing']['median']:>10.1f}{sp:>9.2f}{s['mfu']:>7.2f}"
                    f"{s['kernel_floor_ratio']:>8.2f}{(mem if mem is not None else float('nan')):>9.1f}"
                    f"{_sci(s['error_vs_baseline']['value']):>10}")
    for label, p in summary.get("peers", {}).items():
        if isinstance(p, dict):
            rows.append(f"{label:<34}{p['timing']['median']:>10.1f} ms/step (compile {p['compile_s']:.0f} s)")
    print(f"\n== {summary['workload']} (run {summary['run_id']}, {summary['env'].get('device', 'cpu')}) ==")
    print("\n".join(rows), flush=True)


__all__ = ["capture", "CaptureNeedsGPU", "require_cuda", "profile_steps", "diffusers_twin"]
