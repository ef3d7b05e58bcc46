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
# # 00 · A tour of wanopt
#
# **wanopt** is a workbook for the weeks you spend making Wan-family video DiTs fast on one GPU. Three layers:
#
# 1. `wanopt.models`, `wanopt.pipelines`: the official numerics of Wan 2.1/2.2 text-to-video and of the Matrix-Game-2
#    causal model, overheads included (what your copy of the official code costs), loadable from real checkpoints,
#    random weights at real scale when none are given.
# 2. `wanopt.stages`: each optimization as one function, applied cumulatively from the official baseline.
# 3. `traces/`: GPU traces and manifests from `python -m wanopt capture`, committed (`traces/README.md` names the
#    GPU of each run). The notebooks read them, so they re-execute on any CPU.
#
# This notebook runs the real code paths at a tiny size on the CPU: the model, one denoising step of the A14B
# pipeline (two experts, classifier-free guidance, UniPC), and the list of optimizations.

# %%
from wanopt.profiling.notebook import setup

setup()  # quiet libraries before they load: nbval compares stderr

import torch

from wanopt.configs import get_config, latent_shape, num_tokens
from wanopt.pipelines.schedulers import timesteps_for
from wanopt.pipelines.t2v import WanT2V
from wanopt.stages import MG2_STAGES, T2V_STAGES, stage_order

_ = torch.manual_seed(0)

# %% [markdown]
# ## The model configs
# The named configs follow upstream's field names. `tiny` has every code path of Wan2.2-T2V-A14B (two experts, the
# per-token timestep embedding, the switch at t ≥ 875) at a size that runs in seconds.

# %%
import pandas as pd

rows = []
for name in ("wan2.1-t2v-1.3b", "wan2.1-t2v-14b", "wan2.2-t2v-a14b", "tiny"):
    c = get_config(name)
    rows.append({"config": name, "dim": c.dit.dim, "ffn_dim": c.dit.ffn_dim, "heads": c.dit.num_heads,
                 "layers": c.dit.num_layers, "wan": c.dit.wan_version, "experts": c.num_experts,
                 "steps": c.sample_steps, "shift": c.sample_shift, "guide (low, high)": c.guide_scale})
pd.DataFrame(rows).set_index("config")

# %% [markdown]
# Tokens per DiT eval for the three T2V workloads of this workbook (81 frames, VAE stride 4×8×8, patch 1×2×2):

# %%
a14b = get_config("wan2.2-t2v-a14b")
for size in ((832, 480), (1280, 720)):
    print(f"{size[0]}x{size[1]}: latent {latent_shape(a14b, size, 81)}, {num_tokens(a14b, size, 81):,} tokens")

# %% [markdown]
# ## The A14B sampler: 40 UniPC steps at shift 12, and where the experts switch
# Timesteps are truncated to int64 as upstream does; the high-noise expert takes t ≥ 875 with guidance 4.0, the
# low-noise one the rest with 3.0.

# %%
ts = timesteps_for("unipc", 40, 12.0)
print(" ".join(str(t) for t in ts))
print(f"high-noise steps: {sum(t >= 875 for t in ts)}, low-noise steps: {sum(t < 875 for t in ts)}")

# %% [markdown]
# ## One denoising step of the tiny pipeline
# Random weights, a byte-level stand-in tokenizer (no tokenizer files are needed for random weights), the official
# order of operations: T5 encodes prompt and negative prompt, then per step the expert is chosen, two DiT forwards
# (cond, uncond) are mixed `v_u + g·(v_c − v_u)`, and UniPC steps the latents.

# %%
pipe = WanT2V("tiny", device="cpu", seed=0)
context, context_null = pipe.encode_prompt("a red fox running through fresh snow, morning light")
state = pipe.prepare(context, context_null, sampling_steps=40, seed=0)
print("context:", tuple(context.shape), "negative context:", tuple(context_null.shape))
print("latents:", tuple(state.latents.shape), state.latents.dtype)
for _ in range(2):
    t = int(state.timesteps[state.step_index])
    pipe.denoise_step(state)
    print(f"step {state.step_index - 1}: t = {t}, expert = {state.expert_log[-1]}, "
          f"guidance = {pipe.guide_scale_for(torch.tensor(t))}, velocity {tuple(state.velocity.shape)}")

# %% [markdown]
# The DiT on its own: `model(x, t, context)` takes a latent video `[B, C, F, H, W]`, timesteps `[B]` and text
# embeddings `[B, ≤512, 4096]` (4096 → 64 at the tiny size), and returns the flow velocity in float32.

# %%
model = pipe.experts["high_noise"]
x = torch.randn(1, 16, 3, 8, 12)
v = model(x, torch.tensor([999]), context)
print(type(model).__name__, "params:", sum(p.numel() for p in model.parameters()), "->", tuple(v.shape), v.dtype)

# %% [markdown]
# Bad input says what is wrong and what to do:

# %%
try:
    model(x[0], torch.tensor([999]), context)
except ValueError as err:
    print(err)

# %% [markdown]
# ## The optimizations, in order
# Every stage is one function that takes the pipeline and returns it; stage *k* has stages 1..*k* applied. A stage
# that picks among options by measurement (the attention kernel, the GELU epilogue) does so in its `choose`. Each
# stage has a notebook named after it, `notebooks/<family>/<stage>.ipynb`, and its traces are
# `traces/<workload>/<stage>/`. The tolerance is on the relative L2 of one step's guided velocity against the
# baseline's; a stage is held to the largest tolerance of the stages applied up to it.

# %%
pd.DataFrame([{"stage": s.name, "what": s.title, "math": "exact" if s.exact else "numeric",
               "tolerance": s.tolerance, "chooses by measurement": s.choose is not None,
               "notebook": f"t2v/{s.name}"} for s in T2V_STAGES]).set_index("stage")

# %% [markdown]
# The A14B workloads apply batched CFG after dtype hygiene (`t2v/02_batched_cfg` shows why):

# %%
print("t2v-1.3b-480p:", " → ".join(s.name for s in stage_order("t2v-1.3b-480p")))
print("t2v-a14b-480p:", " → ".join(s.name for s in stage_order("t2v-a14b-480p")))

# %% [markdown]
# Matrix-Game-2's stages, from upstream's block loop to one CUDA graph per block (and the cache refresh folded into
# the next block's first eval):

# %%
pd.DataFrame([{"stage": s.name, "what": s.title, "notebook": f"mg2/{s.name}"} for s in MG2_STAGES]).set_index("stage")

# %% [markdown]
# ## Where to go next
# - `t2v/00_baseline`: where the time of one official denoising step goes on the GPU, at kernel level.
# - `t2v/01_no_offload` … `t2v/08_cuda_graphs`: one optimization each, named after its stage, with its trace
#   against the previous stage's.
# - `t2v/summary`: baseline to final for every workload, against the diffusers peer and the targets
#   (`wanopt/targets.py`).
# - `mg2/00_baseline`: the Matrix-Game-2 causal model, block by block; `mg2/01_host_cache_indices` …
#   `mg2/08_fold_refresh`: its stages; `mg2/summary`: baseline to final against the targets.
#
# Real checkpoints: `WanT2V("wan2.2-t2v-a14b", checkpoint_dir="/path/to/Wan2.2-T2V-A14B")` (official layout) or a
# diffusers repo folder; see the README.
