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
# # t2v/06_fusion · Fusion: one QKV GEMM, and Triton kernels for norm + modulate and RMSNorm + RoPE
#
# **What changes** (`wanopt.stages.fusion`, stage `06_fusion`), on the lean model of stage 4:
# - self-attention's q, k, v projections become one d→3d GEMM (cross-attention's k, v one d→2d GEMM on the text);
#   the separate weights are freed, so memory does not grow;
# - LayerNorm + `* (1 + scale) + shift` (twice per block) and the cross-attention LayerNorm with its affine become
#   one Triton kernel each (`_norm_modulate_kernel`): one read of the bf16 row, one write, statistics in fp32;
# - RMSNorm over the full dim + split heads + RoPE on interleaved pairs becomes one Triton kernel for q and for k
#   (`_rmsnorm_rope_kernel`), which reads q and k straight out of the fused QKV output (a strided view, no copy);
#   the same kernel without the rotation does cross-attention's q and k;
# - the FFN's GELU moves into the up-projection GEMM's cuBLASLt epilogue, but only where the stage's `choose`
#   measured that faster at the workload's shape on the run's GPU (`analysis.gelu_choice` reads what each run
#   picked). The A14B-480p run is older and predates the choice: its stage 6 runs the GEMM, then GELU.
#
# Exact up to rounding: the kernels keep intermediates in fp32 and round once, where the eager code rounds to bf16
# after each op.
#
# **Prediction** (the stage docstring): the eager lean block still makes ~8 passes over L×d for each RoPE and ~3
# for each modulate; one pass over a 480p A14B activation (32,760 × 5120 bf16 = 335 MB) costs ~0.2 ms at 3 TB/s,
# so fusion should save a few ms per block, i.e. the elementwise and cast time of a block should shrink to about
# one read and one write per fused op. The GEMMs and attention should not move. The GELU epilogue saves one
# write and one read of the FFN activation (ffn_dim wide) if cuBLASLt's GEMM with the epilogue is not slower than
# the one without, which is why the capture times both.

# %%
from wanopt.profiling.notebook import setup

setup()  # quiet libraries before they load: nbval compares stderr

import matplotlib.pyplot as plt
import pandas as pd
import torch

from wanopt.configs import get_config
from wanopt.kernels import INTERPRETER
from wanopt.measure import rel_l2
from wanopt.models.layers import rope_table
from wanopt.profiling import analysis, report
from wanopt.stages import dtype_hygiene
from wanopt.stages.fusion import triton_norm_modulate, triton_qk_norm_rope
from wanopt.targets import goal

STAGE = "06_fusion"
_ = torch.manual_seed(0)

# %% [markdown]
# ## Correctness on the tiny model (live, CPU)
# The tiny pipeline with the stages applied one by one; the velocity of one guided step against the baseline's.
# On the CPU the Triton kernels run in Triton's interpreter (`TRITON_INTERPRET=1`, set by wanopt on import).

# %%
print("Triton interpreter:", INTERPRETER)
report.tiny_stage_errors(STAGE, "t2v-1.3b-480p")

# %% [markdown]
# ### Each Triton kernel against its eager reference
# Random bf16 inputs, compared with the eager kernel of stage 4 run in float32 on the same values (the exact
# answer up to fp32 rounding). The cases cover what the model feeds the kernels: per-sample modulation `[B, 1, D]`
# and a LayerNorm affine `[D]`; RMSNorm with the RoPE tables of a real head size (128) and without; and, for
# both kernels, the non-contiguous chunk view of a fused QKV output (`[B, L, 3D].chunk(3, -1)[1]`, row stride
# 3D), which is how the model passes q and k. Batch 2, so that the per-sample and per-token indexing is exercised.
#
# **Tolerance: relative L2 ≤ 1e-2.** The output is bf16, so each value carries up to one ulp of rounding,
# 2⁻⁸ ≈ 4e-3 relative (the interpreter's casts truncate, where the GPU rounds to nearest and makes half that);
# over a tensor that is a few 1e-3. A wrong pairing, head or row is not a rounding error: it replaces each output
# vector with an unrelated one of the same norm, a relative L2 of about √2. The two `(control)` rows show exactly
# that, on the float32 reference itself: its pairs swapped, or its rows moved by one token. The column `eager bf16`
# is the stage-4 kernel on the bf16 inputs, for scale.

