"""Capture for Matrix-Game-2 (`mg2-*` workloads): the block-autoregressive causal DiT, DiT only.

One "step" is one block: 3 denoising evals + 1 cache-refresh eval (4 + 1 for templerun). Measured in one run:
  - the first block of a video (an empty cache: 2,640 keys; the cross-attention K/V computed here), from a fresh
    video each repeat;
  - a steady-state block (the cache full: 5,280 keys, the oldest block evicted by the rolling copy), consecutive
    blocks of one video;
  - one DiT eval in the steady state (the same block position again: upstream overwrites the same cache slots);
  - one trace: a warm-up block, then block 0, block 1 and block 2 of a fresh video (ProfilerStep #1..#3).
"""

from __future__ import annotations

import datetime
import statistics
import time
from pathlib import Path

import torch

from ..configs import get_mg2_config
from .capture import TRACE_NAME, _write_manifest, _write_summary, measure_ceilings, profile_steps
from .flops import causal_eval_flops, kernel_floor_s
from .timing import cuda_time_ms, environment, gib, sha256, summarize


def capture_mg2(wl, stages, out, checkpoint, seed, profile, allow_cpu, progress) -> dict:
    from ..pipelines.causal import CausalPipeline

    if stages not in ("all", None, "00_baseline", ["00_baseline"]):
        raise KeyError(f"{wl.name} has only the 00_baseline stage so far (got {stages!r})")
    c = get_mg2_config(wl.config)
    out = Path(out)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    env = environment()
    run_id = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    f, s = c.num_frame_per_block, c.frame_seq_length
    window_frames = c.local_attn_size
    steady_key_frames = window_frames if window_frames > 0 else 3 * f
    summary = {"workload": wl.name, "run_id": run_id, "config": c.name, "env": env, "stages": {}}

    summary["ceilings"] = ceil = measure_ceilings(wl.name, c.num_heads, f * s, steady_key_frames * s, c.head_dim)

    t0 = time.perf_counter()
    pipe = CausalPipeline(c, device=device, seed=seed, checkpoint=checkpoint)
    summary["build_s"] = time.perf_counter() - t0
    evals_per_block = len(pipe.timesteps) + 1
    n_steady = 10

    # warm-up: one throwaway video of three blocks (allocator, cuDNN/cuBLAS heuristics, lazily built tables)
    for _ in pipe.stream(3, seed=seed):
        pass

    # the first block, each repeat from a fresh video
    box = {}

    def fresh():
        box["state"] = pipe.start(n_steady + 3, seed=seed)

    first = cuda_time_ms(lambda: box.update(x0=pipe.next_block(box["state"])), setup=fresh, repeats=10)
    first_out = box["x0"].float().clone()

    # steady state: blocks 2.. of one video (each a full cache and an eviction)
    fresh()
    for _ in range(2):
        pipe.next_block(box["state"])
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    steady = cuda_time_ms(lambda: pipe.next_block(box["state"]), repeats=n_steady)
    peak = gib(torch.cuda.max_memory_allocated()) if device == "cuda" else None

    # one DiT eval in the steady state, at the block just made (the same slots are overwritten each time)
    state = box["state"]
    start_frame = (state.block - 1) * f
    cond = pipe.block_conditions(state, start_frame)
    xt = state.noise[:, :, start_frame:start_frame + f]
    t = torch.ones([1, f], device=device, dtype=torch.int64) * pipe.timesteps[0]
    evals = cuda_time_ms(lambda: pipe.dit(xt, t, cond, start_frame), repeats=10)

    block_ms = statistics.median(steady)
    eval_flops = causal_eval_flops(c, f, steady_key_frames)
    first_flops = causal_eval_flops(c, f, f)
    first_eval_extra = causal_eval_flops(c, f, f, cross_kv_cached=False)["total"] - first_flops["total"]
    block_flops = evals_per_block * eval_flops["total"]
    attn_tflops = ceil["attention"][ceil["attention_backend"]]
    floor_s = evals_per_block * kernel_floor_s(eval_flops, ceil["gemm_tflops"], attn_tflops)
    frames = 4 * f  # video frames per steady block (the first block gives 1 + 4·(f − 1))
    m = {
        "workload": wl.name, "stage": "00_baseline", "run_id": run_id,
        "title": "upstream numerics: bf16, float64 RoPE, GPU end indices read back with .item(), no compile",
        "stages_applied": ["00_baseline"], "device": env.get("device", "cpu"),
        "versions": {k: env.get(k) for k in ("torch", "cuda", "cudnn", "driver", "triton", "python", "git_commit")},
        "date": env["date"],
        "step": f"one steady-state block: {evals_per_block - 1} denoising evals + 1 cache-refresh eval "
                f"({f * s} query tokens, {steady_key_frames * s} keys), DiT only (no VAE decode)",
        "timing": summarize(steady),
        "first_block": {"timing": summarize(first), "keys": f * s,
                        "flops": evals_per_block * first_flops["total"] + first_eval_extra,  # + CLIP K/V once
                        "video_frames": 1 + 4 * (f - 1)},
        "eval": {"timing": summarize(evals), "flops": eval_flops},
        "evals_per_block": evals_per_block,
        "compile_s": 0.0,
        "peak_memory_gib": peak,
        "cache_gib": gib(pipe.cache.nbytes()),
        "flops_per_step": block_flops,
        "ceilings": {"gemm_tflops": ceil["gemm_tflops"], "attention_tflops": attn_tflops,
                     "attention_backend": ceil["attention_backend"], "attention_all": ceil["attention"]},
        "attention_backend_used": "flash",
        "mfu": block_flops / (block_ms / 1e3 * ceil["gemm_tflops"] * 1e12),
        "kernel_floor_ms": floor_s * 1e3, "kernel_floor_ratio": (block_ms / 1e3) / floor_s,
        "dit_fps": frames / (block_ms / 1e3), "video_frames_per_block": frames,
        "floor_fps": frames / floor_s,
        "error_vs_baseline": {"metric": "relative L2 of the first block's x0 vs 00_baseline", "value": 0.0,
                              "tolerance": 0.0, "ok": True},
        "speedup_vs_baseline": None, "speedup_vs_previous": None,
        "output_checksum": {"first_block_x0_mean": float(first_out.mean()), "std": float(first_out.std())},
    }
    folder = out / wl.name / "00_baseline"
    if profile:
        def step(i):
            if i == 0:  # warm-up (discarded by the profiler): a throwaway block, then a fresh video
                fresh()
                pipe.next_block(box["state"])
                fresh()
            else:
                pipe.next_block(box["state"])

        trace = profile_steps(step, 3, folder / TRACE_NAME, "00_baseline")
        m["trace"] = {"file": TRACE_NAME, "sha256": sha256(trace), "bytes": trace.stat().st_size,
                      "profiled_steps": [{"iteration": i + 1, "block": i,
                                          "what": ["first block (empty cache)", "second block (cache filling)",
                                                   "steady-state block (cache full, eviction)"][i]}
                                         for i in range(3)],
                      "note": "ProfilerStep#k = block k-1 of a fresh video; a warm-up block precedes them"}
    _write_manifest(folder, m)
    summary["stages"]["00_baseline"] = {k: m[k] for k in ("timing", "first_block", "eval", "peak_memory_gib", "mfu",
                                                           "kernel_floor_ratio", "dit_fps")}
    _write_summary(out / wl.name, summary)
    print(f"\n== {wl.name} (run {run_id}, {m['device']}) ==")
    print(f"first block {statistics.median(first):.1f} ms, steady block {block_ms:.1f} ms "
          f"(floor {floor_s * 1e3:.1f} ms, ×{m['kernel_floor_ratio']:.1f}), eval {statistics.median(evals):.1f} ms, "
          f"DiT-only {m['dit_fps']:.1f} FPS, peak {peak} GiB", flush=True)
    return summary
