"""diffusers' WanTransformer3DModel as a peer, timed in the same run as wanopt's stages, on the same weights.

One denoising step with diffusers' model as the transformer (two sequential CFG evals, as diffusers' WanPipeline
runs them), eager and regional-compiled (`compile_repeated_blocks`), from the same state as the T2V runner's
timed step.
"""

from __future__ import annotations

import gc
import statistics

import torch

from ..measure import compile_seconds, cuda_time_ms, rel_l2, repeats_for, summarize, time_once_ms
from ..pipelines.t2v import pad_text


def diffusers_twin(model, keep_fp32_modules: bool = True):
    """diffusers' WanTransformer3DModel sharing `model`'s weights (no copy). With keep_fp32_modules the modules
    diffusers keeps in fp32 (`_keep_in_fp32_modules`) are cast to fp32, as `from_pretrained(torch_dtype=bf16)` gives
    a user; without, every weight keeps the model's dtype (the fp32 parity tests)."""
    from diffusers import WanTransformer3DModel

    from ..weights import wan_state_dict_to_diffusers

    c = model.config
    with torch.device("meta"):
        twin = WanTransformer3DModel(patch_size=c.patch_size, num_attention_heads=c.num_heads,
                                     attention_head_dim=c.head_dim, in_channels=c.in_dim, out_channels=c.out_dim,
                                     text_dim=c.text_dim, freq_dim=c.freq_dim, ffn_dim=c.ffn_dim,
                                     num_layers=c.num_layers, cross_attn_norm=c.cross_attn_norm, eps=c.eps)
    keep = WanTransformer3DModel._keep_in_fp32_modules if keep_fp32_modules else ()
    state = {}
    for k, v in wan_state_dict_to_diffusers(model.state_dict()).items():
        state[k] = v.float() if any(part in k.split(".") or k.startswith(part) for part in keep) else v
    twin.load_state_dict(state, strict=True, assign=True)
    twin.rope = type(twin.rope)(c.head_dim, c.patch_size, 1024).to(next(model.parameters()).device)
    return twin.eval().requires_grad_(False)


def capture_peers(runner, summary: dict, compare_cudnn: bool | None = None) -> dict:
    """Time diffusers' model on the runner's timed step (eager, regional compile, and with cuDNN attention at
    1.3B width), then put the pipeline back as the baseline expects it (experts offloaded)."""
    pipe, config = runner.pipe, runner.config
    if compare_cudnn is None:
        compare_cudnn = config.dit.dim < 4096
    name = "high_noise" if config.num_experts == 2 else "model"
    peer = {"model": diffusers_twin(pipe.prepare_expert(name))}  # dropped before the memory is freed
    ctx = pad_text([runner.context], config.dit.text_len)  # diffusers' pipeline pads to 512 as well
    ctx_null = pad_text([runner.context_null], config.dit.text_len)
    results = {}

    def twin_step(state):
        t = state.timesteps[state.step_index]
        g = pipe.guide_scale_for(t)
        x = state.latents
        xb = x.to(torch.bfloat16)  # WanPipeline feeds the transformer its own dtype
        v_c = peer["model"](xb, t.reshape(1), ctx, return_dict=False)[0]
        v_u = peer["model"](xb, t.reshape(1), ctx_null, return_dict=False)[0]
        state.velocity = v_u + g * (v_c - v_u)
        state.latents = state.scheduler.step(state.velocity, t, x, return_dict=False)[0]
        state.step_index += 1

    def measure(label, compiled: bool):
        box = {}

        def setup():
            box["s"] = runner.state_at(runner.normal_index)

        setup()
        warm = time_once_ms(lambda: twin_step(box["s"]))
        first = cuda_time_ms(lambda: twin_step(box["s"]), setup=setup, repeats=1)[0]
        times = [first] + cuda_time_ms(lambda: twin_step(box["s"]), setup=setup, repeats=repeats_for(first) - 1)
        setup()
        twin_step(box["s"])
        ours = runner.state_at(runner.normal_index)
        pipe.denoise_step(ours)
        results[label] = {"timing": summarize(times), "warmup_ms": warm,
                          "compile_s": compile_seconds(warm, statistics.median(times)) if compiled else 0.0,
                          "error_vs_baseline": rel_l2(box["s"].latents, ours.latents),  # latents after the step
                          "velocity_error_vs_baseline": rel_l2(box["s"].velocity, ours.velocity)}
        print(f"  peer {label}: {statistics.median(times):.1f} ms/step", flush=True)

    with torch.no_grad():
        measure("diffusers_eager", compiled=False)
        peer["model"].compile_repeated_blocks(fullgraph=True)
        measure("diffusers_regional_compile", compiled=True)
        if compare_cudnn:
            torch._dynamo.reset()
            peer["model"].set_attention_backend("_native_cudnn")
            measure("diffusers_regional_compile_cudnn", compiled=True)
    results["note"] = (f"diffusers {summary['env'].get('diffusers')}, default attention backend (native SDPA "
                       "dispatch) unless the label says cudnn; the twin shares the expert's bf16 weights and keeps "
                       "diffusers' fp32 modules in fp32")
    peer.clear()
    for m in pipe.experts.values():
        m.to("cpu")
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    torch._dynamo.reset()
    summary["peers"] = results
    return results
