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
# # mg2/00_baseline · Matrix-Game-2 baseline: where one DiT eval and one block spend their time
#
# Matrix-Game-2 (`CausalWanModel`) makes a 352×640 video block by block: 3 latent frames per block (12 video frames
# in the steady state), 3 denoising evals and 1 cache-refresh eval per block, a rolling KV cache of 6 latent frames
# and mouse/keyboard action modules in blocks 0–14. Each eval has only 2,640 query tokens, so its matmuls are small;
# the reference code adds float64 RoPE, unfused norms and casts, and reads the cache's GPU-resident end indices
# back with `.item()` in every cached attention.
#
# **Prediction.** A launch- and sync-bound run, not a FLOP-bound one: a few hundred host syncs per eval (one per
# `.item()`, several per cached attention), thousands of kernels of a few microseconds, and a GPU that waits for the
# host much of the time. The FLOP floor of a block should be far below its time.
#
# This notebook checks that from the committed trace of `mg2-universal` (`traces/mg2-universal/00_baseline/`).
# Its three profiled steps are block 0 (first block, empty cache), block 1 (cache filling) and block 2 (steady
# state: cache full, oldest block evicted). The live part runs the same code on the tiny config (`mg2-tiny`). The
# targets (`wanopt/targets.py`) belong to the optimization stages that come next; here we measure the gap.

# %%
from wanopt.profiling.notebook import setup

setup()  # quiet libraries before they load: nbval compares stderr

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from wanopt import targets
from wanopt.configs import get_mg2_config
from wanopt.models.layers import attention_flops
from wanopt.pipelines.causal import CausalPipeline
from wanopt.profiling import analysis, plots, report
from wanopt.profiling.flops import causal_eval_flops

WORKLOAD, STAGE = "mg2-universal", "00_baseline"
m = analysis.load_manifest(WORKLOAD, STAGE)
run = analysis.load_run(WORKLOAD)
cfg = get_mg2_config(WORKLOAD)
DEVICE = report.device_of(WORKLOAD)
print(analysis.provenance(m))

# %% [markdown]
# ## The timed numbers (CUDA events, no profiler)
# The capture timed three things on the GPU, without the profiler: the first block of a fresh video, a
# steady-state block, and one steady-state eval. Each block is DiT only (no VAE decode). The ceilings come from the
# same run: a bf16 8192³ GEMM and the attention kernel with the least time on the steady state's mix of self- and
# cross-attention (FA4, where installed, is faster at the self-attention shape but far slower at the 257-key cross
# shape), each attention kernel
# timed over a batch of back-to-back calls so that the host's launch path stays outside the measured window. The
# FLOP floor puts each eval's attention FLOPs at the attention ceiling and the rest at the GEMM ceiling.

# %%
ceil = m["ceilings"]
steady_ms, first_ms = m["timing"]["median"], m["first_block"]["timing"]["median"]
eval_ms = m["eval"]["timing"]["median"]
floor_ms = m["kernel_floor_ms"]
evals_per_block = m["evals_per_block"]
print(f"ceilings: GEMM {ceil['gemm_tflops']:.0f} TFLOP/s; attention {ceil['attention_tflops']:.0f} TFLOP/s "
      f"({ceil['attention_backend']}, shape [batch, heads, q, k, head_dim] = {run['ceilings']['attention_shape']}); "
      f"the model runs {m['attention_backend_used']}")
pd.DataFrame({
    "median ms": [first_ms, steady_ms, eval_ms],
    "min ms": [m["first_block"]["timing"]["min"], m["timing"]["min"], m["eval"]["timing"]["min"]],
    "max ms": [m["first_block"]["timing"]["max"], m["timing"]["max"], m["eval"]["timing"]["max"]],
    "n": [m["first_block"]["timing"]["n"], m["timing"]["n"], m["eval"]["timing"]["n"]],
    "keys": [m["first_block"]["keys"], 2 * m["first_block"]["keys"], 2 * m["first_block"]["keys"]],
    "TFLOP": [m["first_block"]["flops"] / 1e12, m["flops_per_step"] / 1e12, m["eval"]["flops"]["total"] / 1e12],
    "video frames": [m["first_block"]["video_frames"], m["video_frames_per_block"], None],
}, index=pd.Index(["first block (4 evals)", "steady block (4 evals)", "one steady eval"], name="timed")).round(1)

