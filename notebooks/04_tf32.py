# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 04 · TF32 for the float32 islands
#
# **What.** The reference runs its linears in bf16 but keeps a few float32 islands: the time embedding and time
# projection (`autocast(float32)`) and the head. TF32 is never enabled upstream, so these GEMMs run on CUDA cores
# in plain fp32. Stage `03_tf32` (`wanopt.stages.tf32.enable_tf32`) lets fp32 matmuls use TF32 tensor cores inside
# every DiT call. The switch is scoped: it is set on entry and restored on exit. The result is not exact, because
# TF32 rounds the GEMM inputs to 10 mantissa bits.
#
# **Prediction.** Only fp32 GEMMs change, and their size depends on the model:
# - Wan 2.2 (A14B) embeds the timestep **per token**, so the time MLP is a 32,760 × 5120 × 30720 fp32 GEMM and
#   more per forward: about 0.23 s per A14B forward at 480p (spec §5.4, measured with TF32 off). TF32 runs it
#   about 7× faster, which saves about 0.4 s of a 10 s step: **about 1.04×**.
# - Wan 2.1 (1.3B) embeds it **per sample**, one row, so there is **nothing** to gain.
#
# The Wan2.2 acceleration guide claims 1.3×. That would need more than 2 s of fp32 GEMM per A14B step. Below, the
# prediction computed from the manifests' FLOP counts and the spec's measured fp32 time:

# %%
from wanopt.profiling.notebook import setup

setup()  # quiet libraries before they load: nbval compares stderr

import pandas as pd
import torch

from wanopt.pipelines.t2v import WanT2V
from wanopt.profiling import analysis, report
from wanopt.stages import enable_tf32, get_stage

STAGE, A14B, W13 = "03_tf32", "t2v-a14b-480p", "t2v-1.3b-480p"
SPEC_TIME_MLP_FP32_S = 0.228  # spec wan_t2v.md §5.4: per-token time MLP of one A14B forward at 480p, fp32, H100
TF32_GAIN = 7.0  # TF32 tensor cores against CUDA-core fp32 (stage docstring)

a14b_flops = analysis.load_manifest(A14B, STAGE)["flops_per_eval"]["time_mlp"]
fp32_rate = a14b_flops / SPEC_TIME_MLP_FP32_S  # FLOP/s that the spec's measurement implies
predicted = {}
for w in (W13, A14B):
    m = analysis.load_manifest(w, STAGE)
    before = analysis.load_manifest(w, m["previous_stage"])["timing"]["median"]
    saved = 2 * m["flops_per_eval"]["time_mlp"] / fp32_rate * (1 - 1 / TF32_GAIN) * 1e3  # two CFG evals per step
    predicted[w] = {"time MLP TFLOP per eval": m["flops_per_eval"]["time_mlp"] / 1e12,
                    "predicted saving ms per step": saved, "predicted speedup ×": before / (before - saved)}
pd.DataFrame(predicted).T.round({"time MLP TFLOP per eval": 3, "predicted saving ms per step": 0,
                                  "predicted speedup ×": 3})

# %% [markdown]
# ## Correctness on the tiny model (live, CPU)
# A CPU has no TF32. The live check therefore shows that the stage changes nothing else (error exactly 0, in both
# orders: TF32 follows no-offload and, in the default order, batched CFG) and that the switch is scoped: TF32 is on
# inside the DiT call and off again after it.

# %%
report.tiny_stage_errors(STAGE, W13)

# %%
pipe = enable_tf32(WanT2V("tiny", device="cpu", seed=0, vae=False))
seen = []
for model in pipe.experts.values():
    model.register_forward_pre_hook(lambda module, args: seen.append(torch.backends.cuda.matmul.fp32_precision))
state = pipe.prepare(*pipe.encode_prompt("a paper boat drifting down a rain gutter"), sampling_steps=40)
pipe.denoise_step(state)
print(f"fp32 matmul precision inside the DiT: {sorted(set(seen))}; after the step: "
      f"{torch.backends.cuda.matmul.fp32_precision!r}")

# %% [markdown]
# ## The H100 numbers
# Each row compares the stage with the stage captured just before it in the same run: `02_batched_cfg` in the
# default order, `01_no_offload` in the A14B order (from the manifest). The error column is the relative L2 of one
# step's guided velocity against `00_baseline`'s, from the same state, at real size (traces/README.md).

# %%
print(analysis.provenance(analysis.load_manifest(A14B, STAGE)))
cmp = report.stage_comparison(STAGE)
cmp

# %% [markdown]
# How much of that error is TF32's own: the velocity error of the previous stage and of this one, per workload.
# On A14B the previous stage (`01_no_offload`) is exact, so its whole error is TF32's; on the 1.3B model the previous
# stage is batched CFG, which carries an error of its own:

# %%
ve = report.velocity_errors()
for w in (W13, A14B):
    prev = report.previous_stage(w, STAGE)
    print(f"{w}: velocity rel L2 {ve.loc[(w, prev), 'velocity rel L2']:.1e} after {prev}, "
          f"{ve.loc[(w, STAGE), 'velocity rel L2']:.1e} after {STAGE}; the stage's tolerance "
          f"{get_stage(STAGE).tolerance:g}")

