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
# # 19 · Text-to-video: from the official baseline to the fastest lossless Wan DiT, and the diffusers peer
#
# Every number here is read from the committed manifests under `traces/` (one capture run per workload on one
# H100; a speedup compares numbers of the same run). The stage notebooks 02–09 show each step at kernel level;
# this one puts them side by side, against diffusers' `WanTransformer3DModel` measured in the same runs with the
# same weights, and against the targets.

# %%
from wanopt.profiling.notebook import setup

setup()  # quiet libraries before they load: nbval compares stderr

import matplotlib.pyplot as plt
import pandas as pd

from wanopt.profiling import analysis, plots, report

WORKLOADS = ["t2v-1.3b-480p", "t2v-a14b-480p", "t2v-a14b-720p"]
tables = {w: analysis.stage_table(w) for w in WORKLOADS}
runs = {w: analysis.load_run(w) for w in WORKLOADS}
for w in WORKLOADS:
    m = analysis.load_manifest(w, "00_baseline")
    print(f"{w}: {analysis.provenance(m)}")

# %% [markdown]
# ## Baseline → final, per workload
# Stages in the order each workload applied them (A14B runs batched CFG after dtype hygiene, notebook 03). At 720p
# the run timed the baseline and the final stages 6–8; stages 1–5 were applied on the way, not timed.

# %%
for w in WORKLOADS:
    fig = plots.waterfall(tables[w]["step ms"], f"{w}: step time per stage (ms), H100, same run")
    plt.show()

# %% [markdown]
# ## Per stage: time, MFU, kernel-floor ratio, memory, error
# `error` is the manifest's: the relative L2 of one step's guided velocity `v_u + g·(v_c − v_u)` against the
# baseline's, at real size on the H100, from the same state; `tolerance` is the stage's (the largest of the stages
# applied so far, `wanopt.stages`). Every stage of every run is within it:

# %%
pd.concat(tables, names=["workload"])[["step ms", "vs baseline ×", "vs previous ×", "MFU", "floor ×", "peak GiB",
                                       "error", "compile s"]]

# %%
errors = report.velocity_errors()
print(f"{int(errors['ok'].sum())} of {len(errors)} captured stages within tolerance; largest error "
      f"{errors['velocity rel L2'].max():.3f} ({errors['velocity rel L2'].idxmax()})")

# %% [markdown]
# ## Against diffusers, in the same runs
# The peer is diffusers' `WanTransformer3DModel` sharing the expert's bf16 weights (with the modules diffusers
# keeps in fp32 in fp32), driven like diffusers' `WanPipeline`: two sequential CFG forwards and the same UniPC
# step; eager, and with `compile_repeated_blocks` (regional compile). Its default attention dispatch picks
# PyTorch's cuDNN kernel on this H100 (the 1.3B run also timed it with the cuDNN backend forced: the same time).
# These runs recorded the peer's error as the relative L2 of the *latents* after the step (not the velocity), so
# the column below compares that metric for both, ours from `error_vs_baseline.latents_relative_l2`. It is ~100×
# smaller than the velocity error early in sampling (Δσ ≈ 0.002 at this step).

# %%
rows = []
for w in ("t2v-1.3b-480p", "t2v-a14b-480p"):
    peers = {k: v for k, v in runs[w]["peers"].items() if isinstance(v, dict)}
    best_peer = min(peers, key=lambda k: peers[k]["timing"]["median"])
    t = tables[w]
    best_ours = t["step ms"].idxmin()
    floor = analysis.load_manifest(w, best_ours)["kernel_floor_ms"]
    for name, p in peers.items():
        rows.append({"workload": w, "step": f"diffusers · {name.removeprefix('diffusers_')}",
                     "step ms": p["timing"]["median"], "compile s": p["compile_s"],
                     "latents error vs our baseline": p["error_vs_baseline"]})
    ours = analysis.load_manifest(w, best_ours)["error_vs_baseline"]["latents_relative_l2"]
    rows.append({"workload": w, "step": f"wanopt · {best_ours} (fastest stage)", "step ms": t.loc[best_ours, "step ms"],
                 "compile s": t.loc[best_ours, "compile s"], "latents error vs our baseline": ours})
    rows.append({"workload": w, "step": "kernel floor (same run's ceilings)", "step ms": floor})
peer_table = pd.DataFrame(rows).set_index(["workload", "step"])
peer_table.round({"step ms": 1, "compile s": 1})

# %% [markdown]
# ## The targets
# Measured numbers of the capture runs against the targets (H100, lossless stages). A projected video is
# T5 + all steps at the stage's step time + VAE decode, from the same run (`manifest["projection"]`).

# %%
def best(w):
    t = tables[w]
    return t["step ms"].idxmin()


def m_of(w, stage):
    return analysis.load_manifest(w, stage)


def peer_best(w):
    peers = [v["timing"]["median"] for v in runs[w]["peers"].values() if isinstance(v, dict)]
    return min(peers)


rows = []
w = "t2v-1.3b-480p"
m = m_of(w, best(w))
rows.append({"workload": w, "target": "one DiT eval within 1.10× of the kernel floor", "goal": 1.10,
             "measured": m["kernel_floor_ratio"], "stage": best(w)})
rows.append({"workload": w, "target": "step ≥ 1.2× faster than the best diffusers peer", "goal": 1.2,
             "measured": peer_best(w) / m["timing"]["median"], "stage": best(w)})