# %%
print(f"steady block: {steady_ms:.1f} ms against a kernel floor of {floor_ms:.1f} ms "
      f"(×{m['kernel_floor_ratio']:.1f}); MFU {100 * m['mfu']:.1f} %; first block ×"
      f"{analysis.first_block_vs_steady(m):.2f} the steady block")
print(f"one eval timed alone: {eval_ms:.1f} ms × {evals_per_block} evals = {eval_ms * evals_per_block:.1f} ms, "
      f"the block {steady_ms - eval_ms * evals_per_block:+.1f} ms from that (it adds its first eval's cache roll and "
      f"extra syncs and the re-noising; its evals run back to back, where an eval timed alone starts on an idle GPU)")

# %% [markdown]
# ## Live on the tiny model: the block loop, the cache window, the `.item()` reads
# `mg2-tiny` runs the same code paths at toy size: mouse and keyboard, a 6-frame window, 3 frames per block, and
# the same timesteps.

# %%
pipe = CausalPipeline("mg2-tiny", device="cpu", seed=0)
tiny = pipe.config
state = pipe.start(3, seed=0)
print(f"timesteps (warped from {list(tiny.denoising_step_list)}, shift {tiny.timestep_shift:g}):",
      ", ".join(f"{t:.2f}" for t in pipe.timesteps.tolist()), f"+ cache refresh at t = {tiny.context_noise}")
print("noise", tuple(state.noise.shape), "| cond_concat", tuple(state.cond_concat.shape), "| CLIP tokens",
      tuple(state.visual_context.shape), "| mouse", tuple(state.mouse.shape), "| keyboard", tuple(state.keyboard.shape))
print(f"tiny: {report.cached_attentions(tiny)} cached attentions per eval ({tiny.num_layers} self-attention, "
      f"{len(tiny.action.blocks)} mouse, {len(tiny.action.blocks)} keyboard); {tiny.frame_seq_length} tokens per "
      "latent frame")

# %% [markdown]
# Three blocks, and for every eval how many times `torch.Tensor.item` is called (each call is a GPU→CPU copy and a
# sync on a GPU; `report.count_item_calls` counts them per forward) and how many keys self-attention attends to
# after it:

# %%
live = report.tiny_mg2_item_calls(blocks=3)
live

# %% [markdown]
# The first eval of a block takes 4 reads per cached attention (6 once the window is full and the oldest block has
# to be rolled out); the 3 later evals of the block overwrite the same slots and take 3. The key window grows from
# one block to two and stays there. A check of the eviction: after block 2, the first half of the self-attention
# buffer must hold exactly what the second half held after block 1 (the clean K of block 1, from its cache refresh).

# %%
print(f"max |K(after block 2)[:half] − K(after block 1)[half:]| = {report.tiny_mg2_eviction_error():.0e}")

# %% [markdown]
# The same rule at real size: universal has 30 self-attentions plus 15 mouse and 15 keyboard attentions per eval.

# %%
predicted = (live["per cached attention"] * report.cached_attentions(cfg)).astype(int)
print(f"universal: {report.cached_attentions(cfg)} cached attentions per eval; model .item() calls per eval:")
predicted.unstack(["eval", "#"])

