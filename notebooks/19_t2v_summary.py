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

# Which attention kernel each run's `05_attention` picked, by measurement at its shapes (printed below with the
# provenance): all three runs had FlashAttention-4 installed and picked it. Stage 6 of the 1.3B and 720p runs also
# measured the FFN's GELU in the GEMM epilogue against a separate GELU kernel at the workload's shape and used it
# where it was faster (1.3B: yes; 720p: no, notebook 07); the A14B-480p run is older and its stage 6 has no
# epilogue option (at A14B width the epilogue measured slower at 720p, so it would likely not have been picked).

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
    print(f"    attention kernel from 05_attention on: {analysis.load_manifest(w, '08_cuda_graphs')['attention_backend_used']}")

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
# PyTorch's cuDNN kernel on this H100 (the 1.3B run also timed it with the cuDNN backend forced: the same time);
# ours runs FlashAttention-4. Errors are against our baseline from the same state: the guided
# velocity's relative L2 (the metric of the stage tables) and the latents' after the step, which is ~100× smaller
# early in sampling (Δσ ≈ 0.002 at this step).

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
                     "velocity error": p["velocity_error_vs_baseline"], "latents error": p["error_vs_baseline"]})
    ours = analysis.load_manifest(w, best_ours)["error_vs_baseline"]
    rows.append({"workload": w, "step": f"wanopt · {best_ours} (fastest stage)", "step ms": t.loc[best_ours, "step ms"],
                 "compile s": t.loc[best_ours, "compile s"], "velocity error": ours["value"],
                 "latents error": ours["latents_relative_l2"]})
    rows.append({"workload": w, "step": "kernel floor (same run's ceilings)", "step ms": floor})
    # what the kernel choice alone is worth: our step's attention kernels (trace) against the same FLOPs at the
    # cuDNN ceiling of the same run (what the peer's default dispatch runs, if it ran at the ceiling)
    m, trace = analysis.load_manifest(w, best_ours), analysis.load_trace(w, best_ours)
    cb = analysis.category_breakdown(analysis.in_window(analysis.kernels(trace), analysis.window(trace, "denoise_step")))
    ours_ms = cb.loc["attention", "ms"]
    cudnn_ms = 2 * m["flops_per_eval"]["attention"] / runs[w]["ceilings"]["attention"]["cudnn"] / 1e9
    print(f"{w}: our attention kernels ({m['attention_backend_used']}) {ours_ms:.0f} ms per step, the same FLOPs at "
          f"the cuDNN ceiling {cudnn_ms:.0f} ms: {cudnn_ms - ours_ms:+.0f} ms; best peer minus ours: "
          f"{peers[best_peer]['timing']['median'] - t.loc[best_ours, 'step ms']:+.0f} ms")
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
# The kernel floor splits a step in two: attention (its FLOPs at the fastest attention kernel measured at that
# shape) and the rest (its FLOPs at the bf16 GEMM ceiling). Below, the fastest stage's trace puts each part's
# measured time next to its floor; then the arithmetic of each target: how fast attention would have to run if the
# rest ran at its floor.

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
    attn_s = cb.loc["attention", "ms"] / 1e3
    row = {"workload": w, "stage": s, "kernel": m["attention_backend_used"], "step s": m["timing"]["median"] / 1e3,
           "floor s": m["kernel_floor_ms"] / 1e3, "attention share %": cb.loc["attention", "share %"],
           "attention TFLOP/s in the step": attn_flops / attn_s / 1e12,
           "best attention ceiling TFLOP/s": ceil["attention_tflops"],
           "rest s": m["timing"]["median"] / 1e3 - attn_s, "rest floor s": rest_floor_s,
           "non-GEMM kernels s": sum(cb.loc[c, "ms"] for c in ("norm/elementwise", "cast/copy") if c in cb.index) / 1e3}
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
# - **Attention is not where the misses are.** In every run FlashAttention-4 runs in the step at or near
#   its isolated rate (`attention TFLOP/s in the step` against `best attention ceiling`), and the rate each target
#   would need if the rest of the step ran at its floor is *below* it (the printed lines above). What the targets
#   miss by is the rest of the step: `rest s` (step time minus the attention kernels) against `rest floor s` (its
#   FLOPs at the bf16 GEMM ceiling of an 8192³ matmul). Part of that is the norm/elementwise and cast/copy kernels,
#   which the floor counts as free (`non-GEMM kernels s`); the remainder is the model's GEMMs running below that
#   ceiling at their own shapes, and idle time.
# - **Against diffusers.** 1.14× (1.3B) and 1.09× (A14B) faster than diffusers' best peer, short of 1.2× by 5 %
#   and 10 % (targets table). Ours runs FA4 where diffusers' default dispatch runs cuDNN. The lines printed
#   above the peer table put that kernel choice, estimated from the same run's ceilings (not a profile of the
#   peer), next to the measured gap: at 1.3B it is about three quarters of the gap (100 of 130 ms), so our rest
#   of the step is only ~30 ms faster than diffusers'; at A14B the kernel is worth more than the whole gap, so
#   there diffusers' rest of the step is the faster one, by the difference if its cuDNN runs at the ceiling. diffusers' attention dispatcher can use
#   FlashAttention kernels too; the peer here is diffusers as it runs by default.
# - **1.3B against its floor.** ×1.12, 2 % over 1.10: 918 ms against an 821 ms floor. Attention runs at its
#   ceiling here (667 against 668 TFLOP/s), so all ~97 ms over the floor are the rest of the step: 0.32 s
#   against its 0.22 s floor, of which ~0.06 s are norm/elementwise and cast/copy kernels that the floor counts as
#   free. The earlier cuDNN run (git history) met ×1.10 at ×1.09: with the faster kernel the floor fell by more
#   than the step did.
# - **The A14B 480p video.** 210 s projected, 5 % over 200 s; at the kernel floor it would be 189 s
#   (`video at the floor s`), so the same rest-of-step overhead is what separates it from the target.
# - **720p: both targets met.** Both experts stay resident at 64.1 GiB peak (≤ 76 GiB) and the video projects to
#   810 s (≤ 820 s; the official table gives 1041.5 s), with FA4 at 673 TFLOP/s in the step. The margin is 1 %,
#   inside the run-to-run spread of a few % between H100 machines (`traces/README.md`): another machine could
#   land just above 820 s. At the kernel floor the video would be 748 s.
# - **Where wanopt is ahead of the baseline** (about 2× per step at every workload, more per video without the
#   offload copies), the stage notebooks say which stage bought what.
