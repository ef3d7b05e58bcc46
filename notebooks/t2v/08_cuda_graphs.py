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
# # t2v/08_cuda_graphs · CUDA graphs: one launch per forward, and why it buys nothing here
#
# **What changes** (`wanopt.stages.cuda_graphs`, stage `08_cuda_graphs`): the first call with a given input shape
# warms each expert up on a side stream and records one CUDA graph of its whole forward (every kernel of every
# block, the compiled blocks of stage 7 included); later calls copy the inputs into the graph's static buffers,
# replay it with a single launch and return a copy of the static output. Both experts share one memory pool.
# Exact: the same kernels run on the same data.
#
# **Prediction** (the stage docstring): a graph removes the CPU's launch cost and the gaps between kernels. A T2V step
# has on the order of a thousand kernels, its time dominated by GEMMs and attention kernels of milliseconds each, and
# the CPU is far ahead of the GPU; so a graph should save well under 1 % of a step. The stage is here to show where
# graphs do *not* pay. The Matrix-Game-2 model (`mg2/00_baseline`) is the opposite case: small evals, thousands of
# microsecond kernels, a GPU waiting on the host. That is where graphs pay.

# %%
from wanopt.profiling.notebook import setup

setup()  # quiet libraries before they load: nbval compares stderr

import matplotlib.pyplot as plt
import pandas as pd

from wanopt.profiling import analysis, report

STAGE, PREV = "08_cuda_graphs", "07_compile"
WORKLOADS = list(report.T2V_WORKLOADS)  # 1.3B and A14B at 480p, A14B at 720p
traces = {(w, s): analysis.load_trace(w, s) for w in WORKLOADS for s in (PREV, STAGE)}

# %% [markdown]
# ## Correctness
# On the CPU the graph wrapper calls the model directly (graphs need CUDA), so the tiny model can only check that
# the wrapper passes inputs and outputs through, on top of the compiled stage 7; this recompiles the tiny blocks.

# %%
report.tiny_stage_errors(STAGE, "t2v-1.3b-480p")

# %% [markdown]
# On the GPU, exactness shows in the manifests: the graph replays the very kernels of stage 7, so the error
# against the baseline is the same number, bit for bit.

# %%
for w in WORKLOADS:
    e = {s: analysis.load_manifest(w, s)["error_vs_baseline"]["value"] for s in (PREV, STAGE)}
    print(f"{w}: error vs baseline {e[PREV]:.6e} ({PREV}) and {e[STAGE]:.6e} ({STAGE}): "
          f"{'identical' if e[PREV] == e[STAGE] else 'DIFFERENT'}")

# %% [markdown]
# ## The committed GPU numbers

# %%
cmp = report.stage_comparison(STAGE)
print(analysis.provenance(analysis.load_manifest("t2v-a14b-480p", STAGE)))
cmp

# %% [markdown]
# Capturing costs time once per shape: two warm-up forwards on a side stream, then the recording. The manifest's
# `compile_s` is the first call's extra time over a timed step, i.e. that capture; in units of the timed step:

# %%
capture = pd.DataFrame({w: {"capture s": analysis.load_manifest(w, STAGE)["compile_s"],
                            "first call ms": analysis.load_manifest(w, STAGE)["warmup_ms"]} for w in WORKLOADS}).T
capture["capture / step"] = capture["capture s"] * 1e3 / cmp["after ms"]
capture.round(1)

# %% [markdown]
# A couple of steps' time, the two warm-up forwards: the recording itself is cheap. (An earlier 720p
# capture, in git history before commit `b323e48`, crashed in this stage's warm-up with an illegal memory access;
# the cause was the stage-6 kernels' 32-bit row offsets, since made 64-bit, and this run captured the stage at
# 720p.)
#
# ## Launches: what the graph removes
# The host-side launch calls in one profiled step, before and after (from the trace's CUDA runtime and driver
# events). In stage 7 the ATen kernels go through `cudaLaunchKernel`; the Triton kernels (Inductor's, stage 6's) and
# the cuBLAS GEMMs through the driver's `cuLaunchKernel(Ex)`; FA4's attention kernels through
# `cudaLaunchKernelExC` (all three runs). The graph replaces all of the forward's launches with one
# `cudaGraphLaunch`.

# %%
pd.concat({w: pd.concat({s: analysis.launch_calls(traces[(w, s)]) for s in (PREV, STAGE)}, axis=1)
           for w in WORKLOADS}, axis=1).fillna(0).astype(int)

# %% [markdown]
# HTA's launch statistics, before and after. HTA pairs kernels only with `cudaLaunchKernel` and
# `cudaLaunchKernelExC` calls (and async memcpy and memset), so the Triton kernels and GEMMs of stage 7 and the
# graph's kernels are not in them (FA4's attention kernels are); what remains after the graph are the few ATen
# launches outside it (CFG concat and split, the scheduler step). The telling column is the median launch delay
# before the graph: the host enqueues kernels a large fraction of a second to several seconds ahead of the GPU, so
# the launch cost is hidden behind the GPU's work.