# %%
B, GRID, D, EPS = 2, (2, 4, 6), 512, 1e-6  # L = 48 tokens per sample: the interpreter is slow
L, HEADS = GRID[0] * GRID[1] * GRID[2], D // 128
gen = torch.Generator().manual_seed(0)


def rand(*shape, scale=1.0, shift=0.0):
    return (shift + scale * torch.randn(*shape, generator=gen)).to(torch.bfloat16)


x, qkv = rand(B, L, D), rand(B, L, 3 * D)
chunk = qkv.chunk(3, -1)[1]
scale, shift = rand(B, 1, D, scale=0.1, shift=1.0), rand(B, 1, D)
weight, bias = rand(D, scale=0.1, shift=1.0), rand(D, scale=0.1)
cos, sin = dtype_hygiene.rope_cos_sin(rope_table(128), GRID, torch.bfloat16, "cpu")
f32 = lambda *ts: [t.float() for t in ts]  # noqa: E731

cases = [
    ("norm_modulate", "per-sample [B,1,D]", triton_norm_modulate, dtype_hygiene.norm_modulate, (x, scale, shift, EPS)),
    ("norm_modulate", "affine [D]", triton_norm_modulate, dtype_hygiene.norm_modulate, (x, weight, bias, EPS)),
    ("norm_modulate", "chunk view of QKV", triton_norm_modulate, dtype_hygiene.norm_modulate,
     (chunk, scale, shift, EPS)),
    ("qk_norm_rope", "RoPE", triton_qk_norm_rope, dtype_hygiene.qk_norm_rope, (x, weight, EPS, (cos, sin), HEADS)),
    ("qk_norm_rope", "RoPE, chunk view of QKV", triton_qk_norm_rope, dtype_hygiene.qk_norm_rope,
     (chunk, weight, EPS, (cos, sin), HEADS)),
    ("qk_norm_rope", "no RoPE", triton_qk_norm_rope, dtype_hygiene.qk_norm_rope, (x, weight, EPS, None, HEADS)),
]
rows = []
for kernel, case, fused, eager, args in cases:
    as_f32 = [f32(*a) if isinstance(a, tuple) else a.float() if torch.is_tensor(a) else a for a in args]
    exact = eager(*as_f32)
    out = fused(*args)
    err = rel_l2(out, exact)
    rows.append({"kernel": kernel, "case": case, "output": f"{tuple(out.shape)} {str(out.dtype)[6:]}",
                 "rel L2 vs fp32": f"{err:.0e}", "eager bf16 vs fp32": f"{rel_l2(eager(*args), exact):.0e}",
                 "≤ 1e-2": "yes" if err <= 1e-2 else "NO"})
exact = dtype_hygiene.qk_norm_rope(*f32(x, weight), EPS, f32(cos, sin), HEADS)
swapped = exact.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)  # even/odd of each pair exchanged
rows.append({"kernel": "(control)", "case": "pairs swapped", "rel L2 vs fp32": f"{rel_l2(swapped, exact):.0e}"})
rows.append({"kernel": "(control)", "case": "rows shifted by one token",
             "rel L2 vs fp32": f"{rel_l2(exact.roll(1, dims=1), exact):.0e}"})
pd.DataFrame(rows).set_index(["kernel", "case"]).fillna("")

# %% [markdown]
# The fused kernels sit at the same rounding level as the eager bf16 path (slightly above it: truncation on the
# CPU), two orders of magnitude below the controls.
#
# ## The committed GPU numbers
# Same run, same GPU: the previous captured stage and this one. **At 720p the previous captured stage is the
# baseline** (the 720p run captured `00_baseline`, then only the final stages `06_fusion`, `07_compile` and
# `08_cuda_graphs`), so its row is stages 1–6 together, offload and batched CFG included.

