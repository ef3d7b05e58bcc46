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
# # t2v/00_baseline · The official Wan T2V baseline: where one denoising step goes
#
# The baseline is the official single-GPU recipe of `wan/text2video.py`: offload on (one expert resident,
# synchronous `.to()` moves at step 0 and at the expert switch, T5 to the GPU and back), bf16 weights
# (`--convert_model_dtype`), two sequential CFG forwards per step, and the reference numerics of
# `wan/modules/model.py`: fp32 islands, an fp32 residual stream, per-token timestep embedding in Wan 2.2, float64
# complex RoPE, `flash_attention()`'s packing copies. One difference from the official README's table: upstream
# runs FlashAttention-3 when it is installed and FlashAttention-2 otherwise; FA3 ships no wheel for the capture
# machines, so the baseline attention is FA2 (PyTorch's SDPA flash kernel), what a user without FA3 gets.
#
# **Prediction.** At 32,760 tokens and more, a step is compute-bound: attention and the GEMMs should take most of
# the GPU time, with the reference's fp32 and fp64 detours (small elementwise kernels and casts) next, and almost no
# idle time on the GPU.
#
# Everything below is read from traces and manifests captured by `python -m wanopt capture` and committed under
# `traces/`, one capture run per workload (each run's GPU, software and commit are printed with its provenance;
# compare numbers within one run). Three workloads: Wan2.1-T2V-1.3B at 832×480, Wan2.2-T2V-A14B at 832×480 and
# at 1280×720, 81 frames each.

# %%
from wanopt.profiling.notebook import setup

setup()  # quiet libraries before they load: nbval compares stderr

import matplotlib.pyplot as plt
import pandas as pd

from wanopt.profiling import analysis, plots, report
from wanopt.targets import REFERENCE

WORKLOADS = list(report.T2V_WORKLOADS)
base = {w: analysis.load_manifest(w, "00_baseline") for w in WORKLOADS}
runs = {w: analysis.load_run(w) for w in WORKLOADS}
traces = {w: analysis.load_trace(w, "00_baseline") for w in WORKLOADS}
kern = {w: analysis.kernels(traces[w]) for w in WORKLOADS}
for w in WORKLOADS:
    print(analysis.provenance(base[w]), end="\n\n")

# %% [markdown]
# ## One step: time, MFU and the kernel floor
# MFU is the step's FLOPs (counted analytically, 2 per multiply-add, `wanopt.profiling.flops`) over step time ×
# the bf16 GEMM ceiling; the kernel floor is attention FLOPs at the fastest attention kernel plus all other FLOPs at
# the GEMM ceiling — both ceilings measured on the same GPU in the same run, right before the workload.

# %%
BACKENDS = list(dict.fromkeys(b for w in WORKLOADS for b in base[w]["ceilings"]["attention_all"]))
rows = []
for w in WORKLOADS:
    m = base[w]
    c = m["ceilings"]
    rows.append({"workload": w, "step s": m["timing"]["median"] / 1e3, "repeats": m["timing"]["n"],
                 "PFLOP / step": m["flops_per_step"] / 1e15, "MFU": m["mfu"], "floor s": m["kernel_floor_ms"] / 1e3,
                 "× floor": m["kernel_floor_ratio"], "peak GiB": m["peak_memory_gib"],
                 "attention % of FLOPs": 100 * m["flops_per_eval"]["attention"] / m["flops_per_eval"]["total"],
                 "GEMM TFLOP/s": c["gemm_tflops"],
                 **{f"{b} TFLOP/s": c["attention_all"].get(b) for b in BACKENDS},
                 "FA2 / fastest %": 100 * c["attention_all"]["flash"] / c["attention_tflops"],
                 "fastest": c["attention_backend"]})
one_step = pd.DataFrame(rows).set_index("workload").round(2).round({"attention % of FLOPs": 0, "FA2 / fastest %": 0})
one_step

# %% [markdown]
# The two ceilings say why the baseline sits well above its floor before any trace is opened: attention is
# between half and three quarters of the FLOPs, and the FA2 kernel the baseline uses reaches only part of the
# rate of the fastest kernel measured at the same shape (the `fastest` column; every floor assumes that kernel's
# rate). In numbers, from the table:

# %%
for w, r in one_step.iterrows():
    print(f"{w}: {r['× floor']:.2f}× the kernel floor; attention {r['attention % of FLOPs']:.0f} % of the FLOPs; "
          f"FA2 at {r['FA2 / fastest %']:.0f} % of {r['fastest']}'s rate at this shape")

# %% [markdown]
# ## The kernel timeline of one step and of one block
# One denoising step of the A14B expert at 480p (the two CFG passes, then the scheduler), and block 5 of its cond pass.