# %% [markdown]
# ## The trace
# Loaded once (a trace of three blocks of about 17,700 GPU events each takes HTA a while to parse; `load_trace`
# caches it). Every table below starts from two frames: `kernels(a)` (one row per GPU event: kernel, memcpy,
# memset) and `annotations(a)` (the `record_function` labels on the host). A GPU event belongs to a label when the
# host launched it while the label was open (`analysis.launched_in`, the rule that `analysis.window` and
# `analysis.gpu_time_by_label` use).
#
# **The profiler slows the host.** Each traced block spans much longer than its CUDA-event time (`traced / timed`
# below). Kernel durations are measured on the GPU and hardly change, so GPU-idle shares read from the trace
# overstate the idle time of the timed run. We therefore also give an estimate for the timed run:
# 1 − (kernel time in the trace) / (CUDA-event time).

# %%
a = analysis.load_trace(WORKLOAD, STAGE)
k = analysis.kernels(a)
syncs = analysis.runtime_calls(a, "^cudaStreamSynchronize$")  # the host side of every .item()
print(f"{len(k):,} GPU events on stream(s) {sorted(int(s) for s in k['stream'].unique())}; "
      f"{len(analysis.annotations(a)):,} host labels; {len(syncs):,} cudaStreamSynchronize")

# %%
STEP_NAMES = {s["iteration"]: f"block {s['block']}: {s['what']}" for s in m["trace"]["profiled_steps"]}
steps = analysis.spans(a, pattern=r"ProfilerStep#\d+")
timed = {1: first_ms, 3: steady_ms}  # block 1 was not timed on its own (the capture timed the first and a steady block)
per_step = pd.DataFrame({STEP_NAMES[it]: analysis.idle_summary(analysis.launched_in(k, steps[steps["iteration"] == it]))
                         for it in steps["iteration"]}).T
per_step.insert(1, "timed ms", [timed.get(it) for it in steps["iteration"]])
per_step.insert(2, "traced / timed", per_step["traced ms"] / per_step["timed ms"])
per_step.insert(5, "GPU idle % (timed, est.)", 100 * (1 - per_step["kernel ms"] / per_step["timed ms"]))
per_step.index.name = "step"
per_step.round(1)

# %% [markdown]
# For the whole trace, HTA's own analyses give the same picture: the temporal breakdown of GPU time, and the
# idle-time breakdown (`host_wait`: the GPU waits for the next launch; `kernel_wait`: short gaps between kernels
# that were already queued).

# %%
display(analysis.temporal_breakdown(a))
analysis.idle_breakdown(a)

# %% [markdown]
# ## Host syncs: what the trace counts against what the model does
# Each `.item()` shows up as a device-to-host copy on the GPU and a `cudaStreamSynchronize` on the host. Per
# profiled step:

# %%
analysis.host_syncs(a)

# %% [markdown]
# Inside every eval's host span (`analysis.span_table`), next to the live tiny count scaled to universal
# (`model .item()`):

# %%
per_eval = analysis.span_table(a, "denoise_eval|cache_refresh")
per_eval.index = per_eval.index.set_names(["block", "eval", "#"]).set_levels(
    per_eval.index.levels[0] - 1, level="block")  # ProfilerStep#k is block k-1
per_eval.insert(2, "model .item()", predicted.reindex(per_eval.index))
print("every eval: host syncs = D2H copies = the model's .item() count:",
      "yes" if ((per_eval["host syncs"] == per_eval["model .item()"])
                & (per_eval["D2H copies"] == per_eval["model .item()"])).all() else "NO")
per_eval.round(1)

# %% [markdown]
# The wait at each sync is short because the GPU has usually drained its queue before the host asks. The cost of
# the syncs is structural: the host can never run ahead of the GPU, and no CUDA graph can be captured across them.
# Per block:

# %%
per_block = per_eval.groupby("block")[["host syncs", "model .item()", "GPU events", "kernel ms"]].sum()
per_block.index = [STEP_NAMES[b + 1] for b in per_block.index]
per_block["syncs per eval"] = per_block["host syncs"] / evals_per_block
per_block["sync wait ms (trace)"] = [syncs.loc[syncs["iteration"] == it, "dur"].sum() / 1e3
                                     for it in sorted(steps["iteration"])]
