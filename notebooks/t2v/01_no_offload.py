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
# # t2v/01_no_offload · No offload: both experts resident
#
# **What.** The official single-GPU recipe keeps one 14B expert on the GPU. At step 0 it uploads the high-noise
# expert (28.6 GB in bf16), at the expert switch (step 26 of 40, t = 865) it moves that one back to the CPU and
# uploads the low-noise one, and it carries T5 (11.4 GB) to the GPU and back for the two prompts. All of these are
# synchronous copies from pageable memory. Stage `01_no_offload` moves both experts to the GPU once, at load time,
# and frees T5 after encoding (`wanopt.stages.offload.no_offload`). The math does not change.
#
# **Prediction.** Nothing per normal step: the same kernels run on the same data. Per video, it saves the two
# uploads (plus the download at the switch) and the T5 round trip, a few tens of seconds out of an A14B video of
# several minutes. That is the Wan2.2 acceleration guide's 1.1×, paid for with the second 28.6 GB expert in GPU
# memory.
# The 1.3B model has a single expert, so for it only the first upload and the T5 round trip go away.

# %%
from wanopt.profiling.notebook import setup

setup()  # quiet libraries before they load: nbval compares stderr

import pandas as pd
import torch

from wanopt.configs import get_config
from wanopt.models.layers import param_count
from wanopt.models.wan import WanModel
from wanopt.profiling import analysis, plots, report

STAGE, A14B = "01_no_offload", "t2v-a14b-480p"

# %% [markdown]
# ## Correctness on the tiny model (live, CPU)
# One step's guided velocity `v_u + g·(v_c − v_u)` after the stage against the baseline's, on the same inputs.
# The tolerance is 1e-6: the same kernels on the same data, so anything above zero would be a bug. The stage is
# first in both orders (the A14B order moves only batched CFG), so the default order covers A14B too.

# %%
report.tiny_stage_errors(STAGE, "t2v-1.3b-480p")

# %% [markdown]
# ## The GPU numbers: one normal step, before and after
# `stage_comparison` reads both manifests of the same capture run: step time (median of CUDA events), speedup,
# peak memory, error against the baseline: the relative L2 of one step's guided velocity against `00_baseline`'s,
# at real size on the GPU (the *velocity* metric, traces/README.md). It must read exactly 0.0: the same kernels on
# the same data give bit-identical outputs. 720p has no `01_no_offload` capture (its run times only the baseline
# and the final stages), so it has no row.

# %%
print(analysis.provenance(analysis.load_manifest(A14B, STAGE)))
report.stage_comparison(STAGE)

# %% [markdown]
# The same error next to the stage's tolerance, as `velocity_errors` reads it from the manifests:

# %%
report.velocity_errors().xs(STAGE, level="stage")

# %% [markdown]
# ## What the offload costs per video
# The baseline manifests time, besides a normal step, the first step (which includes the upload of the first expert)
# and for A14B the expert-switch step. The capture run (`capture.json`) times T5 encoding both ways: offloaded (to
# the GPU and back for the prompts) and resident. 720p has no `01_no_offload` capture, but its baseline records
# the same costs.

# %%
costs = {}
for w in report.T2V_WORKLOADS:
    m, run = analysis.load_manifest(w, "00_baseline"), analysis.load_run(w)
    step = m["timing"]["median"]
    costs[w] = {"normal step ms": step,
                "first step: + upload ms": m["first_step_with_upload_ms"] - step,
                "switch step: + swap ms": m["switch_step"]["median"] - step if "switch_step" in m else None,
                "T5 offloaded ms": run["t5_encode_offload_ms"],
                "T5 resident ms": run["t5_encode_resident_ms"]["median"]}
pd.DataFrame(costs).T.round(0)

# %% [markdown]
# The projection of one whole video, read from each manifest (`T5 + steps × step (+ first upload + switch
# overhead with offload) + VAE decode`), in seconds:

# %%
proj = {}
for w in report.T2V_WORKLOADS:
    for s in ("00_baseline", STAGE):
        try:
            p = analysis.load_manifest(w, s)["projection"]
        except analysis.MissingTraceError:
            continue
        proj[(w, s)] = {"T5": p["t5_ms"] / 1e3, "first upload": p.get("first_upload_ms", 0) / 1e3,
                        "switch": p.get("switch_extra_ms", 0) / 1e3, "steps": p["steps_ms"] / 1e3,
                        "VAE": p["vae_ms"] / 1e3, "total s": p["total_s"]}
proj = pd.DataFrame(proj).T
proj.round(1)

# %%
for w in ("t2v-1.3b-480p", A14B):
    before, after = proj.loc[(w, "00_baseline"), "total s"], proj.loc[(w, STAGE), "total s"]
    print(f"{w}: {before:.1f} s -> {after:.1f} s per video, {before - after:.1f} s saved, {before / after:.2f}×")

# %% [markdown]
# ## In the trace: the expert-switch step
# The A14B baseline trace holds two profiled steps: a normal one (step 25) and the switch (step 26). Below, on one
# time axis: the baseline's normal step, its switch step and the no-offload step. The copies are the purple bars.

# %%
base = analysis.load_trace(A14B, "00_baseline")
kb = analysis.kernels(base)
profiled = analysis.load_manifest(A14B, "00_baseline")["trace"]["profiled_steps"]
after = analysis.load_trace(A14B, STAGE)
panels = [(kb, analysis.window(base, "denoise_step", i), f"00_baseline step {p['step_index']} ({p['what']})")
          for i, p in enumerate(profiled)]