# %%
w = "t2v-a14b-480p"
ax = plots.kernel_timeline(kern[w], analysis.window(traces[w], "denoise_step", 0),
                           f"{w} 00_baseline on an {report.device_of(w)}: one denoising step (normal step, "
                           "high-noise expert)")
plt.show()

# %%
ax = plots.kernel_timeline(kern[w], analysis.window(traces[w], "block05", 0),
                           f"{w} 00_baseline on an {report.device_of(w)}: block05 of the cond pass")
plt.show()

# %% [markdown]
# Inside a block: the long orange bar is the self-attention kernel; the red and green slivers before it are the
# reference's RoPE in complex128 (to float64, multiply, cat, stack, back to float32), the q/k RMSNorms, the
# float32 modulation and the casts that autocast inserts; after it the output projection, cross-attention and FFN
# with their float32 gated residual adds.

# %% [markdown]
# ## GPU time by category, per profiled step

# %%
steps = {w: analysis.in_window(kern[w], analysis.window(traces[w], "denoise_step", 0)) for w in WORKLOADS}
table = pd.concat({w: analysis.category_breakdown(steps[w]) for w in WORKLOADS}, axis=1)
table

# %%
fig = plots.category_bars({f"{w} ({report.device_of(w)})": analysis.category_breakdown(steps[w])
                           for w in WORKLOADS},
                          "00_baseline: GPU kernel time of one normal denoising step, by category")
plt.show()

# %% [markdown]
# ## Small ops and casts inside one block
# The share of block 5 of the cond pass that runs outside GEMM and attention: the reference's elementwise work,
# norms and casts, what stage `04_dtype_hygiene` and stage `06_fusion` go after.

# %%
rows = []
for w in WORKLOADS:
    blk = analysis.category_breakdown(analysis.in_window(kern[w], analysis.window(traces[w], "block05", 0)))
    other = blk.loc[["norm/elementwise", "cast/copy", "other"], "ms"].sum()
    total = blk["ms"].sum()
    rows.append({"workload": w, "block ms": total, "GEMM ms": blk.loc["GEMM", "ms"],
                 "attention ms": blk.loc["attention", "ms"], "small ops + casts ms": other,
                 "share %": 100 * other / total})
pd.DataFrame(rows).set_index("workload").round(1)

# %% [markdown]
# The share is smallest at 720p, whose attention grows with the square of the tokens while the small ops grow
# linearly.

# %% [markdown]
# The kernels behind that share, for the A14B expert at 480p (one whole normal step):

# %%
analysis.top_kernels(steps["t2v-a14b-480p"], 12)

# %% [markdown]
# ## GPU time per label
# Every kernel is attributed to the record-function labels open on the host when it was launched (nested labels
# count their children). `self_attn` includes the q/k/v projections, q/k norms, RoPE and the packing copies;
# `time_embed` is Wan 2.2's per-token float32 time MLP (L × 5120 × 30720 per forward), which Wan 2.1 computes once.

# %%
LABELS = r"cfg_cond|cfg_uncond|self_attn|cross_attn|ffn|time_embed|text_embed|patch_embed|head|scheduler_step"
label_rows = [analysis.gpu_time_by_label(traces[w], LABELS, iteration=1)["gpu_ms"].rename(w) for w in WORKLOADS]
(pd.concat(label_rows, axis=1) / 1e3).round(3).rename_axis("GPU s in one normal step")

# %% [markdown]
# ## Launches and idle time
# In this regime the CPU runs far ahead of the GPU: launches queue up (long launch-to-start delays, the profiler's
# "Command Buffer Full"). On the A14B runs the GPU idles almost only where the host waits on it (`.item()` for the
# expert choice, the switch's synchronous copies); the 1.3B run, with one expert and no switch, idles a few tens of
# ms per trace, mostly in short gaps between queued kernels. HTA's launch statistics and idle breakdown cover the whole trace (for the
# A14B baselines that is a normal step and the switch step); the split of one normal step comes after.

# %%
pd.concat({w: analysis.launch_stats(traces[w])["value"] for w in WORKLOADS}, axis=1).T

# %%
pd.concat({w: analysis.idle_breakdown(traces[w]) for w in WORKLOADS}, axis=1)

# %%
pd.concat({w: analysis.temporal_breakdown(traces[w]) for w in WORKLOADS}, axis=1).rename_axis(
    "whole trace (HTA)")

# %%
pd.concat({w: analysis.busy_breakdown(kern[w], analysis.window(traces[w], "denoise_step", 0)) for w in WORKLOADS},
          axis=1).rename_axis("one normal step")

# %% [markdown]
# ## The cost of offloading
# With offload on, step 0 uploads the high-noise expert (28.6 GB bf16) and the switch step (the first with
# t < 875) moves it back to the CPU and uploads the low-noise one, synchronously, from pageable memory. T5 makes the
# same round trip for the prompts. The A14B traces hold a normal step and the switch step.

