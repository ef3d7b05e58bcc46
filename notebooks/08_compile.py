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
# # 08 · torch.compile: regional (per block) against the whole model
#
# **What changes** (`wanopt.stages.compile`, stage `07_compile`): Inductor traces each transformer block
# (`block.compile()`, regional) or the whole forward (`torch.compile(model)`) and generates fused Triton kernels for the
# elementwise work between the GEMMs and attention (modulation, gates, residuals, GELU, casts). The user Triton kernels
# of stage 6 are torch custom ops (`torch.library.custom_op`), opaque to Dynamo: the compiled blocks call them as they
# are, through Triton's own launcher. Regional: all blocks share one forward, so Dynamo compiles it once and every block
# of both experts reuses it. Whole model: the 30–40 blocks unroll into one graph, more room for fusion across block
# boundaries, a compile time that grows with depth. Exact up to kernel rounding.
#
# **Prediction** (the stage docstring): the remaining passes between kernels, and little launch overhead to remove
# at these sizes. After stage 6 those passes are a small share of the step, so a gain of a few percent at most;
# compile time is paid once per process and reported separately.
#
# **Compile times are cold.** Every run here disabled Inductor's caches (`TORCHINDUCTOR_FORCE_DISABLE_CACHES=1`;
# `capture.json` → `env.inductor_caches`, the last column of the compile table below), so no compile reused
# kernels built by an earlier one.

# %%
from wanopt.profiling.notebook import setup

setup()  # quiet libraries before they load: nbval compares stderr

import gzip
import json

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from wanopt.profiling import analysis, report

STAGE, PREV = "07_compile", "06_fusion"
WORKLOADS = list(report.T2V_WORKLOADS)  # 1.3B and A14B at 480p, A14B at 720p
STAGE6 = ["_norm_modulate_kernel", "_rmsnorm_rope_kernel"]
pd.set_option("display.max_colwidth", 64)  # Inductor's kernel names differ only in their suffix

# %% [markdown]
# ## Correctness on the tiny model (live, CPU)
# Inductor compiles the tiny model's blocks for the CPU (C++ kernels; under compile on the CPU the stage-6 kernels
# run their eager versions, see `wanopt.stages.fusion`). Velocity of one guided step against the baseline's, after
# each stage:

# %%
report.tiny_stage_errors(STAGE, "t2v-1.3b-480p")

# %% [markdown]
# ## The committed H100 numbers

# %%
cmp = report.stage_comparison(STAGE)
print(analysis.provenance(analysis.load_manifest("t2v-a14b-480p", STAGE)))
cmp

# %% [markdown]
# The `error` column is the velocity metric at real size (traces/README.md), within 1e-4 of stage 6's (notebook
# 07: 0.0285, 0.0316, 0.0315; at 1.3B the manifests hold 0.02852 before and 0.02846 after, which round to 0.029
# and 0.028 at three digits): compile changes the rounding of the elementwise work, not the error level.
#
# ### Regional against whole-model compile, and what compiling costs
# The 1.3B run also timed the whole-model compile of the same pipeline (`capture.json` → `compile_whole_model`).
# `compile s` is the first call's extra time over a timed step.

# %%
rows = []
for w in WORKLOADS:
    run, m = analysis.load_run(w), analysis.load_manifest(w, STAGE)
    caches = run["env"].get("inductor_caches", "not recorded")
    rows.append({"workload": w, "compile": "regional", "step ms": m["timing"]["median"], "compile s": m["compile_s"],
                 "first call ms": m["warmup_ms"], "Inductor caches": caches})
    if "compile_whole_model" in run:
        whole = run["compile_whole_model"]
        rows.append({"workload": w, "compile": "whole model", "step ms": whole["timing"]["median"],
                     "compile s": whole["compile_s"], "first call ms": whole["warmup_ms"], "Inductor caches": caches})
pd.DataFrame(rows).set_index(["workload", "compile"]).round(1)

