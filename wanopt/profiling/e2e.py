"""Matrix-Game-2 end to end (notebook mg2/e2e): each block with its streaming VAE decode, from the manifests of an
end-to-end capture (`mg2-universal-e2e`), and the decode stages checked live on the tiny model."""

from __future__ import annotations

import warnings

import matplotlib.pyplot as plt
import pandas as pd
import torch

from ..measure import rel_l2
from . import analysis
from .plots import DPI, WIDTH

E2E = "mg2-universal-e2e"


def e2e_numbers(workload: str = E2E, root=None) -> pd.DataFrame:
    """Per captured stage: the steady block end to end, the DiT alone and the decode alone on a steady block of the
    same stage (medians, ms), frames per second as upstream counts them, against upstream's claimed 25 and against
    the floor of DiT + decode, the first block (its decode included), and the errors (x0; decoded frames against the
    reference decode of the run) with their tolerances."""
    rows = {}
    for stage in analysis.stage_table(workload, root=root).index:
        m = analysis.load_manifest(workload, stage, root)
        e2e, err = m["e2e"], m["error_vs_baseline"]
        decode = err.get("parts", {}).get("decode", {})
        floor_ms = e2e["dit_floor_ms"] + e2e["decode_floor_ms"]
        rows[stage] = {"block ms": m["timing"]["median"], "DiT alone ms": e2e["dit_block"]["median"],
                       "decode alone ms": e2e["decode_block"]["median"], "frames/s": e2e["fps"],
                       "× upstream's 25": e2e["vs_upstream_claim"], "floor ms": floor_ms,
                       "× floor": m["timing"]["median"] / floor_ms,
                       "first block ms": m["first_block"]["timing"]["median"], "x0 error": err["value"],
                       "decode error": decode.get("value"), "decode tolerance": decode.get("tolerance")}
    return pd.DataFrame(rows).T.round({"block ms": 1, "DiT alone ms": 1, "decode alone ms": 1, "frames/s": 1,
                                       "× upstream's 25": 2, "floor ms": 1, "× floor": 2, "first block ms": 1})


def e2e_cold_starts(workload: str = E2E, root=None) -> pd.DataFrame:
    """Process start to block 0's frames out, and to block 1's (the decode stages compile and capture on a video's
    first steady block), in a fresh process with empty compile caches; seconds."""
    rows = {}
    for stage in analysis.stage_table(workload, root=root).index:
        cold = analysis.load_manifest(workload, stage, root).get("cold_start")
        if cold and "error" not in cold:
            rows[stage] = {"process → block 0 frames s": cold["process_to_first_block_s"],
                           "build s": cold["build_s"], "apply stages s": cold["apply_s"],
                           "block 0 s": cold["first_block_s"], "then block 1 s": cold.get("second_block_s")}
    return pd.DataFrame(rows).T.round(1)


def e2e_breakdown_figure(workload: str = E2E, root=None):
    """One bar per stage: the steady block end to end, beside the DiT alone and the decode alone of the same stage
    stacked (their sum is the block without overlap), and upstream's 25 frames/s as a block time."""
    df = e2e_numbers(workload, root)
    fig, ax = plt.subplots(figsize=(WIDTH, 3.6), dpi=DPI, layout="constrained")
    y = range(len(df))
    ax.barh([i + 0.2 for i in y], df["DiT alone ms"], height=0.38, color="#4C72B0", label="DiT alone")
    ax.barh([i + 0.2 for i in y], df["decode alone ms"], left=df["DiT alone ms"], height=0.38, color="#55A868",
            label="decode alone")
    ax.barh([i - 0.2 for i in y], df["block ms"], height=0.38, color="#222222", label="block, end to end")
    for i, (ms, fps) in enumerate(zip(df["block ms"], df["frames/s"])):
        ax.text(ms + 4, i - 0.2, f"{ms:.0f} ms · {fps:.0f} frames/s", va="center", fontsize=8)
    frames = analysis.load_manifest(workload, df.index[0], root)["video_frames_per_block"]
    ax.axvline(frames / 25 * 1e3, color="#C44E52", linestyle="--", linewidth=1, label="upstream's claimed 25 frames/s")
    ax.set_yticks(list(y), df.index)
    ax.invert_yaxis()
    ax.set_xlabel("ms per steady block (12 video frames)")
    fig.legend(loc="outside lower center", ncol=4, fontsize=8, frameon=False)
    return fig