# %%
cmp = report.stage_comparison(STAGE)
print(analysis.provenance(analysis.load_manifest("t2v-a14b-480p", STAGE)))
cmp

# %% [markdown]
# The `error` column is the velocity metric (traces/README.md): the relative L2 of one step's guided velocity
# against `00_baseline`'s, from the same state, at real size. Per captured stage from dtype hygiene on (the 720p
# run has no capture of stages 4 and 5):

# %%
vel = report.velocity_errors()
for w, r in cmp.iterrows():
    before, after = (vel.loc[(w, s), "velocity rel L2"] for s in (r["previous stage"], STAGE))
    print(f"{w}: velocity rel L2 {before:.4f} ({r['previous stage']}) -> {after:.4f} ({STAGE}), "
          f"tolerance {vel.loc[(w, STAGE), 'tolerance']:g}")
vel.query("stage in ['04_dtype_hygiene', '05_attention', '06_fusion']")["velocity rel L2"].unstack("workload")

# %% [markdown]
# Fusion adds no error: at 480p its velocity error is that of the stages before it (dtype hygiene's bf16
# rounding sets the level), and at 720p, where those stages were not captured, it is at the same level as at
# 480p. (An earlier 720p capture, in git history before commit `b323e48`, ran these kernels with `row × row_stride`
# in 32-bit integers, which passes 2³¹ at 720p with batched CFG; the kernels use 64-bit row offsets since, and all
# runs here were made with them.)
#
# ## Where the time went: one block, before and after
# Block 5 of the batched forward, A14B expert at 480p. The fused kernels replace the green and red slivers
# around the GEMMs.

# %%
fig = report.block_timelines("t2v-a14b-480p", "05_attention", STAGE)
plt.show()

# %%
W = "t2v-a14b-480p"
blocks = {}
for stage in ("05_attention", STAGE):
    a = analysis.load_trace(W, stage)
    blocks[stage] = analysis.in_window(analysis.kernels(a), analysis.window(a, "block05"))
pd.concat({s: analysis.category_breakdown(k) for s, k in blocks.items()}, axis=1)

# %% [markdown]
# The elementwise kernels of block 5, before and after: the eager LayerNorms, the modulation's `addcmul`s and the
# RoPE's multiply-adds and copies (before) against the two Triton kernels and what was left unfused (after: the
# gated residual `addcmul`s, GELU, the cross-attention residual add).

# %%
pd.concat({s: k[k["category"].isin(["norm/elementwise", "cast/copy"])].groupby("short_name")["dur"].agg(
    calls="size", ms=lambda d: d.sum() / 1e3).sort_values("ms", ascending=False) for s, k in blocks.items()},
    axis=1).fillna(0).round(2)

# %% [markdown]
# ### How close the fused kernels get to memory bandwidth
# Each call reads one bf16 row per token and writes one, `2 × rows × D × 2 bytes` (the modulation vectors and
# RoPE tables add < 1 %). Per block the calls come in a fixed order, so their role can be read from their
# position. Achieved bandwidth from the median kernel time of the A14B 480p trace:

# %%
dim = get_config("wan2.2-t2v-a14b").dit.dim
tokens, text = analysis.load_run(W)["tokens"], 512
ROLES = {"_norm_modulate_kernel": [("modulate, self-attn", tokens), ("LayerNorm affine, cross-attn", tokens),
                                   ("modulate, FFN", tokens)],
         "_rmsnorm_rope_kernel": [("q: RMSNorm + RoPE", tokens), ("k: RMSNorm + RoPE", tokens),
                                  ("cross q: RMSNorm", tokens), ("cross k: RMSNorm (text)", text)]}
