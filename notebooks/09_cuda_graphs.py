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
# # 09 · CUDA graphs: one launch per forward, and why it buys nothing here
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
# graphs do *not* pay. The Matrix-Game-2 model (notebook 10) is the opposite case: small evals, thousands of
# microsecond kernels, a GPU waiting on the host. That is where graphs pay.

# %%
from wanopt.profiling.notebook import setup

setup()  # quiet libraries before they load: nbval compares stderr

import matplotlib.pyplot as plt
import pandas as pd

from wanopt.profiling import analysis, report

STAGE, PREV = "08_cuda_graphs", "07_compile"
readable = lambda v: f"{v:,.2f}".rstrip("0").rstrip(".")  # noqa: E731  (HTA's counts and µs, without exponents)
WORKLOADS = list(report.T2V_WORKLOADS)  # 1.3B and A14B at 480p, A14B at 720p
traces = {(w, s): analysis.load_trace(w, s) for w in WORKLOADS for s in (PREV, STAGE)}

# %% [markdown]
# ## Correctness
# On the CPU the graph wrapper calls the model directly (graphs need CUDA), so the tiny model can only check that
# the wrapper passes inputs and outputs through, on top of the compiled stage 7; this recompiles the tiny blocks.

# %%
report.tiny_stage_errors(STAGE, "t2v-1.3b-480p")

# %% [markdown]
# On the H100, exactness shows in the manifests: the graph replays the very kernels of stage 7, so the error
# against the baseline is the same number, bit for bit.

# %%
for w in WORKLOADS:
    e = {s: analysis.load_manifest(w, s)["error_vs_baseline"]["value"] for s in (PREV, STAGE)}
    print(f"{w}: error vs baseline {e[PREV]:.6e} ({PREV}) and {e[STAGE]:.6e} ({STAGE}): "
          f"{'identical' if e[PREV] == e[STAGE] else 'DIFFERENT'}")

# %% [markdown]
# ## The committed H100 numbers

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
# About two steps' time at every size, the two warm-up forwards: the recording itself is cheap. (An earlier 720p
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
def host_launches(a):
    t = a.t.get_trace(0)
    sym = a.t.symbol_table.get_sym_table()
    names, cats = t["name"].map(sym.__getitem__), t["cat"].map(sym.__getitem__)
    launch = cats.isin(["cuda_runtime", "cuda_driver"]) & names.str.contains("Launch")
    return names[launch].value_counts()


pd.concat({w: pd.concat({s: host_launches(traces[(w, s)]) for s in (PREV, STAGE)}, axis=1)
           for w in WORKLOADS}, axis=1).fillna(0).astype(int)

# %% [markdown]
# HTA's launch statistics, before and after. HTA pairs kernels only with `cudaLaunchKernel` and
# `cudaLaunchKernelExC` calls (and async memcpy and memset), so the Triton kernels and GEMMs of stage 7 and the
# graph's kernels are not in them (FA4's attention kernels are); what remains after the graph are the few ATen
# launches outside it (CFG concat and split, the scheduler step). The telling row is the median launch delay
# before: the host enqueues kernels 0.26 s (1.3B), 1.9 s (A14B-480p) and 7.5 s (720p) ahead of the GPU, so the
# launch cost is hidden behind the GPU's work.

# %%
pd.concat({w: pd.concat({s: analysis.launch_stats(traces[(w, s)])["value"] for s in (PREV, STAGE)}, axis=1)
           for w in WORKLOADS}, axis=1).map(readable)

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
# ## HTA TraceDiff
# Per category the GPU work is the same. HTA's TraceDiff of kernels, though, lists changes:

# %%
pd.concat({w: analysis.category_diff(w, PREV, STAGE) for w in WORKLOADS}, axis=1)

# %%
analysis.trace_diff("t2v-a14b-480p", PREV, STAGE).drop(index="Stream Sync", errors="ignore")

# %% [markdown]
# Those rows are mostly not GPU changes: HTA counts Inductor's CPU-side launch events (named after their kernels,
# with a `stream` argument) as GPU events (notebook 08), and in a graph replay those CPU events no longer exist,
# so stage 7 shows twice the calls of stage 8 for every Inductor kernel (and the time of its CPU-side event added
# to the kernel's). On the GPU side alone (`analysis.kernels()`), the kernels whose count
# differs between the two steps:

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
# tokens, notebook 10):

# %%
mg2 = analysis.load_trace("mg2-universal", "00_baseline")
pd.concat({"GPU time (whole trace)": analysis.temporal_breakdown(mg2).rename_axis("")["percent"],
           "launches": analysis.launch_stats(mg2)["value"]}, axis=0).map(readable).to_frame("mg2-universal 00_baseline")

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
# **It did not pay, as predicted.** At T2V scale the GPU is idle for about 1 % of a step or less (1.23 % at 1.3B,
# 0.41 % at A14B-480p, 0.16 % at 720p), the host runs 0.26 to 7.5 s ahead of the GPU, and the graph removes every
# launch of the forward without changing a single kernel. What it could save is bounded by that idle time, 11 to
# 33 ms per step; the measured step came out slightly slower at all three sizes (918.1 → 924.7 ms, 5177.9 → 5205.0
# and, at 720p, 20057.7 → 20095.1 ms: 0.2–0.7 %), within the variation of the kernels themselves (the category
# diff moves by amounts of the same order, 3 to 48 ms, the same kernels on the same data). Add the capture cost of
# about two steps per shape and the static-shape constraint (peak memory did come out lower at every size, which
# these traces cannot explain); the stage is not worth keeping for these T2V workloads, 720p included.
# Matrix-Game-2 is the opposite regime, a GPU idle most of its time with microsecond kernels: that is where CUDA
# graphs belong.
