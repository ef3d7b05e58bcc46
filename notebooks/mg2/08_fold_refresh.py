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
# # mg2/08_fold_refresh · the cache refresh folded into the next block's first eval
#
# **What.** After its three denoising evals, upstream's block runs a fourth eval at t = 0 over its own x0: the cache
# refresh, which writes the block's clean K/V for later blocks to attend to. Stage `08_fold_refresh`
# (`wanopt.stages.mg2_lean.fold_cache_refresh`) drops that eval. Block b+1's first denoising eval runs over both
# blocks' frames instead: 6 latent frames, per-frame timesteps 0 and the first step's, one forward with GEMMs of
# twice the rows. In every cached attention the two blocks are two segments, one after the other. Block b's frames
# write their clean K/V and attend to the window ending at b, exactly the refresh's attention. Then block b+1's
# frames write theirs and attend to the window ending at b+1, which holds b's clean K/V as this layer just wrote
# them. The stage is exact up to reordering (the GEMM rows are batched differently). A block runs one sequential
# eval fewer; the last block's refresh waits until a next block asks for it. With stage 07 the folded block is a
# graph of its own, under a `fold` key.
#
# **Prediction.** The FLOPs per block do not change: the refresh's work moves into the first eval. What goes is
# whatever one eval costs beyond its FLOPs: its share of small kernels that do not scale with rows, and the gaps
# between kernels. The GEMMs already run at about 90 % of the run's ceiling at 2640 rows (`mg2/07_cuda_graphs`), so
# twice the rows cannot make them much faster. The gain should be a few ms at most, far below the 21.5 ms of an eval
# (`traces/mg2-universal/07_cuda_graphs/manifest.json`).

# %%
from wanopt.profiling.notebook import setup

setup()  # quiet libraries before they load: nbval compares stderr

import pandas as pd

from wanopt.profiling import analysis, report

STAGE, W = "08_fold_refresh", "mg2-universal"
BEFORE = report.previous_stage(W, STAGE)
STEADY = 3  # ProfilerStep of the steady-state block (1: the first block, 2: the cache filling)

# %% [markdown]
# ## Correctness on the tiny model (live, CPU)
# The tiny pipeline in fp32, a video of four blocks, the stages applied one by one; the videos made are the
# reference's, `07_cuda_graphs`'s and this stage's (the earlier ones are in their notebooks). The fold is pipeline logic, not a GPU feature, so on the CPU it runs
# for real: blocks 1 to 3 each fold the previous block's refresh into their first eval, and the `08_fold_refresh`
# row compares their latents with the reference's. `tests/test_mg2_stages.py` checks every stage on universal-, gta-
# and templerun-like tiny configs over 4 blocks.

# %%
report.tiny_mg2_stage_errors(STAGE, since=BEFORE)

# %% [markdown]
# ## The GPU numbers
# One steady-state block, median of 10 CUDA-event repeats; the stage before is `07_cuda_graphs` of the same run. The
# manifest's description of the timed unit still says 3 denoising evals + 1 cache-refresh eval: the harness writes
# it for every stage. Here the refresh is inside the first eval.

# %%
print(analysis.provenance(analysis.load_manifest(W, STAGE)))
report.stage_comparison(STAGE, workloads=(W,)).T

# %%
report.mg2_stage_numbers(W, (BEFORE, STAGE))

# %% [markdown]
# ### What the graphs cost once
# Seconds to warm up, record and restore per key, in the capture run (`graph_capture_s`). The pipeline's graphs
# carry over from stage 07, so the `block` and `eval` keys are 07's. The three `fold` keys are new. The first, block
# 1 folding block 0's refresh, is the first call at the 6-frame shape, and its warm-up compiles stage 06's pieces
# for that shape. The other two are the steady ring positions. The harness meets the last of them in its first timed
# repeat (`wanopt/profiling/harness.py`, `time_unit`), and that repeat is the block maximum above, 614.7 ms: about a
# block plus a capture. The median does not move.

# %%
pd.Series(analysis.load_manifest(W, STAGE)["graph_capture_s"], name="capture s").round(2)

# %% [markdown]
# The cold start, in a fresh process with empty Inductor and Triton caches: process start to block 0's latents out,
# and its phases, in seconds (`cold_start` in the manifests; the phases start after Python's start and `import
# torch`, see `mg2/07_cuda_graphs`). It makes block 0 only, which folds nothing: the compile for the folded shape
# comes at block 1.

# %%
pd.DataFrame({s: analysis.load_manifest(W, s)["cold_start"] for s in ("00_baseline", BEFORE, STAGE)}).T.round(2)

# %% [markdown]
# ## In the trace
# The steady-state block before and after, on one time axis (both graph replays):

# %%
fig = report.step_timelines(W, BEFORE, STAGE, occurrence=STEADY - 1)

# %% [markdown]
# GPU kernel time per category in the steady block, and the kernels that moved most:

# %%
analysis.category_diff(W, BEFORE, STAGE, step=STEADY)

# %%
analysis.trace_diff(W, BEFORE, STAGE, top=8, step=STEADY)

# %% [markdown]
# GPU events per profiled block (1: block 0, 2: the cache filling, 3: the steady state). In the capture run (commit
# `6305092`) the key of block 0 did not record the fold, and block 0 folds nothing, so block 0 replayed the graph
# that stage 07 recorded under the same key, refresh eval included: the same 5707 kernels, and the same first-block
# time in the table above. The output is the same either way (a refresh written twice writes the same K/V); the
# key records the fold since (`tests/test_mg2_fast.py`), so a later run times block 0 without its refresh.

# %%
pd.DataFrame({s: analysis.kernels(analysis.load_trace(W, s)).query("iteration > 0")["iteration"].value_counts()
              .sort_index() for s in (BEFORE, STAGE)}).rename_axis("profiled block")

# %% [markdown]
# Where the folded steady block's time goes, against its floor (as in `mg2/07_cuda_graphs`):

# %%
report.mg2_block_budget(W, STAGE)

# %% [markdown]
# ## Verdict
# **It did not pay, as predicted, and it stays.** The steady block measured 85.9 ms against 85.6 (0.997×), well
# inside both stages' repeats (`traces/mg2-universal/08_fold_refresh/manifest.json`). The block runs about 1000
# kernels fewer, and its GPU kernel time is the same, 79.2 ms against 78.9. At 5280 rows the folded eval's GEMMs use
# other tiles, and they take as long as the refresh's and the first eval's GEMMs at 2640 rows (the kernel diff): the
# GEMMs already ran near the ceiling. The time with no kernel running fell from 7.3 to 5.9 ms, about all an eval
# fewer gives here. Peak memory grew from 4.6 to 4.8 GiB; the folded eval works on 6 frames at once. The first
# folded call compiles for the new shape (10.4 s in the capture run). The error, 8.5e-3 (x0), is within the stage's
# 5e-2. Measured and neutral, the stage stays with this verdict. Its first-block number is stage 07's graph (above):
# in the capture run block 0's key did not record the fold.
