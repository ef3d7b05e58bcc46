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
# # mg2/06_compile · torch.compile of the block pieces between the cached attentions
#
# **What.** Stage `06_compile` (`wanopt.stages.compile.compile_causal_parts`) compiles, with `torch.compile`, each
# piece of a block that lies between its cached attentions. These are the pieces stage 03 routes through one place
# (`mg2_lean.EAGER_PARTS`): self-attention's norm, QKV and RoPE (`self_qkv`), its output projection and gated
# residual (`self_out`), the cross-attention (`cross`), the FFN (`ffn`), and the action module's pieces. The cache
# writes and the attention over the window stay eager. They depend on the block's position, and Dynamo would
# specialize and recompile for each. Each piece takes its module as an argument, so the 30 blocks share one compiled
# graph per piece and shape. Inductor fuses the elementwise work left between the GEMMs and keeps the stage-05
# Triton kernels (custom ops) as they are. It is exact up to rounding: fused chains are computed in fp32 and rounded
# once.
#
# **Prediction.** After stage 05 the small-op kernels are about a quarter of the steady block's GPU time
# (`mg2/05_fusion`). Inductor should fuse part of them: a few ms of GPU time and a large cut in kernel count. On the
# host a compiled piece is one call, Dynamo's guard check and Inductor's launcher, instead of a chain of ATen
# dispatches. With fewer launches the launch-bound block should get faster. How much faster depends on the host.

# %%
from wanopt.profiling.notebook import setup

setup()  # quiet libraries before they load: nbval compares stderr

import pandas as pd

from wanopt.profiling import analysis, report

STAGE, W = "06_compile", "mg2-universal"
BEFORE = report.previous_stage(W, STAGE)
STEADY = 3  # ProfilerStep of the steady-state block (1: the first block, 2: the cache filling)
LABELS = ["self_attn", "cross_attn", "mouse", "keyboard", "ffn", "mg2_block"]  # record_function labels of a block

# %% [markdown]
# ## Correctness on the tiny model (live, CPU)
# The tiny pipeline in fp32, a video of four blocks, the stages applied one by one; only the reference's video and
# this stage's are made (stage 05's, whose Triton kernels run in Triton's CPU interpreter, is in `mg2/05_fusion`).
# On the CPU, under `torch.compile`, they give way to their eager
# functions, so the `06_compile` row checks Inductor's CPU code for the pieces. `tests/test_mg2_stages.py` checks
# every stage on universal-, gta- and templerun-like tiny configs over 4 blocks.

# %%
report.tiny_mg2_stage_errors(STAGE, since=STAGE)

# %% [markdown]
# ## The GPU numbers
# One steady-state block, median of 10 CUDA-event repeats; the stage before is `05_fusion` of the same run. The
# error is the relative L2 of the x0 of a block made after the window evicted, against the baseline's.

# %%
print(analysis.provenance(analysis.load_manifest(W, STAGE)))
report.stage_comparison(STAGE, workloads=(W,)).T

# %%
report.mg2_stage_numbers(W, (BEFORE, STAGE))

# %% [markdown]
# ## In the trace
# The steady-state block before and after, on one time axis (under the profiler: the traced lengths in the panel
# titles are the profiler's).

# %%
fig = report.step_timelines(W, BEFORE, STAGE, occurrence=STEADY - 1)

# %% [markdown]
# GPU kernel time per category in the steady block, and the kernels that moved most (Inductor's kernels are the
# `triton_…_fused_…` ones):

# %%
analysis.category_diff(W, BEFORE, STAGE, step=STEADY)

# %%
analysis.trace_diff(W, BEFORE, STAGE, top=8, step=STEADY)

# %% [markdown]
# Per module of the steady block: GPU time, kernel count, and the host time inside the labels (profiled):

# %%
pd.concat({s: analysis.label_breakdown(analysis.load_trace(W, s), LABELS, iteration=STEADY)[
    ["GPU ms", "GPU events", "host ms"]] for s in (BEFORE, STAGE)}, axis=1).round(1)

# %% [markdown]
# ## Verdict
# **It paid a little on the GPU and more in kernels; the timed block is back at the baseline's level.** The steady
# block's GPU kernel time fell from 86.2 to 76.3 ms, almost all of it norm/elementwise and cast/copy. The kernel
# count fell by a third (8361 → 5541), most of it in the action module, where the mouse and keyboard pieces lost
# more than half of their kernels and nearly half of their host time. Self- and cross-attention and the FFN kept
# their kernel counts: after stage 05 they have little left to fuse. The timed block went from 435.4 to 357.0 ms
# (1.22×; first block 377.9 → 332.0 ms), which is the baseline's 356.5 ms again
# (`traces/mg2-universal/06_compile/manifest.json`). Its repeats spread from 308.1 to 506.0 ms, the widest of the
# eager stages: the eager block's time is still the host's. The error, 8.5e-3 (x0), is within the stage's 5e-2. The
# stage stays for the graph: a replayed block is its kernels back to back (`mg2/07_cuda_graphs`), so every fused
# kernel and every ms of GPU time removed here is kept there.
