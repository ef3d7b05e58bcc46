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
# # t2v/07_compile · torch.compile: regional (per block) against the whole model
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

import matplotlib.pyplot as plt
import pandas as pd

from wanopt.profiling import analysis, report

STAGE, PREV = "07_compile", "06_fusion"
WORKLOADS = list(report.T2V_WORKLOADS)  # 1.3B and A14B at 480p, A14B at 720p
STAGE6 = ["_norm_modulate_kernel", "_rmsnorm_rope_kernel"]

# %% [markdown]
# ## Correctness on the tiny model (live, CPU)
# Inductor compiles the tiny model's blocks for the CPU (C++ kernels; under compile on the CPU the stage-6 kernels
# run their eager versions, see `wanopt.stages.fusion`). Velocity of one guided step against the baseline's, after
# each stage:

# %%
report.tiny_stage_errors(STAGE, "t2v-1.3b-480p")

# %% [markdown]
# ## The committed GPU numbers

# %%
cmp = report.stage_comparison(STAGE)
print(analysis.provenance(analysis.load_manifest("t2v-a14b-480p", STAGE)))
cmp

# %% [markdown]
# The `error` column is the velocity metric at real size (traces/README.md); it stays within about 1e-4 of stage
# 6's (`t2v/06_fusion`; the manifests before and after can round to different last digits): compile changes the
# rounding of the elementwise work, not the error level.

# %%
vel = report.velocity_errors()
vel.query(f"stage in ['{PREV}', '{STAGE}']")["velocity rel L2"].unstack("stage").assign(
    **{"Δ": lambda d: d[STAGE] - d[PREV]}).round(5)

# %% [markdown]
# ### Regional against whole-model compile, and what compiling costs
# A run asked to compare (`--compare-alternatives`) also timed the whole-model compile of the same pipeline, from
# the state before this stage (`analysis.whole_model_compile` reads it from either capture format). `compile s` is
# the first call's extra time over a timed step.

# %%
rows = []
for w in WORKLOADS:
    run, m = analysis.load_run(w), analysis.load_manifest(w, STAGE)
    caches = run["env"].get("inductor_caches", "not recorded")
    rows.append({"workload": w, "compile": "regional", "step ms": m["timing"]["median"], "compile s": m["compile_s"],
                 "first call ms": m["warmup_ms"], "Inductor caches": caches})
    whole = analysis.whole_model_compile(run)
    if whole is not None:
        rows.append({"workload": w, "compile": "whole model", "step ms": whole["timing"]["median"],
                     "compile s": whole["compile_s"], "first call ms": whole["warmup_ms"], "Inductor caches": caches})
compiles = pd.DataFrame(rows).set_index(["workload", "compile"]).round(1)
compiles

# %%
for w in compiles.index.get_level_values("workload").unique():
    c = compiles.loc[w]
    if "whole model" in c.index:
        r, wh = c.loc["regional"], c.loc["whole model"]
        gain = 100 * (r["step ms"] / wh["step ms"] - 1)
        print(f"{w}: whole model {wh['step ms']:.1f} ms against regional {r['step ms']:.1f} ms per step (the whole "
              f"model {abs(gain):.1f} % {'faster' if gain > 0 else 'slower'}), compiled in {wh['compile s']:.1f} s "
              f"against {r['compile s']:.1f} s ({wh['compile s'] / r['compile s']:.0f}×)")

# %% [markdown]
# Whole-model and regional compile give about the same step time: little that Inductor could fuse across block
# boundaries is worth much next to GEMMs and attention. The whole model costs many times the compile time, since
# the regional compile builds one block once and reuses it for all 30 or 40 blocks (and both experts).
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
# ## What changed in the trace
# GPU time per category, one profiled step each. Inductor names its kernels after the ops they fuse; those whose
# names contain `_to_copy` are counted under `cast/copy` by the name-based categories, so the shift from
# `norm/elementwise` to `cast/copy` below is a relabelling, not new copies.

# %%
pd.concat({w: analysis.category_diff(w, PREV, STAGE) for w in WORKLOADS}, axis=1)

# %% [markdown]
# The GPU kernels whose time changed most (`analysis.trace_diff`: GPU events only, each counted once; Inductor's
# host-side launch ops, named after their kernels, are not GPU work and are not counted):

# %%
analysis.trace_diff(W, PREV, STAGE)

# %% [markdown]
# The same step grouped by who wrote the kernel: the stage-6 Triton kernels, Inductor's generated Triton kernels,
# and the rest by category (after compile, the `norm/elementwise` and `cast/copy` left here are ATen kernels
# outside the compiled blocks).

# %%
def sources_of(w, stage):
    return analysis.source_breakdown(analysis.kernels(analysis.load_trace(w, stage)), {"stage-6 Triton": STAGE6})


sources = {w: pd.concat({s: sources_of(w, s) for s in (PREV, STAGE)}, axis=1).fillna(0) for w in WORKLOADS}
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
configs = pd.concat([analysis.kernel_launch_config(W, s, STAGE6).assign(stage=s) for s in (PREV, STAGE)])
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
# and not the cause. An earlier version of today's `python -m wanopt.profiling.microbench`
# timed each kernel alone at the A14B-480p batched-CFG shape, eager and under `torch.compile`, launched both ways:
# its committed log (`traces/logs/bench_ops.txt`, an H100 session before these runs) is below. Today's benchmark
# times the custom ops only (`traces/logs/microbench.txt`, on the H200).

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
# `microbench` docstring). That is the likely reason the custom op reads slower compiled than eager here, while
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
#   it measured it faster (`t2v/06_fusion`): a run whose stage 6 picked the epilogue has no Inductor GELU kernel,
#   one Inductor kernel fewer per block (the source table above). This A14B-480p run predates that choice.
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
# elementwise work saves a percent or so of the step (the lines above). The measured step moves by about that
# much, give or take the drift of the kernels Inductor does not touch: at A14B-480p the GEMM and attention kernels
# of the compiled step took 29 ms longer, more than half of the 47 ms the fusion saved, the same kernels on the same
# shapes (between stages of one run their time moves by up to about 2 %, up or down, see `t2v/06_fusion` and
# `t2v/08_cuda_graphs`; the traces do not say why). At 720p it gains more, 2.4 % (20545 → 20058 ms), of which the
# profiled steps' kernel time accounts for 186 ms (the fusion's 116 plus 70 ms less GEMM and attention, mostly
# attention); the rest is in the `06_fusion` timing itself, whose median sits 309 ms above its profiled step's
# kernel time and whose three timed steps span 20353–20666 ms (manifest `timing`), against 20057–20078 ms for
# `07_compile`. After stages 5 and 6 the step is GEMMs and attention, and whole-model compile buys little over
# regional for many times the compile time (the compile table). Peak memory is lower under compile in these runs,
# a side benefit whose cause these traces cannot show (they record no allocations). At a cold regional compile of
# seconds per process (the compile table) the stage costs little and may be kept, but it is not where the time is.