per_block.round(2)

# %% [markdown]
# ## Kernels per eval and per block
# All GPU events (kernels, memcpys and memsets) of a block, with their median duration and the share of GPU time
# spent in events shorter than 10 µs; then the mean eval of each kind.

# %%
blocks = {it: analysis.launched_in(k, steps[steps["iteration"] == it]) for it in steps["iteration"]}
sizes = pd.DataFrame({STEP_NAMES[it]: {
    "GPU events per block": len(kk), "median µs": kk["dur"].median(), "events < 10 µs %": 100 * (kk["dur"] < 10).mean(),
    "GPU time in events < 10 µs %": 100 * kk.loc[kk["dur"] < 10, "dur"].sum() / kk["dur"].sum(),
    "kernel ms per block": kk["dur"].sum() / 1e3} for it, kk in blocks.items() if it in (1, 3)}).T
display(sizes.round(1))
by_kind = per_eval.groupby("eval")[["GPU events", "median µs", "kernel ms", "traced ms"]].mean()
by_kind.index = [f"one {i} (mean of {n})" for i, n in zip(by_kind.index, per_eval.groupby("eval").size())]
by_kind.round(1)

# %% [markdown]
# Launch statistics over the whole trace (HTA), and the idle gaps between consecutive GPU events of the steady
# block, by gap length. The gaps are inflated by the profiler; their shape (many gaps of tens of µs) is not.

# %%
display(analysis.launch_stats(a))
analysis.gap_histogram(blocks[3])

# %% [markdown]
# ## Kernel categories: first block against the steady block
# The same categories as every notebook (`analysis.categorize`), restricted to one profiled step each.

# %%
cats = {STEP_NAMES[it]: analysis.category_breakdown(kk) for it, kk in blocks.items()}
fig = plots.category_bars(cats, title=f"GPU kernel time per category, one block ({WORKLOAD} baseline, {DEVICE})")
plt.show()

# %%
steady_k = blocks[3]
display(cats[STEP_NAMES[3]])
analysis.top_kernels(steady_k, 12)

# %% [markdown]
# How fast the math runs in the steady block: FLOPs over kernel time, for all GEMMs together and for the attention
# kernels of each of the four attentions (`analysis.label_breakdown` splits each label's kernels by kind). The
# mouse attention (every one of the 880 locations attends over its ≤ 6 cached frames) and the keyboard attention
# (every token over ≤ 6 cached keyboard tokens) do almost no math.

# %%
E, L = evals_per_block, cfg.num_frame_per_block * cfg.frame_seq_length
W, n_action = cfg.local_attn_size, len(cfg.action.blocks)
attn_flops = {  # per steady block: 4·Lq·Lk·d per attention
    "self_attn": E * cfg.num_layers * attention_flops(L, W * cfg.frame_seq_length, cfg.dim),
    "cross_attn": E * cfg.num_layers * attention_flops(L, cfg.clip_tokens, cfg.dim),
    "mouse": E * n_action * attention_flops(L, W, cfg.action.mouse_hidden_dim),
    "keyboard": E * n_action * attention_flops(L, W, cfg.action.keyboard_hidden_dim),
}
eval_flops = causal_eval_flops(cfg, cfg.num_frame_per_block, cfg.local_attn_size)  # CLIP K/V cached: not counted
assert np.isclose(E * eval_flops["total"], m["flops_per_step"])  # the manifest's count
assert np.isclose(attn_flops["self_attn"] + attn_flops["cross_attn"], E * eval_flops["attention"])
gemm_flops = E * (eval_flops["linear"] + eval_flops["action"]) - attn_flops["mouse"] - attn_flops["keyboard"]
attn = analysis.label_breakdown(a, list(attn_flops), iteration=3)
steady_cats = cats[STEP_NAMES[3]]
ms_by_category = steady_k.groupby("category")["dur"].sum() / 1e3  # unrounded
gemm_ms = ms_by_category["GEMM"]
attn_ms = attn["attention ms"]
attn_calls = {n: int((analysis.launched_in(steady_k, analysis.spans(a, name=n, iteration=3))["category"]
                      == "attention").sum()) for n in attn_flops}