# %% [markdown]
# ## In the trace: the time embedding of one A14B forward
# The kernels launched inside the `time_embed` label of the cond pass, before and after, on one time axis:

# %%
fig = report.block_timelines(A14B, "01_no_offload", STAGE, label="time_embed")

# %% [markdown]
# GPU time of the fp32 islands per profiled step (both CFG passes), from the record-function labels:

# %%
islands = {}
for w in (W13, A14B):
    for s in (report.previous_stage(w, STAGE), STAGE):
        islands[(w, s)] = analysis.gpu_time_by_label(analysis.load_trace(w, s), "time_embed|head")["gpu_ms"]
pd.DataFrame(islands).T

# %% [markdown]
# By category and by kernel (HTA TraceDiff) for A14B. The fp32 GEMM kernels (`f32f32_f32f32`) are replaced by
# TF32 ones (`tf32f32`). Nothing else moves by more than about half a percent:

# %%
analysis.category_diff(A14B, "01_no_offload", STAGE)

# %%
analysis.trace_diff(A14B, "01_no_offload", STAGE, top=6)

# %% [markdown]
# The 1.3B model, by category. There is no large fp32 GEMM to speed up:

# %%
analysis.category_diff(W13, "02_batched_cfg", STAGE)

# %% [markdown]
# The trace against the timed steps. Each stage ran one warm-up step, three timed steps (CUDA events; the H100 table
# above takes their median) and one profiled step. The A14B saving in GPU kernel time (the category table's total),
# in the profiled step and in the timed medians, then every step of both stages, ms:

# %%
steps = {}
for w in (W13, A14B):
    for s in (report.previous_stage(w, STAGE), STAGE):
        m, a = analysis.load_manifest(w, s), analysis.load_trace(w, s)
        start, end = analysis.window(a, "denoise_step")
        steps[(w, s)] = {"warm-up step": m["warmup_ms"], "timed min": m["timing"]["min"],
                         "timed median": m["timing"]["median"], "timed max": m["timing"]["max"],
                         "profiled step": (end - start) / 1e3}
steps = pd.DataFrame(steps).T
prev = report.previous_stage(A14B, STAGE)
gpu = analysis.category_diff(A14B, prev, STAGE).loc["total", "Δ ms"]
print(f"A14B saving: {-gpu:.0f} ms of GPU kernel time and "
      f"{steps.loc[(A14B, prev), 'profiled step'] - steps.loc[(A14B, STAGE), 'profiled step']:.0f} ms of profiled step "
      f"(trace); {steps.loc[(A14B, prev), 'timed median'] - steps.loc[(A14B, STAGE), 'timed median']:.0f} ms "
      f"between the timed medians. The five steps of {prev} span "
      f"{steps.loc[(A14B, prev)].max() - steps.loc[(A14B, prev)].min():.0f} ms, those of {STAGE} "
      f"{steps.loc[(A14B, STAGE)].max() - steps.loc[(A14B, STAGE)].min():.0f} ms")
steps.round(0)

# %% [markdown]
# ## Verdict

# %%
te = pd.DataFrame(islands).T["time_embed"]
print(f"A14B time embedding per step: {te[(A14B, '01_no_offload')]:.0f} -> {te[(A14B, STAGE)]:.0f} GPU ms "
      f"({te[(A14B, '01_no_offload')] / te[(A14B, STAGE)]:.1f}× faster); GPU kernel time of the step {gpu:+.0f} ms; "
      f"velocity error after {STAGE} {ve.loc[(A14B, STAGE), 'velocity rel L2']:.0e} "
      f"(tolerance {get_stage(STAGE).tolerance:g})")
verdict = pd.DataFrame({"saved ms per step": cmp["before ms"] - cmp["after ms"], "speedup ×": cmp["speedup ×"]})
verdict = verdict.join(pd.DataFrame(predicted).T.drop(columns="time MLP TFLOP per eval"))
verdict.round({"saved ms per step": 0, "predicted saving ms per step": 0, "speedup ×": 3, "predicted speedup ×": 3})

# %% [markdown]
# The prediction holds on both models. TF32 speeds up exactly the per-token time MLP, by about the expected
# factor (465 → 65 GPU ms per step), and the profiled step's GEMM time drops by about 400 ms, all of it in that
# GEMM (the step's GPU kernel time drops 434 ms; the rest is a 25 ms, half-percent wobble in attention). The timed
# medians agree: 406 ms saved, 1.041× against the predicted 391 ms and 1.04×, a difference well inside the
# ~100 ms over which each stage's five steps scatter (table above). On the 1.3B model the time MLP is a single row
# and the step does not move (0.999×). On A14B the previous stage is exact, so the velocity error of 6e-3 is
# TF32's own, under a third of the stage's tolerance.
#
# The guide's 1.3× is not reachable from this switch alone. After TF32 the time MLP is a small share of the step,
# and the remaining fp32 work (the per-token modulation, the fp32 residual) is elementwise, not GEMM, so TF32
# cannot touch it. Dtype hygiene (notebook 05) removes the per-token time MLP altogether, so on A14B this stage's
# gain is later subsumed. TF32 remains a cheap, scoped switch for any fp32 GEMM left in the model.