# %% [markdown]
# Whole-model and regional compile give about the same step time (timed both ways at 1.3B only: 910.3 against
# 918.1 ms, 0.9 % apart in the whole model's favour, within the drift between stages): little that Inductor could
# fuse across block boundaries is worth much next to GEMMs and attention. Both compiles are cold: the whole model
# took 47.6 s, the regional one 1.8–3.7 s at every size, one block compiled once and reused by all 30 or 40 blocks
# (and both experts).
#
# ## Did it pay? Block 5 before and after (A14B expert, 480p)

# %%
W = "t2v-a14b-480p"
fig = report.block_timelines(W, PREV, STAGE)
plt.show()

# %% [markdown]
# The attention kernel (orange) and the GEMMs (blue) are unchanged; so is the green slab before attention, the
# stage-6 RMSNorm + RoPE kernels (custom ops, see below); the red slivers are Inductor's fused residual kernels
# (see below on their colour).
#
# ## HTA TraceDiff
# GPU time per category, one profiled step each. Inductor names its kernels after the ops they fuse; those whose
# names contain `_to_copy` are counted under `cast/copy` by the name-based categories, so the shift from
# `norm/elementwise` to `cast/copy` below is a relabelling, not new copies.

# %%
pd.concat({w: analysis.category_diff(w, PREV, STAGE) for w in WORKLOADS}, axis=1)

# %%
analysis.trace_diff(W, PREV, STAGE).drop(index="Stream Sync", errors="ignore")

# %% [markdown]
# **Read this TraceDiff with care.** Inductor launches each Triton kernel from a CPU-side event named after it
# (`cat: cpu_op`), and that event carries a `stream` argument, so HTA counts it as a GPU event: every
# `triton_poi_…` row has twice its real calls. (`Stream Sync`, the host waiting on the stream, is dropped for the
# same reason.) The stage-6 rows are not doubled: their CPU-side event is the custom op (`wanopt::rmsnorm_rope`,
# `wanopt::norm_modulate`), not named after the kernel. The GPU side alone, from `analysis.kernels()`, which keeps
# only kernel, memcpy and memset events:

# %%
def by_kernel(w, stage):
    k = analysis.kernels(analysis.load_trace(w, stage))
    return k.groupby("short_name")["dur"].agg(calls="size", ms=lambda d: d.sum() / 1e3)


def gpu_diff(w, before, after, top=12):
    d = pd.concat({before: by_kernel(w, before), after: by_kernel(w, after)}, axis=1).fillna(0)
    d[("Δ ms", "")] = d[(after, "ms")] - d[(before, "ms")]
    return d.reindex(d[("Δ ms", "")].abs().sort_values(ascending=False).index).head(top).round(2)


gpu_diff(W, PREV, STAGE)

# %% [markdown]
# The same step grouped by who wrote the kernel: the stage-6 Triton kernels, Inductor's generated Triton kernels,
# and the rest by category (after compile, the `norm/elementwise` and `cast/copy` left here are ATen kernels
# outside the compiled blocks).

# %%
def by_source(w, stage):
    k = analysis.kernels(analysis.load_trace(w, stage))
    source = np.select([k["short_name"].isin(STAGE6), k["short_name"].str.startswith("triton_")],
                       ["stage-6 Triton", "Inductor Triton"], default=k["category"])
    return k.groupby(source)["dur"].agg(calls="size", ms=lambda d: d.sum() / 1e3)


sources = {w: pd.concat({s: by_source(w, s) for s in (PREV, STAGE)}, axis=1).fillna(0) for w in WORKLOADS}
for d in sources.values():
    d[("Δ ms", "")] = d[(STAGE, "ms")] - d[(PREV, "ms")]
pd.concat(sources, names=["workload", "kernels"]).round(1)

# %% [markdown]
# Two things to read here:
#
# 1. **Inductor fused what was left**: the eager `addcmul`s of the gated residuals, the modulation table and its
#    casts become a handful of `triton_poi_fused_…` kernels, cheaper than the ATen kernels they replace.
# 2. **The stage-6 kernels did not change** inside the compiled blocks: the same calls, the same time. The trace
#    records their launch configuration:

