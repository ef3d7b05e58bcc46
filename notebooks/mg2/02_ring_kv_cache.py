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
# # mg2/02_ring_kv_cache · a ring of frame slots written by index
#
# **What.** Upstream's rolling cache evicts the oldest block by shifting the whole buffer left (a `clone()` and a
# copy back of 2640 × 12 × 128 bf16 keys and values per layer per new block, and the same for the mouse and keyboard
# caches), and attends over a slice whose length grows while the cache fills. Stage `02_ring_kv_cache`
# (`wanopt.stages.kv_cache.ring_kv_cache`) makes each cache a ring of `local_attn_size` frame slots: latent frame a
# is written to slot a mod W by index, and attention reads the whole ring once it is full. The window holds the
# same frames as upstream's, in ring order instead of time order. Softmax attention does not depend on the order of
# its keys; the kernel's summation order does, so the stage is exact up to rounding.
#
# **Prediction.** The roll's copies go: a few MB per layer per block, microseconds of GPU time each, so little on
# its own in a host-bound block. What the stage buys is fixed shapes (one per phase: first block, filling, steady
# state) and no host reads: the precondition for capturing an eval in a CUDA graph.

# %%
from wanopt.profiling.notebook import setup

setup()  # quiet libraries before they load: nbval compares stderr

from wanopt.profiling import analysis, report

STAGE, W = "02_ring_kv_cache", "mg2-universal"
BEFORE = report.previous_stage(W, STAGE)
STEADY = 3  # ProfilerStep of the steady-state block (1: the first block, 2: the cache filling)

# %% [markdown]
# ## Correctness on the tiny model (live, CPU)
# The tiny Matrix-Game-2 pipeline in fp32 (attention too), a video of four blocks: the ring holds the evicting
# window, and what is left is the order in which the kernel sums. `tests/test_mg2_stages.py` checks the same on the
# gta-like (4-frame window, wrapping ring) and keyboard-only configs, and that the ring holds exactly upstream's
# frames after every block.

# %%
report.tiny_mg2_stage_errors(STAGE)

# %% [markdown]
# ## The GPU numbers
# The stage before is `01_host_cache_indices` of the same run. At real size in bf16 the reordered sums round
# differently in each of 30 layers and 4 evals per block, and the differences carry from block to block through the
# cache: the error against the baseline is the x0 of a block made after the window evicted.

# %%
print(analysis.provenance(analysis.load_manifest(W, STAGE)))
report.stage_comparison(STAGE, workloads=(W,)).T

# %%
report.mg2_stage_numbers(W, (BEFORE, STAGE))

# %% [markdown]
# ## In the trace
# The steady-state block before and after, on one time axis, then its kernel-level diff: the roll's clones and
# copies back (the `copy` and device-to-device `Memcpy` rows) should be the kernels that go, under a millisecond
# of GPU time per block. Under the profiler every CPU op is recorded and the host launches several times slower
# than in the timed runs, and unevenly: the traced blocks' lengths (the panel titles) are the profiler's, not the
# stage's. The timed numbers are the tables above.

# %%
fig = report.step_timelines(W, BEFORE, STAGE, occurrence=STEADY - 1)

# %%
analysis.category_diff(W, BEFORE, STAGE, step=STEADY)

# %%
analysis.trace_diff(W, BEFORE, STAGE, top=8, step=STEADY)

# %% [markdown]
# ## Verdict
# **It did not pay on its own, as predicted.** The copies it removes (under a millisecond of GPU time per block, the
# diff above) are a small part of a block whose time is the host's launches, and the timed block moved by about as much as the repeats spread (the table above; a run without
# traces measured it a little faster, `traces/logs/mg2-universal.no-profile.capture.log`). The error is within the
# stage's tolerance. The stage stays: with every cache at a fixed shape per phase and no host reads, each eval can
# be captured in a CUDA graph, which is where the launch-bound block is won.