math_tab = pd.DataFrame({
    "GFLOP per block": [gemm_flops / 1e9] + [f / 1e9 for f in attn_flops.values()],
    "kernel ms": [gemm_ms] + [attn_ms[n] for n in attn_flops],
    "kernels": [int(steady_cats.loc["GEMM", "kernels"])] + [attn_calls[n] for n in attn_flops],
}, index=pd.Index(["GEMM (every linear layer)"] + [f"attention: {n}" for n in attn_flops], name="steady block"))
math_tab["TFLOP/s"] = math_tab["GFLOP per block"] / math_tab["kernel ms"]
math_tab["ceiling TFLOP/s"] = [ceil["gemm_tflops"]] + [ceil["attention_tflops"]] * 4
math_tab["% of ceiling"] = 100 * math_tab["TFLOP/s"] / math_tab["ceiling TFLOP/s"]
math_tab.round(1)

# %%
used = m["attention_backend_used"]
used_ceiling = ceil["attention_all"][used]
self_tflops = math_tab.loc["attention: self_attn", "TFLOP/s"]
print(f"self-attention runs {used} at {self_tflops:.0f} TFLOP/s in the trace, "
      f"{100 * self_tflops / used_ceiling:.0f} % of the capture's {used} ceiling at the same shape "
      f"({used_ceiling:.0f} TFLOP/s) and {100 * self_tflops / ceil['attention_tflops']:.0f} % of the picked kernel's "
      f"({ceil['attention_backend']}, {ceil['attention_tflops']:.0f} TFLOP/s); at that ceiling its "
      f"{attn_ms['self_attn']:.1f} ms per block would be "
      f"{attn_flops['self_attn'] / ceil['attention_tflops'] / 1e9:.1f} ms.")
best_self = max((k for k, v in ceil["attention_all"].items() if isinstance(v, float)), key=ceil["attention_all"].get)
print(f"the fastest kernel at the self-attention shape alone is {best_self} "
      f"({ceil['attention_all'][best_self]:.0f} TFLOP/s): {attn_flops['self_attn'] / ceil['attention_all'][best_self] / 1e9:.1f} "
      f"ms per block of self-attention.")
per_call = 1e3 * math_tab["kernel ms"] / math_tab["kernels"]
print(f"mouse + keyboard attention: {attn_ms['mouse'] + attn_ms['keyboard']:.1f} ms per block for "
      f"{(attn_flops['mouse'] + attn_flops['keyboard']) / 1e9:.1f} GFLOP; self-attention: {attn_ms['self_attn']:.1f} "
      f"ms for {attn_flops['self_attn'] / 1e12:.1f} TFLOP. Per call: mouse {per_call['attention: mouse']:.0f} µs, "
      f"keyboard {per_call['attention: keyboard']:.0f} µs, self-attention {per_call['attention: self_attn']:.0f} µs.")

# %% [markdown]
# The attention ceilings are timed over batches of back-to-back calls, so they hold no host launch latency; the
# lines above set the traced self-attention kernel against its own kernel's ceiling (how close it runs to what that
# kernel can do) and against the picked and the fastest kernels' (how much a kernel choice could buy). The math
# that is slow is the action modules' attention: each call takes about as long as a self-attention call, for almost
# no FLOPs.
#
# ## GPU time per module
# Kernel time launched inside each label, per block, split into GEMM, attention and everything else (small ops:
# norms, elementwise, casts, copies, memcpys). `action` is `mouse` + `keyboard`, and every module sits inside a
# `blockNN`. "syncs" counts the D2H copies of the `.item()` reads. "host ms" is how long the label was open on the
# host in the trace: the profiler inflates it, but it shows where the host is slower than the GPU. The last two
# rows are what a block launches outside its modules (modulation) and what an eval launches outside the model
# (the x0 arithmetic in float64).