k = analysis.kernels(analysis.load_trace(W, STAGE))
rows = []
for name, roles in ROLES.items():
    calls = k[k["short_name"] == name].reset_index(drop=True)
    for i, (role, rows_per_sample) in enumerate(roles):
        us = calls.iloc[i::len(roles)]["dur"].median()
        gbytes = 2 * 2 * rows_per_sample * dim * 2 / 1e9  # batch 2, read + write, bf16
        rows.append({"kernel": name, "role": role, "calls": len(calls) // len(roles), "median µs": us,
                     "GB moved": gbytes, "TB/s": gbytes / us * 1e3})
bandwidth = pd.DataFrame(rows).set_index(["kernel", "role"])
bandwidth.round(2)

# %% [markdown]
# The norm + modulate kernel runs close to the HBM bandwidth of the A14B run's GPU (an H100: 3.35 TB/s on paper),
# the plain RMSNorm not far behind. The RMSNorm + RoPE kernel moves the same bytes as the plain RMSNorm (plus small
# tables) but takes over twice as long, so the bytes are not what limits it; the likely cost is the rotation's
# stride-2 loads and stores of even and odd elements, which also compile to a variant with shared memory and lower
# occupancy (its launch configuration is in `t2v/07_compile`). That is the one fused kernel with room left. (A
# second form that walks each row as heads × pairs with contiguous loads was timed against it in earlier captures
# and was slower at every shape; it was dropped.)
#
# ### The measured choice: GELU in the GEMM epilogue
# Each newer capture times the FFN up-projection + GELU both ways at its shape (`[2L, d] @ [d, ffn_dim]`, median
# ms) and passes the winner to the stage. Each run's choice and its two timings:

# %%
choices = analysis.choices_table(report.T2V_WORKLOADS)
choices

# %% [markdown]
# The trace shows the choice: with the epilogue the up-projection GEMMs carry GELU (`…gelubias…` kernels) and no
# separate GELU kernel runs in the blocks; without it GELU is its own kernel. GPU ms in each run's `06_fusion`
# profiled step:

# %%
rows = {}
for w in report.T2V_WORKLOADS:
    k = analysis.kernels(analysis.load_trace(w, STAGE))
    rows[w] = {"GEMMs with a GELU epilogue ms": k.loc[k["short_name"].str.contains("gelubias"), "dur"].sum() / 1e3,
               "separate GELU kernels ms": k.loc[k["short_name"] == "GeluCUDAKernelImpl", "dur"].sum() / 1e3}
pd.DataFrame(rows).T.round(1).assign(**{"epilogue used": [analysis.gelu_choice(w)["used"] for w in rows]})

# %% [markdown]
# ## The whole step, kernel by kernel
# GPU time per category (one profiled step each), then the GPU kernels whose time changed most.

# %%
pd.concat({w: analysis.category_diff(w, "05_attention", STAGE) for w in ("t2v-1.3b-480p", W)}, axis=1)

# %%
analysis.trace_diff(W, "05_attention", STAGE)

# %% [markdown]
# What the diff shows (A14B-480p): the eager `vectorized_layer_norm_kernel`s go (one is left, outside the blocks),
# the generic elementwise kernels (`BinaryFunctor`, `addcmul`, `CUDAFunctor_add`, copies) drop by more than half,
# the two Triton kernels come in; the GEMM calls are
# regrouped (one QKV GEMM with another tile shape in place of three) at about the same total time, and attention
# moves by 1–2 %: the same FA4 kernel on the same shapes. Where the up-projection also applies GELU (a run whose
# stage picked the epilogue), the GEMMs take a little more time while the elementwise time drops by much more (the
# category table).
#
# ## 720p: baseline → fusion
# The 720p run has no capture between the baseline and this stage, so this is stages 1–6 at once: both experts
# resident, batched CFG, TF32, dtype hygiene, FA4 attention and fusion (GELU as its own kernel: the epilogue lost
# at this shape in this run). The baseline trace holds two steps (a normal one and the expert switch); the timeline, the
# category diff and HTA's TraceDiff all use the first profiled step of each trace, a normal step on the
# high-noise expert in both.

# %%
fig = report.step_timelines("t2v-a14b-720p", "00_baseline", STAGE)
plt.show()

