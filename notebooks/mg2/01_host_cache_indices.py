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
# # mg2/01_host_cache_indices · cache end indices on the host
#
# **What.** Every cached attention of the Matrix-Game-2 reference (self-attention in each of 30 layers, mouse and
# keyboard attention in each of 15 action blocks) asks its rolling KV cache where the window ends. Upstream keeps
# those end indices as 1-element tensors on the GPU and reads them back with `.item()`, 3 to 6 times per call:
# each read is a host sync. Stage `01_host_cache_indices` (`wanopt.stages.kv_cache.host_cache_indices`) keeps them
# as Python ints on the host. The roll, the writes and the window are the same operations on the same data, so the
# stage is exact, bit for bit.
#
# **Prediction.** No kernel changes. What changes is the host: at every sync it stops launching until the GPU has
# drained its queue, so the GPU then idles while the host launches the next kernels one by one. The baseline
# notebook (`mg2/00_baseline`) counts the syncs (about 820 per block) and the idle time. Without them the host can
# queue ahead, and the block should shrink towards the host's own launch time; on a host where each sync's
# wake-up is slow, by more.

# %%
from wanopt.profiling.notebook import setup

setup()  # quiet libraries before they load: nbval compares stderr

import pandas as pd

from wanopt.profiling import analysis, report

STAGE, W = "01_host_cache_indices", "mg2-universal"
BEFORE = report.previous_stage(W, STAGE)
STEADY = 3  # ProfilerStep of the steady-state block (1: the first block, 2: the cache filling)

# %% [markdown]
# ## Correctness on the tiny model (live, CPU)
# The tiny Matrix-Game-2 pipeline in fp32, a video of four blocks (the window evicts from the third), before and
# after the stage, and the `.item()` calls per block:

# %%
report.tiny_mg2_stage_errors(STAGE)

# %% [markdown]
# ## The GPU numbers
# One steady-state block (3 denoising evals + the cache-refresh eval, DiT only), median of 10 CUDA-event repeats;
# the stage before is the baseline of the same run. The error is the relative L2 of the x0 of a block made after
# the window has evicted, against the baseline's, at real size.

# %%
print(analysis.provenance(analysis.load_manifest(W, STAGE)))
report.stage_comparison(STAGE, workloads=(W,)).T

# %% [markdown]
# The spread of the repeats, the first block of a video and one eval, before and after (ms):

# %%
report.mg2_stage_numbers(W, (BEFORE, STAGE))

# %% [markdown]
# ## In the trace
# Host syncs per profiled block, before and after:

# %%
pd.concat({stage: analysis.host_syncs(analysis.load_trace(W, stage)) for stage in (BEFORE, STAGE)})

# %% [markdown]
# The steady-state block (the third profiled one) before and after, on one time axis. Under the profiler the host
# is several times slower per launch than in the timed runs (every CPU op is recorded), so the traced blocks are
# longer than the timed ones and the host is the bottleneck in both; what the timeline shows is the shape: the gaps
# at each sync in the baseline, a steadier stream of launches after.

# %%
fig = report.step_timelines(W, BEFORE, STAGE, occurrence=STEADY - 1)

# %% [markdown]
# GPU kernels by category in the steady-state block: the same kernels (the stage changes none), within the
# noise of the trace:

# %%
analysis.category_diff(W, BEFORE, STAGE, step=STEADY)

# %% [markdown]
# ## Verdict
# **What it pays depends on the host.** The kernels are the same (the category table), the error is zero, and the
# syncs are gone from the trace. On this run's host the ~820 syncs per block cost little: the block moved by about
# as much as its repeats spread (the tables above). On hosts whose wake-up after a sync is slow they cost a third of
# the block: the session's two other runs measured 487.5 → 419.4 ms and 650.4 → 413.8 ms for this stage
# (`traces/logs/mg2-universal.eager-timed-choice.capture.log`, `…before-graph-timed-choice.capture.log`), and an
# earlier run 589.9 → 387.0 ms (`traces/README.md`). Without syncs the block time no longer depends on that: the
# stage's block stays near 415 ms or below on every host measured. The GPU still idles much of the block: the host
# launches thousands of small kernels one by one. That is what the later stages (a fixed-shape cache, then CUDA
# graphs) address.