w = "t2v-a14b-480p"
m = m_of(w, best(w))
rows.append({"workload": w, "target": "step ≥ 1.2× faster than the best diffusers peer", "goal": 1.2,
             "measured": peer_best(w) / m["timing"]["median"], "stage": best(w)})
rows.append({"workload": w, "target": "40-step video (T5 + DiT + VAE, no offload) ≤ 200 s", "goal": 200.0,
             "measured": m["projection"]["total_s"], "stage": best(w)})
w = "t2v-a14b-720p"
m = m_of(w, best(w))
rows.append({"workload": w, "target": "both experts resident, peak memory ≤ 76 GiB", "goal": 76.0,
             "measured": m["peak_memory_gib"], "stage": best(w)})
rows.append({"workload": w, "target": "40-step video ≤ 820 s", "goal": 820.0, "measured": m["projection"]["total_s"],
             "stage": best(w)})
targets = pd.DataFrame(rows)
lower_is_better = targets["target"].str.contains("≤|within")
targets["met"] = [(v <= g) if low else (v >= g) for v, g, low in zip(targets["measured"], targets["goal"],
                                                                     lower_is_better)]
targets["gap"] = [f"{(v / g - 1) * 100:+.0f} %" if low else f"{(g / v - 1) * 100:+.0f} % short"
                  for v, g, low in zip(targets["measured"], targets["goal"], lower_is_better)]
targets.set_index(["workload", "target"]).round(2)

# %% [markdown]
# ## Why the misses, read from the traces
# Every miss comes down to the same place. In the fastest stage, attention is most of the step, and it already
# runs the fastest kernel measured at that shape (cuDNN's, ~590 TFLOP/s); the rest of the step is within a few
# percent of its own floor. What the targets ask for is then arithmetic: the step at the kernel floor, and how
# fast attention would have to run to meet each one.

# %%
rows = []
for w in WORKLOADS:
    s = best(w)
    m = m_of(w, s)
    k = analysis.kernels(analysis.load_trace(w, s))
    cb = analysis.category_breakdown(analysis.in_window(k, analysis.window(analysis.load_trace(w, s), "denoise_step")))
    ceil = m["ceilings"]
    attn_flops = 2 * m["flops_per_eval"]["attention"]
    rest_floor_s = (m["flops_per_step"] - attn_flops) / (ceil["gemm_tflops"] * 1e12)
    row = {"workload": w, "stage": s, "step s": m["timing"]["median"] / 1e3, "floor s": m["kernel_floor_ms"] / 1e3,
           "attention share %": cb.loc["attention", "share %"],
           "attention TFLOP/s in the step": attn_flops / (cb.loc["attention", "ms"] / 1e3) / 1e12,
           "best attention ceiling TFLOP/s": ceil["attention_tflops"]}
    steps = m["projection"]["steps"]
    other_s = (m["projection"]["t5_ms"] + (m["projection"]["vae_ms"] or 0)) / 1e3
    if w == "t2v-a14b-480p":
        row["video at the floor s"] = steps * row["floor s"] + other_s
        budget_step = (200.0 - other_s) / steps
    elif w == "t2v-a14b-720p":
        row["video at the floor s"] = steps * row["floor s"] + other_s
        budget_step = (820.0 - other_s) / steps
    else:
        budget_step = peer_best(w) / 1.2 / 1e3
    # the attention rate that would meet the target if everything else ran at its floor
    row["attention TFLOP/s needed"] = attn_flops / max(budget_step - rest_floor_s, 1e-9) / 1e12
    rows.append(row)
misses = pd.DataFrame(rows).set_index("workload")
for w, r in misses.iterrows():
    print(f"{w}: attention would have to run at {r['attention TFLOP/s needed']:.0f} TFLOP/s, "
          f"{r['attention TFLOP/s needed'] / r['attention TFLOP/s in the step']:.2f}x its rate in the step "
          f"({r['attention TFLOP/s in the step']:.0f}) and {r['attention TFLOP/s needed'] / r['best attention ceiling TFLOP/s']:.2f}x "
          f"the best ceiling measured at that shape")
misses.round(2)

# %% [markdown]
# Reading the table:
# - **Against diffusers.** diffusers' regional compile already runs the same cuDNN attention kernel on the same
#   GEMMs, and both sit close to the kernel floor: no lossless rewrite of the rest of the step can open a 1.2× gap
#   when attention, the common part, is most of the step. Our fastest stage and diffusers' regional compile are at
#   parity. The 1.2× targets need attention ~10 % faster than the best kernel these runs measured (printed
#   above). FlashAttention-4, timed on its own after these runs, is 1.15–1.20× faster than cuDNN at these shapes
#   (notebook 06, `traces/logs/fa4_bench.txt`); notebook 06 estimates 1.09–1.14× per step from it. Against
#   diffusers on its default cuDNN path that is still short of 1.2×, and diffusers' attention dispatcher can use
#   FlashAttention kernels as well. wanopt picks FA4 by measurement in the next capture; these runs predate it.
# - **The A14B 480p video.** Even at the kernel floor the projection stays above 200 s (`video at the floor s`);
#   the attention rate it would take is printed above.
# - **720p.** Both experts fit (peak below 76 GiB). The video projection misses 820 s for the same reason as 480p.
# - **Where wanopt is ahead of the baseline** (1.7–1.8× per step, more per video without the offload copies), the
#   stage notebooks say which stage bought what.