# %%
MODULES = ["patch_embed", "time_embed", "img_embed", "self_attn", "cross_attn", "action", "mouse", "keyboard",
           "ffn", "head", "add_noise"]
OUTSIDE = {"(block: modulation, outside the modules)": (r"block\d\d", ["self_attn", "cross_attn", "action", "ffn"]),
           "(eval: x0 in float64, outside the model)": ("denoise_eval|cache_refresh",
                                                        ["patch_embed", "time_embed", "img_embed", r"block\d\d",
                                                         "head"])}
modules = analysis.label_breakdown(a, MODULES, iteration=3, outside=OUTSIDE)
print(f"{STEP_NAMES[3]}: {steady_k['dur'].sum() / 1e3:.1f} ms of kernels")
modules.round(2)

# %% [markdown]
# The same split for the first block, and per eval kind in the steady block (mean GPU ms per eval):

# %%
first_modules = analysis.label_breakdown(a, MODULES, iteration=1, outside=OUTSIDE)
contrast = pd.concat({"first block, GPU ms": first_modules["GPU ms"], "steady block, GPU ms": modules["GPU ms"]},
                     axis=1).rename_axis("module")
contrast["Δ ms"] = contrast["steady block, GPU ms"] - contrast["first block, GPU ms"]
contrast.round(2)

# %%
KIND_PARTS = ["self_attn", "cross_attn", "mouse", "keyboard", "ffn"]
kind_rows = {}
for kind in ("denoise_eval", "cache_refresh"):
    n = len(analysis.spans(a, name=kind, iteration=3))
    parts = analysis.label_breakdown(a, KIND_PARTS + [kind], iteration=3, within=kind)
    kind_rows[f"{kind} (×{n})"] = {**(parts.loc[KIND_PARTS, "GPU ms"] / n).to_dict(),
                                   "whole eval": parts.loc[kind, "GPU ms"] / n,
                                   "syncs (mean)": parts.loc[kind, "syncs"] / n}
pd.DataFrame(kind_rows).T.round(2)

# %% [markdown]
# ## Timelines
# One transformer block with an action module (`block03`, first eval of the steady block), with the spans of its
# modules shaded and named above the kernels and the `.item()` copies marked. White is GPU idle.

# %%
steady_first_eval = analysis.spans(a, name="denoise_eval", iteration=3).iloc[[0]]
b03 = analysis.spans(a, name="block03", within=steady_first_eval)
win = analysis.span_window(k, b03)
d2h = analysis.launched_in(k[k["name"].str.contains("DtoH")], b03)
module_spans = {n: analysis.span_window(k, analysis.spans(a, name=n, within=b03))
                for n in ("self_attn", "cross_attn", "mouse", "keyboard", "ffn")}
ax = plots.kernel_timeline(k, win, f"{WORKLOAD} baseline on an {DEVICE}: block03 of the steady block's first eval, "
                           f"{(win[1] - win[0]) / 1e3:.1f} ms on the GPU (traced)", spans=module_spans,
                           marks=d2h["start_us"], marks_label=f"its {len(d2h)} D2H copies (.item())")
plt.show()

# %% [markdown]
# One whole eval: the first eval of the first block against the first eval of the steady block (which also rolls
# the caches), on one time axis.

# %%
first_first_eval = analysis.spans(a, name="denoise_eval", iteration=1).iloc[[0]]
fig = plots.timelines([(k, analysis.span_window(k, first_first_eval), f"{STEP_NAMES[1]}, first eval (traced)"),
                       (k, analysis.span_window(k, steady_first_eval), f"{STEP_NAMES[3]}, first eval (traced)")],
                      title=f"{WORKLOAD} baseline on an {DEVICE}")