def stream_busy(stage: str, workload: str = E2E, root=None) -> pd.DataFrame:
    """Per profiled block (1: block 0, 2: block 1, 3: the steady block) and CUDA stream: kernels, GPU busy time
    (the sum of kernel durations, ms) and the first and last kernel's start and end from the block's first kernel
    (ms). With the decode overlapped, block 3 has two streams: the DiT's graph and the previous block's decode."""
    k = analysis.kernels(analysis.load_trace(workload, stage, root)).query("iteration > 0")
    rows = []
    for (it, stream), g in k.groupby(["iteration", "stream"]):
        t0 = k.loc[k["iteration"] == it, "start_us"].min()
        rows.append({"profiled block": it, "stream": stream, "kernels": len(g), "busy ms": g["dur"].sum() / 1e3,
                     "first start ms": (g["start_us"].min() - t0) / 1e3, "last end ms": (g["end_us"].max() - t0) / 1e3})
    return pd.DataFrame(rows).set_index(["profiled block", "stream"]).round(1)


def stream_timeline(stage: str, block: int = 3, workload: str = E2E, root=None):
    """One profiled block of a stage, one row per CUDA stream (plots.kernel_timeline)."""
    from . import plots

    k = analysis.kernels(analysis.load_trace(workload, stage, root)).query("iteration == @block")
    window = (k["start_us"].min(), k["end_us"].max())
    return plots.kernel_timeline(k, window, title=f"{workload} · {stage}: profiled block {block}, one row per stream")


def tiny_decode_errors(blocks: int = 4, seed: int = 0) -> pd.DataFrame:
    """Live, on the CPU: the tiny VAE in fp32 decoding a fixed latent video block by block through the pipeline's
    decode path, the decode stages applied one by one; the relative L2 of the frames against the reference streamed
    decode and against one whole-sequence `vae.decode` (the cache carried correctly), with the tolerance."""
    from ..pipelines.causal import CausalPipeline
    from ..stages import MG2_DECODE_STAGES, apply_stage
    from ..vae import StreamingDecoder, build_vae

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = CausalPipeline("mg2-tiny", device="cpu", dtype=torch.float32, seed=seed)
        vae = build_vae("tiny", seed=seed + 1)
    pipe.attach_decoder(StreamingDecoder(vae))
    z = torch.randn(1, vae.config.z_dim, 3 * blocks, *pipe.config.latent_hw,
                    generator=torch.Generator().manual_seed(seed + 5))
    with torch.no_grad():
        whole = vae.decode(pipe.decoder.unscale(z), return_dict=False)[0]
    parts = list(z.split(3, dim=2))
    reference = pipe.decode_latents(parts)
    rows = [{"after stage": "reference (streamed)", "vs reference": 0.0, "vs whole-sequence decode":
             rel_l2(reference, whole), "tolerance": None, "frames": reference.shape[2]}]
    for stage in MG2_DECODE_STAGES:
        pipe = apply_stage(pipe, stage)
        out = pipe.decode_latents(parts)
        rows.append({"after stage": stage.name, "vs reference": rel_l2(out, reference),
                     "vs whole-sequence decode": rel_l2(out, whole), "tolerance": stage.part_tolerances["decode"],
                     "frames": out.shape[2]})
    df = pd.DataFrame(rows).set_index("after stage")
    df["within"] = ["" if pd.isna(t) else "yes" if e <= t else "NO"
                    for e, t in zip(df["vs reference"], df["tolerance"])]
    return df


__all__ = ["e2e_numbers", "e2e_cold_starts", "e2e_breakdown_figure", "stream_busy", "stream_timeline",
           "tiny_decode_errors", "E2E"]