# %%
def launch_config(w, stage):
    with gzip.open(analysis.TRACES / w / stage / analysis.TRACE_NAME) as f:
        events = json.load(f)["traceEvents"]
    rows = [{"kernel": e["name"], "stage": stage, "threads / block": e["args"]["block"][0],
             "registers / thread": e["args"]["registers per thread"], "shared memory B": e["args"]["shared memory"],
             "est. occupancy %": e["args"]["est. achieved occupancy %"], "µs": e["dur"]}
            for e in events if e.get("cat") == "kernel" and e["name"] in STAGE6]
    return pd.DataFrame(rows)


configs = pd.concat([launch_config(W, s) for s in (PREV, STAGE)])
configs.groupby(["kernel", "stage", "registers / thread", "shared memory B", "threads / block",
                 "est. occupancy %"])["µs"].agg(
    calls="size", ms=lambda d: d.sum() / 1e3).round(2)

# %% [markdown]
# `_rmsnorm_rope_kernel` comes in two compiled variants (with RoPE: more registers, shared memory, lower occupancy;
# without: the cross-attention RMSNorm). Before and after compile each variant has the same registers per thread,
# the same occupancy and the same time: under compile the custom op's body runs as in eager and launches the
# kernel through Triton's own launcher, with the same compiled binary.
#
# **It was not always so.** Before the stage-6 launches became custom ops (commit `b323e48`), Dynamo traced them
# and Inductor re-launched the kernels through its own launcher, which re-specialized and recompiled them. From git
# history (the previous `t2v-a14b-480p` run, 20261123T062229Z, whose traces were replaced by the ones above): in its
# `07_compile` trace the kernels ran with 1.5–2.1× the registers per thread of its `06_fusion` trace (64 → 98 for
# `_norm_modulate_kernel`, 87 → 182 and 80 → 124 for the two `_rmsnorm_rope_kernel` variants), at lower
# occupancy and 1.5–2× the time, which made that run's `07_compile` step slower than its `06_fusion` step. An
# earlier version of this notebook blamed Inductor typing the float `eps` argument as fp64; that was a hypothesis,
# and not the cause. `python -m wanopt.profiling.kernel_bench` times each kernel alone at the A14B-480p
# batched-CFG shape, eager and under `torch.compile`, launched both ways (H100, same session as the runs):

# %%
bench = []
for line in (analysis.TRACES / "logs" / "bench_ops.txt").read_text().splitlines():
    if " eager " not in line:
        continue  # the log also holds the GPU machine's warnings
    name, rest = line.split(" eager ")
    eager_us, compiled_us = (float(v) for v in rest.replace("compiled", "").split("us")[:2])
    bench.append({"kernel": name.split()[0], "launch": "traced by Dynamo (before)" if "traced" in name
                  else "custom op (now)", "eager µs": eager_us, "compiled µs": compiled_us,
                  "compiled / eager": compiled_us / eager_us})
pd.DataFrame(bench).set_index(["kernel", "launch"]).round(2)

# %% [markdown]
# Each time is the median of 20 calls between two CUDA events, so it includes the host's launch path: under
# compile, the compiled function's guards and wrapper run inside the event window before the kernel starts (the
# `kernel_bench` docstring). That is the likely reason the custom op reads slower compiled than eager here, while
# its kernel time in the step traces above does not move. Traced by Dynamo, both kernels were slower still, and
# there the kernels themselves were slower (the earlier run's step traces, above).
#
# What Inductor generated in one step of the A14B expert (40 blocks; GPU kernels only), and what it left alone:

# %%
k = analysis.kernels(analysis.load_trace(W, STAGE))
generated = k[k["short_name"].str.startswith("triton_")]
generated.groupby("short_name")["dur"].agg(calls="size", median_us="median", ms=lambda d: d.sum() / 1e3).round(2)