plt.show()

# %% [markdown]
# ## Frames per second: the reference claim, this run, the floor, the targets
# Matrix-Game-2's authors claim a real-time frame rate, VAE decode included, on a GPU they do not state (the rate
# is in `wanopt.targets.REFERENCE` and printed below): 12 frames per block at that rate is a per-block budget for
# the 4 evals and the decode. Our numbers are DiT only: 12 frames per steady block over its CUDA-event time, against the FLOP floor
# from the ceilings of the same run and against the target.

# %%
CLAIM_FPS = targets.REFERENCE["mg2_claimed_fps"]
TARGET_MS = targets.goal(WORKLOAD, "block_ms")
frames = m["video_frames_per_block"]
claim_ms = frames / CLAIM_FPS * 1e3
fps = pd.DataFrame({
    "ms per block": [claim_ms, first_ms, steady_ms, TARGET_MS, floor_ms],
    "FPS": [CLAIM_FPS, m["first_block"]["video_frames"] / first_ms * 1e3, m["dit_fps"], frames / TARGET_MS * 1e3,
            m["floor_fps"]],
}, index=pd.Index(["Matrix-Game-2 claim (with VAE decode)", "this run: first block (9 frames)",
                   "this run: steady block", "target (wanopt/targets.py)", "kernel floor (same run)"],
                  name="DiT-only"))
fps["× floor"] = fps["ms per block"] / floor_ms
print(f"DiT-only {m['dit_fps']:.1f} FPS uses {100 * steady_ms / claim_ms:.0f} % of the claim's per-block budget "
      f"({claim_ms:.0f} ms at {CLAIM_FPS:g} FPS)")
fps.round(1)

# %% [markdown]
# Every DiT-only Matrix-Game-2 target against this run (the baseline is its own fastest stage so far; end to end
# with the streaming VAE decode is the workload `mg2-universal-e2e`, notebook `mg2/e2e`):

# %%
targets.evaluate(WORKLOAD).drop(columns=["run", "device"])

# %% [markdown]
# Where the steady block's timed milliseconds go. The kernel time comes from the trace's steady block (kernel
# durations barely move under the profiler); the rest of the timed block is GPU idle. The GEMM and the self- and
# cross-attention kernels are split into their floor and the time above it.

# %%
small = ms_by_category.reindex(["norm/elementwise", "cast/copy", "memcpy H2D/D2H", "other"]).fillna(0.0)
action_attn_ms = attn_ms["mouse"] + attn_ms["keyboard"]
budget = pd.Series({
    "FLOP floor (manifest)": floor_ms,
    "GEMM + self/cross attention above the floor": gemm_ms + attn_ms["self_attn"] + attn_ms["cross_attn"] - floor_ms,
    "mouse + keyboard attention kernels": action_attn_ms,
    "norm/elementwise kernels": small["norm/elementwise"],
    "cast/copy kernels": small["cast/copy"],
    "memcpy + other kernels": small["memcpy H2D/D2H"] + small["other"],
    "GPU idle (launch gaps, syncs)": steady_ms - steady_k["dur"].sum() / 1e3,
}, name="ms")
colours = ["#333333", plots.COLORS["GEMM"], plots.COLORS["attention"], plots.COLORS["norm/elementwise"],
           plots.COLORS["cast/copy"], plots.COLORS["memcpy H2D/D2H"], "#CCCCCC"]
fig = plots.budget_bar(budget, colours, markers={"floor": floor_ms, "target": TARGET_MS,
                                                 f"{CLAIM_FPS:g} FPS claim (incl. VAE)": claim_ms},
                       title=f"{WORKLOAD} baseline, one steady block on an {DEVICE}: where the time goes",
                       xlabel="ms per steady block (12 video frames)", row_label="steady block\n(timed)",
                       xmax=max(claim_ms, steady_ms) * 1.02)
