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
# # mg2/03_dtype_hygiene · upstream's per-call detours taken out
#
# **What.** Stage `03_dtype_hygiene` (`wanopt.stages.mg2_lean.mg2_lean_numerics`) swaps the causal model's classes
# for lean ones with the same parameters. RoPE comes from real fp32 cos/sin rows built once per block; upstream
# sends every q and k to complex128 and back on every call (30 layers × 2 per eval). Attention takes `[1, L, heads,
# d]` bf16 as it is: no `flash_attention()` packing, no float32 q cast back to bf16, no `cu_seqlens` copies to the
# GPU. The per-frame modulation and the gated residuals are one `addcmul` pass each, where upstream makes two
# rounded passes. The CLIP image embedding runs only when the cross-attention K/V are computed. The action module
# slices its windows once per block and keeps tokens frame-major. Its keyboard queries of all locations attend to
# the cached frames at once; upstream `.repeat`s the cache to every location. The pipeline (`LeanCausalPipeline`)
# also becomes one function of tensors per block, `run_block(key, tensors)`, with every host decision made before
# it: stage 07 records that function as a CUDA graph. The stage is not exact: the fp32 rotation and `addcmul` round
# once where upstream rounds twice.
#
# **Prediction.** The complex128 RoPE (four float64 passes over q and k per layer), the casts around it and part of
# the small elementwise kernels go. That is less GPU time, and more importantly fewer kernels. In a block whose time
# is the host's launches (`mg2/00_baseline`), each kernel less is a launch less, so the block should shrink by more
# than its kernel time does. The keyboard attention over a repeated cache should get much cheaper.

# %%
from wanopt.profiling.notebook import setup

setup()  # quiet libraries before they load: nbval compares stderr

import pandas as pd

from wanopt.profiling import analysis, report

STAGE, W = "03_dtype_hygiene", "mg2-universal"
BEFORE = report.previous_stage(W, STAGE)
STEADY = 3  # ProfilerStep of the steady-state block (1: the first block, 2: the cache filling)
LABELS = ["self_attn", "cross_attn", "mouse", "keyboard", "ffn", "mg2_block"]  # record_function labels of a block

# %% [markdown]
# ## Correctness on the tiny model (live, CPU)
# The tiny Matrix-Game-2 pipeline in fp32 (attention too), a video of four blocks (the window evicts from the
# third), each stage applied on top of the ones before. In fp32 the roundings that the stage changes are far below
# bf16's, so what is left is the order in which the kernels sum. `tests/test_mg2_stages.py` checks every stage the
# same way on universal-, gta- (a 4-frame window) and templerun-like (keyboard only) tiny configs over 4 blocks.
# Each block's latents must be within 1e-5 of the reference's, and 01's bit for bit.

# %%
report.tiny_mg2_stage_errors(STAGE)

# %% [markdown]
# ## The GPU numbers
# One steady-state block (3 denoising evals and the cache-refresh eval, DiT only), median of 10 CUDA-event repeats;
# the stage before is `02_ring_kv_cache` of the same run. At real size in bf16 the error is the relative L2 of the
# x0 of a block made after the window evicted, against the baseline's.

# %%
print(analysis.provenance(analysis.load_manifest(W, STAGE)))
report.stage_comparison(STAGE, workloads=(W,)).T

# %%
report.mg2_stage_numbers(W, (BEFORE, STAGE))

# %% [markdown]
# ## In the trace
# The steady-state block before and after, on one time axis. Under the profiler every CPU op is recorded and the
# host launches several times slower than in the timed runs: the traced blocks' lengths (the panel titles) are the
# profiler's. The timed numbers are the tables above.

# %%
fig = report.step_timelines(W, BEFORE, STAGE, occurrence=STEADY - 1)

# %% [markdown]
# GPU kernel time per category in the steady block, and the kernels that moved most:

# %%
analysis.category_diff(W, BEFORE, STAGE, step=STEADY)

# %%
analysis.trace_diff(W, BEFORE, STAGE, top=8, step=STEADY)

# %% [markdown]
# Per module of the block (the kernels launched inside each record_function label, all layers and evals of the
# steady block): GPU time, of it attention, kernel count, and the host time spent inside the labels (profiled):

# %%
pd.concat({s: analysis.label_breakdown(analysis.load_trace(W, s), LABELS, iteration=STEADY)[
    ["GPU ms", "attention ms", "GPU events", "host ms"]] for s in (BEFORE, STAGE)}, axis=1).round(1)

# %% [markdown]
# ## Verdict
# **It paid, as predicted, and more in time than in kernels.** The timed block went from 341.1 to 229.5 ms (1.49×;
# first block 359.6 → 245.8 ms, one eval 84.9 → 67.2 ms; `traces/mg2-universal/03_dtype_hygiene/manifest.json`). The
# steady block's GPU work fell by about a third, in kernel time and in kernel count (the tables above). The float64
# copies of the RoPE are gone (`copy(double)`), and so are most of the bf16 adds and the device-to-device copies.
# Attention kernel time fell with the same number of calls: the keyboard attention no longer runs over a cache
# repeated to every location. The host time inside every module fell with the kernels, and the timed block dropped
# by more than the GPU time did: the block is still launch-bound. The error against the baseline, 8.5e-3 (x0) and
# 1.3e-2 (one eval's velocity), is within the stage's 5e-2. Beyond its own gain, the stage gives the later ones
# their base. It splits the host side of a block from a tensor function, which stage 07 records as a CUDA graph, and
# it routes every elementwise kernel and block piece through one place (`set_parts`), where stages 05 and 06 swap in
# Triton and compiled versions.