# %% [markdown]
# - `…_norm_modulate_unbind_*`: microsecond kernels on each block's six-row modulation table, which prepare the
#   scale and shift rows that the stage-6 `norm_modulate` op takes (the name mentions that op);
# - `…_addcmul_unbind_view_*`: the two gated residual updates (`x + y · gate`, the `addcmul`), each fused with the
#   casts and adds of the modulation rows it uses (Inductor's kernel names list the ops they fuse);
# - `triton_poi_fused_add_view_3`: the cross-attention residual add, one pass like the ATen add it replaces
#   (`CUDAFunctor_add` in the GPU-side diff above, about the same time);
# - `triton_poi_fused_gelu_view_6`: **GELU is still its own pass** over the L × 13,824 FFN activation, about as
#   long as the eager GELU kernel it replaces. Inductor does not fuse a pointwise op into a cuBLAS GEMM's epilogue
#   in its default mode; only its own Triton GEMM templates (max-autotune) could. Stage 6 now does it itself where
#   the capture measured it faster (notebook 07): at 1.3B-480p GELU runs in the up-projection's cuBLASLt epilogue,
#   and its compiled step has 7 Inductor kernels per block (210 in 30 blocks, the table above) against 8 here. This
#   A14B-480p run predates that choice; at 720p the epilogue measured slower, and GELU stays this Inductor pass.
#
# ## Verdict

# %%
GROUPS = {"stage-6 Triton kernels": ["stage-6 Triton"],
          "elementwise: ATen before, Inductor after": ["norm/elementwise", "cast/copy", "Inductor Triton"],
          "GEMM + attention": ["GEMM", "attention"]}
for w in WORKLOADS:
    d, r = sources[w][("Δ ms", "")], cmp.loc[w]
    parts = {g: d.reindex(members).sum() for g, members in GROUPS.items()}
    print(f"{w}: step {r['before ms']:.0f} -> {r['after ms']:.0f} ms ({r['speedup ×']:.3f}x); peak memory "
          f"{r['peak GiB before']:.2f} -> {r['peak GiB after']:.2f} GiB; kernel time change: "
          + ", ".join(f"{g} {v:+.1f} ms" for g, v in parts.items()))
    saved = -parts["elementwise: ATen before, Inductor after"]
    print(f"  Inductor's fusion saved {saved:.1f} ms of kernel time, {100 * saved / r['before ms']:.1f} % of the "
          f"step; stage-6 kernels {sources[w].loc['stage-6 Triton', (PREV, 'ms')]:.1f} -> "
          f"{sources[w].loc['stage-6 Triton', (STAGE, 'ms')]:.1f} ms")

# %% [markdown]
# **It barely pays, as predicted.** With the stage-6 kernels as custom ops, compile no longer slows them (same
# registers, same time), and what is left is the predicted small gain: Inductor's fusion of the remaining
# elementwise work saves about 1 % of the step or less (1.2 % at 1.3B, 0.9 % at A14B-480p, 0.6 % at 720p). At
# 1.3B the measured step gains about that much, 1.3 % (931 → 918 ms). At A14B-480p it gains less, 0.6 %, within
# the drift of the kernels Inductor does not touch: the GEMM and attention kernels of the compiled step took 29 ms
# longer, more than half of the 47 ms the fusion saved, the same kernels on the same shapes (between stages of one
# run their time moves by up to about 2 %, up or down, see notebooks 07 and 09; the traces do not say why). At
# 720p it gains more, 2.4 % (20545 → 20058 ms), of which the profiled steps' kernel time accounts for 186 ms (the
# fusion's 116 plus 70 ms less GEMM and attention, mostly attention); the rest is in the `06_fusion` timing itself,
# whose median sits 309 ms above its profiled step's kernel time and whose three timed steps span 20353–20666 ms
# (manifest `timing`), against 20057–20078 ms for `07_compile`. After stages 5 and 6 the step is GEMMs and
# attention, and whole-model compile buys 0.9 % over regional (1.3B) for about 25 times the compile time. Peak
# memory is lower under compile at every size, a side benefit whose cause these traces cannot show (they record no
# allocations). At a cold regional compile of a few seconds per process the stage costs little and may be kept,
# but it is not where the time is.