# %%
pd.concat({(w, s): analysis.launch_stats(traces[(w, s)])["value"] for w in WORKLOADS for s in (PREV, STAGE)},
          axis=1).T

# %% [markdown]
# ## GPU idle time: the most a graph could give back
# HTA's temporal breakdown of the whole trace (one profiled step each): `idle` is where the GPU had no work.

# %%
pd.concat({w: pd.concat({s: analysis.temporal_breakdown(traces[(w, s)]) for s in (PREV, STAGE)}, axis=1)
           for w in WORKLOADS}, axis=1)

# %% [markdown]
# ## The whole step before and after
# The graph stage has no per-block labels on the GPU side (its kernels are launched by one graph replay), so
# `report.block_timelines` would compare a block with a whole step. Both whole steps instead, A14B expert at
# 480p:

# %%
fig = report.step_timelines("t2v-a14b-480p", PREV, STAGE)
plt.show()

# %% [markdown]
# The two steps are indistinguishable: the same kernels in the same order, and no gaps to close in either.

# %% [markdown]
# ## What changed in the trace
# Per category the GPU work is the same, and so is the list of GPU kernels (each counted once):

# %%
pd.concat({w: analysis.category_diff(w, PREV, STAGE) for w in WORKLOADS}, axis=1)

# %%
analysis.trace_diff("t2v-a14b-480p", PREV, STAGE)

# %% [markdown]
# (HTA's own TraceDiff would list every Inductor kernel here with twice its calls before the graph: it counts the
# host-side launch ops, which carry a `stream` argument and the kernel's name, as GPU events, and a graph replay
# has no such ops. `analysis.trace_diff` counts GPU events only.) The kernels whose count differs between the two
# steps:

# %%
counts = {w: pd.concat({s: analysis.kernels(traces[(w, s)])["short_name"].value_counts() for s in (PREV, STAGE)},
                       axis=1).fillna(0).astype(int) for w in WORKLOADS}
pd.concat({w: c[c[PREV] != c[STAGE]] for w, c in counts.items()}, names=["workload", "kernel"])

# %% [markdown]
# Only a few copies are new (the inputs are copied into the graph's static buffers, its output is cloned): every other
# kernel runs as often as before, with the same total time up to run-to-run variation.
#
# ## Where graphs do pay: Matrix-Game-2
# The same two measurements on the committed Matrix-Game-2 baseline trace (three blocks of 4 evals at 2,640
# tokens, `mg2/00_baseline`):

# %%
mg2 = analysis.load_trace("mg2-universal", "00_baseline")
display(analysis.temporal_breakdown(mg2).rename_axis("GPU time (whole trace)"))
analysis.launch_stats(mg2).T.rename(index={"value": "mg2-universal 00_baseline"})

# %% [markdown]
# ## Verdict

# %%
for w in WORKLOADS:
    busy = {s: analysis.busy_breakdown(analysis.kernels(traces[(w, s)]),
                                       analysis.window(traces[(w, s)], "denoise_step")) for s in (PREV, STAGE)}
    idle = {s: busy[s].loc["idle", "ms"] for s in busy}
    r = cmp.loc[w]
    print(f"{w}: GPU idle in the step {idle[PREV]:.1f} ms ({busy[PREV].loc['idle', 'percent']:.2f} %) -> "
          f"{idle[STAGE]:.1f} ms; the graph could save at most that; measured step {r['before ms']:.1f} -> "
          f"{r['after ms']:.1f} ms ({r['speedup ×']:.3f}x)")
mg2_idle = analysis.temporal_breakdown(mg2).loc["idle", "percent"]
print(f"mg2-universal baseline: GPU idle {mg2_idle:.1f} % of the trace")

# %% [markdown]
# **It did not pay, as predicted.** At T2V scale the GPU is idle for about 1 % of a step or less, the host runs
# far ahead of the GPU, and the graph removes every launch of the forward without changing a single kernel. What
# it could save is bounded by that idle time, a few to a few tens of ms per step (the lines above); the measured
# step moved by an amount of the same order or less, either way, within the variation of the kernels themselves
# (the category diff moves by similar amounts, the same kernels on the same data). Add the capture cost of a couple
# of steps per shape and the static-shape constraint (peak memory came out lower, which these traces cannot
# explain); the stage is not worth keeping for these T2V workloads, 720p included. Matrix-Game-2 is the opposite
# regime, a GPU idle for much of each block with microsecond kernels (`mg2/00_baseline`): that is where CUDA
# graphs belong, and there one graph per block took the block from 357 to 86 ms in one run (`mg2/07_cuda_graphs`).