# %%
rows = []
for w in WORKLOADS:
    m, r = base[w], runs[w]
    row = {"workload": w, "normal step s": m["timing"]["median"] / 1e3,
           "first step (with upload) s": m["first_step_with_upload_ms"] / 1e3,
           "T5 encode, offload s": r["t5_encode_offload_ms"] / 1e3,
           "T5 encode, resident s": r["t5_encode_resident_ms"]["median"] / 1e3}
    if "switch_step" in m:
        row["switch step s"] = m["switch_step"]["median"] / 1e3
        row["switch repeats"] = m["switch_step"]["n"]
    rows.append(row)
pd.DataFrame(rows).set_index("workload").round(2)

# %%
copies = []
for w in ("t2v-a14b-480p", "t2v-a14b-720p"):
    k = analysis.in_window(kern[w], analysis.window(traces[w], "denoise_step", 1))  # the switch step
    mem = k[k["category"] == "memcpy H2D/D2H"].groupby("short_name").agg(calls=("dur", "size"),
                                                                          seconds=("dur", "sum"),
                                                                          GB=("bytes", "sum"))
    mem["seconds"] /= 1e6
    mem["GB"] /= 1e9
    mem["GB/s"] = mem["GB"] / mem["seconds"]
    copies.append(mem.assign(workload=w).reset_index().set_index(["workload", "short_name"]))
pd.concat(copies).round(2)

# %% [markdown]
# The device-to-host half of the switch (the outgoing expert into pageable memory) runs at about 1.3 GB/s on the
# A14B runs' machine and dominates the switch (22–23 s of it); the upload runs at 7–8 GB/s.

# %% [markdown]
# ## A whole A14B video, projected, beside the official table
# From numbers of the same run: T5 (with its offload round trip) + 40 steps × the normal step + the first upload +
# the switch's extra time + the VAE decode (measured once in the run, float32, 81 frames). The last column is the
# official Wan2.2 README table (one GPU, `--offload_model True --convert_model_dtype`, FA3; `wanopt.targets.
# REFERENCE`).

# %%
OFFICIAL = REFERENCE["wan22_official_offload_s"]
rows = []
for w in ("t2v-a14b-480p", "t2v-a14b-720p"):
    p = base[w]["projection"]
    rows.append({"workload": w, "T5 s": p["t5_ms"] / 1e3, "40 steps s": p["steps_ms"] / 1e3,
                 "first upload s": p["first_upload_ms"] / 1e3, "switch extra s": p["switch_extra_ms"] / 1e3,
                 "VAE decode s": p["vae_ms"] / 1e3, "projected video s": p["total_s"],
                 "official table s": OFFICIAL[w]})
proj = pd.DataFrame(rows).set_index("workload")
proj.round(1)

# %% [markdown]
# The projection is above the official table. Two measured causes account for most of it: the attention kernel
# (FA2 here; upstream's table used FA3) and the slow pageable copies of this machine's switch. The attention part
# can be bounded from the same run: the baseline's attention kernel time per step, and what it would be at the
# fastest kernel measured at the workload's shape (FA4 at both A14B workloads).

# %%
rows = []
for w in ("t2v-a14b-480p", "t2v-a14b-720p"):
    m = base[w]
    c = m["ceilings"]
    attn_s = analysis.category_breakdown(steps[w]).loc["attention", "ms"] / 1e3
    at_best = attn_s * c["attention_all"]["flash"] / c["attention_tflops"]
    rows.append({"workload": w, "attention s / step (FA2)": attn_s,
                 "at the fastest kernel s / step": at_best, "saved over 40 steps s": 40 * (attn_s - at_best),
                 "projected video s": proj.loc[w, "projected video s"],
                 "minus attention gap s": proj.loc[w, "projected video s"] - 40 * (attn_s - at_best),
                 "official table s": OFFICIAL[w]})
pd.DataFrame(rows).set_index("workload").round(1)

# %% [markdown]
# ## What the baseline spends its time on
# Read from the tables above:
# - **attention** is the bulk of every step, run by a kernel at about half the fastest rate measured at its shape
#   (`t2v/05_attention`);
# - the **reference's small ops and casts** (complex128 RoPE, fp32 modulation and residual, autocast casts,
#   packing copies) are the next block of time (`t2v/04_dtype_hygiene`, `t2v/06_fusion`);
# - Wan 2.2's **per-token time MLP** is a visible fp32 GEMM every forward (`t2v/03_tf32`, `t2v/04_dtype_hygiene`);
# - **offload** costs nothing per normal step but seconds per video in uploads, in the switch and in T5's round
#   trip (`t2v/01_no_offload`);
# - the GPU is almost never idle inside a step: this is compute-bound work, so launch-overhead tricks (batching the
#   two CFG passes, CUDA graphs) have little to remove (`t2v/02_batched_cfg`, `t2v/08_cuda_graphs`). As predicted.
