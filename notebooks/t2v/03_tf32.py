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
# # t2v/03_tf32 · TF32 for the float32 islands
#
# **What.** The reference runs its linears in bf16 but keeps a few float32 islands: the time embedding and time
# projection (`autocast(float32)`) and the head. TF32 is never enabled upstream, so these GEMMs run on CUDA cores
# in plain fp32. Stage `03_tf32` (`wanopt.stages.tf32.enable_tf32`) lets fp32 matmuls use TF32 tensor cores inside
# every DiT call. The switch is scoped: it is set on entry and restored on exit. The result is not exact, because
# TF32 rounds the GEMM inputs to 10 mantissa bits.
#
# **Prediction.** Only fp32 GEMMs change, and their size depends on the model:
# - Wan 2.2 (A14B) embeds the timestep **per token**, so the time MLP is a 32,760 × 5120 × 30720 fp32 GEMM and
#   more per forward. The trace of the stage before (TF32 off, same run) says how long it takes: the GPU time
#   launched under its `time_embed` label. TF32 on tensor cores runs an fp32 GEMM about 7× faster than plain fp32 on
#   CUDA cores (the stage's docstring), so the step should lose about 6/7 of that time: **about 1.04×** on A14B.
# - Wan 2.1 (1.3B) embeds it **per sample**, one row, so there is **nothing** to gain.
#
# The Wan2.2 acceleration guide claims 1.3×. That would need several seconds of fp32 GEMM per A14B step. Below, the
# prediction computed from the previous stage's trace:

# %%
from wanopt.profiling.notebook import setup

setup()  # quiet libraries before they load: nbval compares stderr

import pandas as pd
import torch

from wanopt.pipelines.t2v import WanT2V
from wanopt.profiling import analysis, report
from wanopt.stages import enable_tf32, tolerance_at

STAGE, A14B, W13 = "03_tf32", "t2v-a14b-480p", "t2v-1.3b-480p"
TF32_GAIN = 7.0  # TF32 tensor cores against CUDA-core fp32 (wanopt.stages.tf32)

predicted = {}
for w in (W13, A14B):
    m = analysis.load_manifest(w, STAGE)
    prev = m["previous_stage"]
    before = analysis.load_manifest(w, prev)["timing"]["median"]
    by_label = analysis.gpu_time_by_label(analysis.load_trace(w, prev), "time_embed")["gpu_ms"]
    fp32_ms = float(by_label.get("time_embed", 0.0))  # both CFG evals of the profiled step, TF32 off
    saved = fp32_ms * (1 - 1 / TF32_GAIN)
    predicted[w] = {"time MLP TFLOP per eval": m["flops_per_eval"]["time_mlp"] / 1e12,
                    "stage before": prev, "its time MLP GPU ms per step (TF32 off)": fp32_ms,
                    "predicted saving ms per step": saved, "predicted speedup ×": before / (before - saved)}
pd.DataFrame(predicted).T.infer_objects().round(3)

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
# ## The GPU numbers
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
    print(f"{w}: velocity rel L2 {report.sci(ve.loc[(w, prev), 'velocity rel L2'], 1)} after {prev}, "
          f"{report.sci(ve.loc[(w, STAGE), 'velocity rel L2'], 1)} after {STAGE}; the tolerance at this stage "
          f"{tolerance_at(STAGE, w):g}")

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
# By category and by GPU kernel for A14B. The fp32 GEMM kernels (`f32f32_f32f32`) are replaced by
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
# The trace against the timed steps. Each stage ran one warm-up step, three timed steps (CUDA events; the table
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
      f"(tolerance {tolerance_at(STAGE, A14B):g})")
verdict = pd.DataFrame({"saved ms per step": cmp["before ms"] - cmp["after ms"], "speedup ×": cmp["speedup ×"]})
verdict = verdict.join(pd.DataFrame(predicted).T[["predicted saving ms per step", "predicted speedup ×"]].astype(float))
verdict.round({"saved ms per step": 0, "predicted saving ms per step": 0, "speedup ×": 3, "predicted speedup ×": 3})

# %% [markdown]
# The prediction holds on both models. On A14B, TF32 speeds up exactly the per-token time MLP, by about the expected
# factor (the line above), and the profiled step's GEMM time drops by about that much; the rest of the kernel time
# moves by about half a percent. The timed medians agree with the prediction well inside the spread of each
# stage's five steps (the table of steps above). On the 1.3B model the time MLP is a single row and the step does
# not move. On A14B the previous stage is exact, so the velocity error is TF32's own, well under the tolerance.
#
# The guide's 1.3× is not reachable from this switch alone. After TF32 the time MLP is a small share of the step,
# and the remaining fp32 work (the per-token modulation, the fp32 residual) is elementwise, not GEMM, so TF32
# cannot touch it. Dtype hygiene (`t2v/04_dtype_hygiene`) removes the per-token time MLP altogether, so on A14B
# this stage's gain is later subsumed. TF32 remains a cheap, scoped switch for any fp32 GEMM left in the model.