plt.show()

# %% [markdown]
# ## Verdict
# Computed from the tables above.

# %%
idle_ms = budget["GPU idle (launch gaps, syncs)"]
steady_row = per_step.loc[STEP_NAMES[3]]
print(f"Steady block: {steady_ms:.0f} ms timed = {m['dit_fps']:.1f} FPS DiT-only, ×{m['kernel_floor_ratio']:.1f} "
      f"the kernel floor ({floor_ms:.0f} ms, {m['floor_fps']:.0f} FPS); MFU {100 * m['mfu']:.0f} %. First block: "
      f"{first_ms:.0f} ms.")
print(f"Launches and syncs: {int(sizes.iloc[-1]['GPU events per block']):,} GPU events per block "
      f"(median {sizes.iloc[-1]['median µs']:.0f} µs; {per_eval['GPU events'].min():,}–"
      f"{per_eval['GPU events'].max():,} per eval) and {int(per_block.iloc[-1]['host syncs'])} host syncs per block: "
      f"{int(per_eval['host syncs'].max())} in the eval that rolls the caches, "
      f"{int(per_eval['host syncs'].min())} in each later eval, the model's .item() count.")
print(f"The GPU idles {steady_row['GPU idle %']:.0f} % of the traced block and an estimated "
      f"{steady_row['GPU idle % (timed, est.)']:.0f} % of the timed one; "
      f"{steady_row['idle that waits for a launch %']:.0f} % of the idle gaps wait for the next launch.")
print(f"The math: GEMMs at {math_tab.iloc[0]['% of ceiling']:.0f} % of their ceiling; self-attention at "
      f"{100 * self_tflops / used_ceiling:.0f} % of {used}'s ceiling and "
      f"{math_tab.loc['attention: self_attn', '% of ceiling']:.0f} % of {ceil['attention_backend']}'s; their time "
      f"above the floor is {budget.iloc[1]:.0f} ms ({100 * budget.iloc[1] / steady_ms:.1f} % of the block).")
print(f"Matrix-Game-2's {CLAIM_FPS:g} FPS claim allows {claim_ms:.0f} ms per block for DiT + VAE; the DiT alone "
      f"takes {100 * steady_ms / claim_ms:.0f} % of it here.")
print("\nWhat to attack first, by measured share of the timed steady block:")
ranked = pd.Series({
    "GPU idle behind the host: fewer launches (fusion, compile), static cache indices instead of .item(), then "
    "CUDA graphs": idle_ms,
    "small-op kernels: norms, elementwise, casts, copies (float64 RoPE, modulation, cache clones)": small.sum(),
    "mouse + keyboard attention: attention kernels for a few GFLOP": action_attn_ms,
    "GEMM + self/cross attention above the floor": budget.iloc[1],
}).sort_values(ascending=False)
for i, (what, ms) in enumerate(ranked.items(), 1):
    print(f"  {i}. {ms:5.0f} ms ({100 * ms / steady_ms:4.1f} %)  {what}")
print(f"The {TARGET_MS:g} ms target needs ×{steady_ms / TARGET_MS:.1f}. Removing all idle time alone would leave "
      f"{steady_ms - idle_ms:.0f} ms of kernels; the small-op and action-attention kernels add up to "
      f"{small.sum() + action_attn_ms:.0f} ms of it.")

# %% [markdown]
# The prediction holds where the lines above say so: the block is far above its FLOP floor, made of about
# 17,700 GPU events of a few microseconds each per block and hundreds of host syncs per eval (exactly the model's `.item()` reads), with a
# GPU that spends much of the block waiting for the host. The ranking above is the plan for the optimization
# stages: launches and syncs first, then the small-op kernels, then the action modules' attention.