panels.append((analysis.kernels(after), analysis.window(after, "denoise_step"), f"{STAGE} (normal step)"))
fig = plots.timelines(panels)

# %% [markdown]
# GPU time per category in each profiled step (ms). Apart from the copies, the switch step runs the same
# kernels as the normal one, and so does the no-offload step. Its attention sum sits slightly above the
# baseline's in this one profiled step (GEMM level with it), while its timed median (CUDA events, above) is
# slightly below: the spread between single steps, not a change of work.

# %%
steps = {f"00_baseline step {p['step_index']}": analysis.category_breakdown(kb[kb["iteration"] == it])["ms"]
         for it, p in zip(sorted(kb["iteration"].unique()), profiled)}
steps[STAGE] = analysis.category_breakdown(after)["ms"]
pd.DataFrame(steps)

# %% [markdown]
# The copies launched inside the `expert_switch` label: one device-to-host copy per parameter of the high-noise
# expert, then one host-to-device copy per parameter of the low-noise expert. `span` is the time from the first
# copy of a direction to the end of its last copy. One expert's size comes from the real config's parameter count
# (built on the meta device, so nothing is allocated):

# %%
with torch.device("meta"):
    expert_gb = param_count(WanModel(get_config("wan2.2-t2v-a14b").dit)) * 2 / 1e9  # bf16
switch = analysis.annotations(base).query("name == 'expert_switch'").iloc[0]
copies = kb[(kb["launch_ts"] >= switch["ts"]) & (kb["launch_ts"] <= switch["end"])]
copies = copies.groupby("short_name").agg(copies=("dur", "size"), gpu_ms=("dur", "sum"), first=("start_us", "min"),
                                          last=("end_us", "max"))
copies["gpu_ms"] /= 1e3
copies["span ms"] = (copies.pop("last") - copies.pop("first")) / 1e3
copies["GB/s over the span"] = expert_gb / (copies["span ms"] / 1e3)
print(f"one expert: {expert_gb:.1f} GB in bf16; expert_switch on the host: {switch['dur'] / 1e3:,.0f} ms")
copies.round(1)

# %% [markdown]
# ## TraceDiff of a normal step
# On the 1.3B model both traces hold one normal step. By category, and by GPU kernel (the first profiled step of
# each trace):

# %%
analysis.category_diff("t2v-1.3b-480p", "00_baseline", STAGE)

# %%
analysis.trace_diff("t2v-1.3b-480p", "00_baseline", STAGE, top=6)

# %% [markdown]
# ## Verdict

# %%
cmp = report.stage_comparison(STAGE)
for w, r in cmp.iterrows():
    print(f"{w}: normal step {r['before ms']:.0f} -> {r['after ms']:.0f} ms ({r['speedup ×']:.3f}×), "
          f"peak memory {r['peak GiB before']:.1f} -> {r['peak GiB after']:.1f} GiB of "
          f"{analysis.load_run(w)['env']['device_memory_gib']} GiB on the device")
gpu = analysis.category_diff("t2v-1.3b-480p", "00_baseline", STAGE).loc["total", "Δ ms"]
print(f"t2v-1.3b-480p profiled normal step: GPU kernel time {gpu:+.1f} ms")
sw = costs[A14B]
print(f"A14B offload overhead per video: first upload {sw['first step: + upload ms'] / 1e3:.1f} s + switch "
      f"{sw['switch step: + swap ms'] / 1e3:.1f} s + T5 round trip "
      f"{(sw['T5 offloaded ms'] - sw['T5 resident ms']) / 1e3:.1f} s")
for w in ("t2v-1.3b-480p", A14B):
    before, after = proj.loc[(w, "00_baseline")], proj.loc[(w, STAGE)]
    print(f"{w}: projected video {before['total s'] / after['total s']:.2f}× faster without offload, "
          f"{before['total s'] - after['total s']:.1f} s saved, of which T5's round trip "
          f"{before['T5'] - after['T5']:.1f} s")
rate = copies["GB/s over the span"]
print(f"A14B switch copies: device-to-host {rate['Memcpy DtoH (Device -> Pageable)']:.1f} GB/s, host-to-device "
      f"{rate['Memcpy HtoD (Pageable -> Device)']:.1f} GB/s over their spans")

# %% [markdown]
# As predicted, a normal step is unchanged: the kernel tables match kernel for kernel, and the timed medians differ
# only by the spread between steps (the lines above). The gain is per video: the first upload, the swap at the
# switch and the T5 round trip. On the 1.3B model, with one expert, it is nearly all T5's round trip, a host copy
# whose time varies from run to run; on A14B it is about the Wan2.2 acceleration guide's 1.1×. At the switch the
# trace shows where the time goes. The device-to-host copies into fresh pageable memory take most of it: pageable
# memory, staged by the driver through pinned buffers. The upload is faster, but pageable too.
#
# The price is memory. With both A14B experts resident, the peak at 480p leaves only about an eighth of the H100's
# memory free (the peak in the table above against the device's memory). That leaves no room for a batch-2
# forward on the reference numerics, so the A14B order moves batched CFG after dtype hygiene
# (`t2v/02_batched_cfg`). Keep the stage. The per-video gain costs no compute, only memory, and every later stage
# is measured with both experts resident.