# %%
analysis.category_diff("t2v-a14b-720p", "00_baseline", STAGE)

# %%
analysis.trace_diff("t2v-a14b-720p", "00_baseline", STAGE)

# %% [markdown]
# Attention (FA2 → FA4, 26.9 → 14.1 s of kernel time) is most of the 720p gain, then the reference's elementwise
# work and casts (dtype hygiene and fusion), then the GEMMs: Wan 2.2's per-token float32 time MLP (the
# `sm80_xmma_gemm_f32f32` rows) is gone, while the bf16 GEMMs of the blocks, regrouped by batched CFG and the fused
# QKV, take somewhat longer for the same FLOPs (their `nvjet` rows); the trace does not say why.
#
# ## Verdict

# %%
per_block = {s: analysis.category_breakdown(k).loc[["norm/elementwise", "cast/copy"], "ms"].sum()
             for s, k in blocks.items()}
print(f"{W} block 5: elementwise + casts {per_block['05_attention']:.1f} -> {per_block[STAGE]:.1f} ms "
      f"(saved {per_block['05_attention'] - per_block[STAGE]:.1f} ms per block)")
for w, r in cmp.iterrows():
    floor_before = analysis.load_manifest(w, r["previous stage"])["kernel_floor_ratio"]
    print(f"{w}: {r['before ms']:.0f} -> {r['after ms']:.0f} ms per step vs {r['previous stage']}, "
          f"{r['speedup ×']:.3f}x; peak {r['peak GiB before']:.2f} -> {r['peak GiB after']:.2f} GiB; "
          f"kernel floor ratio {floor_before:.2f} -> {r['floor ×']:.2f}")
print(f"720p peak {cmp.loc['t2v-a14b-720p', 'peak GiB after']:.2f} GiB against the target's "
      f"{goal('t2v-a14b-720p', 'peak_gib_resident'):g} GiB with both experts resident (wanopt/targets.py)")
rope = bandwidth.loc[("_rmsnorm_rope_kernel", "q: RMSNorm + RoPE"), "TB/s"]
plain = bandwidth.loc[("_rmsnorm_rope_kernel", "cross q: RMSNorm"), "TB/s"]
print(f"RMSNorm + RoPE kernel at {rope:.2f} TB/s against {plain:.2f} TB/s without the rotation")

# %% [markdown]
# **It paid, about as predicted.** At 480p the stage removes the eager elementwise passes and casts around the GEMMs:
# in A14B's block 5 the elementwise and cast time more than halves (20.7 → 9.5 ms), the GEMMs and attention stay
# within 2 %, and peak memory is flat at A14B (the separate q/k/v weights are freed). The docstring's "a few ms
# per block" was counted for one sample (335 MB per pass); the batched forward moves two samples per pass, which
# doubles it.
# The step gain is modest because after stage 5 these passes were already a small share of the step (the lines
# above); both 480p workloads move closer to their kernel floor, where the rest of the time is GEMMs and attention.
# Where the stage picked the GELU epilogue, peak memory can drop as well: the epilogue no longer writes the
# up-projection's output before GELU (at 1.3B-480p 65,520 × 8,960 bf16, 1.1 GiB), a plausible cause, not a
# measured one (the traces record no allocations).
#
# The GELU epilogue is a measured choice, not a rule: cuBLASLt's GEMM with the epilogue is faster than GEMM + GELU
# at some shapes and GPUs and slower at others (the choices table above), and each run uses what it measured.
#
# At 720p the row is the whole sequence from the baseline (1.92x): both experts now resident, the peak stays
# below the memory target, and the step is close to its kernel floor, with a velocity error at the 480p level
# (the table above).
#
# Left on the table: the RMSNorm + RoPE kernel runs at less than half the bandwidth of its own no-rotation
# variant. The first fix tried, a form that walks each row as heads × pairs with contiguous loads, was, on the H100 (captures 20261123T165834Z and 20261123T171751Z), 1.2–5.4×
# slower at every shape measured (above) and was dropped; the pairs kernel stays, and what limits it is still open.
