"""The Matrix-Game-2 runner: the timed unit is one steady-state block (the denoising evals + the cache-refresh
eval): DiT only (`mg2-universal`), or end to end with the block's streaming VAE decode (`mg2-universal-e2e`).

Measured besides the block, in the same run: the first block of a video (an empty cache; the cross-attention K/V
computed here), each repeat from a fresh video; one DiT eval in the steady state (the same block position again:
upstream overwrites the same cache slots). The trace holds blocks 0, 1 and 2 of a fresh video (first block,
cache filling, steady state with eviction). The error compares, from a fixed seeded video, the x0 of a block made
after the window has evicted, and one eval's velocity at that point.

End to end, the block is `pipe.next_frames` (make the block, decode its 12 frames; with the decode overlapped, the
steady period of make block b + decode block b−1), the VAE is random at real size in fp16 as upstream runs it, and
the run also times the DiT alone and the decode alone on a steady block. Frames per second count as upstream's
profile print counts them: frames / (denoise + refresh + decode). The error gains a "decode" part: the frames
decoded from a fixed 3-block latent sequence against those of 00_baseline's reference decode (eager) in the run.
"""

from __future__ import annotations

import statistics

import torch

from ..configs import get_mg2_config
from ..measure import cuda_time_ms, rel_l2, summarize
from ..stages import apply_stage
from .flops import causal_eval_flops, kernel_floor_s
from .microbench import measure_ceilings
from .records import gib
from .t2v import attention_backend_of

STEADY_REPEATS = 10
PRELUDE_BLOCKS = 2  # blocks made before a steady block: the cache holds a full window from then on
COLD_START_STAGES = ("00_baseline", "07_cuda_graphs", "08_fold_refresh")  # measured in a fresh process each
E2E_COLD_START_STAGES = ("00_baseline", "12_decode_overlap")
DECODE_CHECK_BLOCKS = 3  # a first block (cache filling) and two steady ones
UPSTREAM_CLAIMED_FPS = 25.0  # Matrix-Game-2's README and abstract, GPU unstated


def video_frames(config, block: int) -> int:
    """Video frames the VAE makes from one block of latent frames: the first latent frame of a video gives 1, every
    later one `vae_time_compression_ratio` (upstream: block 0 gives 9 frames, every later block 12)."""
    f, r = config.num_frame_per_block, config.action.vae_time_compression_ratio
    return 1 + r * (f - 1) if block == 0 else r * f


class MG2Runner:
    unit = "one steady-state block"
    summary_keys = ("first_block", "eval", "dit_fps")

    def __init__(self, workload, checkpoint=None, seed: int = 0):
        self.workload, self.checkpoint, self.seed = workload, checkpoint, seed
        self.config = c = get_mg2_config(workload.config)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.f, self.s = c.num_frame_per_block, c.frame_seq_length
        self.window_frames = c.local_attn_size  # the KV cache keeps this many latent frames
        self.error_blocks = self.window_frames // self.f + 2  # the window has evicted by the last of these
        self.num_blocks = PRELUDE_BLOCKS + STEADY_REPEATS + 3
        self.pipe, self.state = None, None
        self.decode = workload.decode
        self.cold_start_stages = E2E_COLD_START_STAGES if self.decode else COLD_START_STAGES
        self.summary_keys = MG2Runner.summary_keys + (("e2e",) if self.decode else ())

    def describe(self) -> dict:
        return {"config": self.config.name, "query_tokens": self.f * self.s,
                "steady_keys": self.window_frames * self.s}

    def shapes(self) -> dict:
        c = self.config
        a = c.action
        return {"tokens": self.f * self.s, "keys": self.window_frames * self.s, "cfg_batch": 1, "dim": c.dim,
                "ffn_dim": c.ffn_dim, "heads": c.num_heads, "head_dim": c.head_dim, "text_len": c.clip_tokens,
                "frame_tokens": self.s, "frames": self.f, "window": self.window_frames, "action_heads": a.heads_num,
                "action_head_dim": a.keyboard_hidden_dim // a.heads_num, "mouse": a.enable_mouse}

    def measure_ceilings(self) -> dict:
        c = self.config
        return measure_ceilings(self.workload.name, c.num_heads, self.f * self.s, self.window_frames * self.s,
                                c.head_dim, cross_len=c.clip_tokens)

    def build(self, summary: dict):
        from ..pipelines.causal import CausalPipeline

        self.pipe = CausalPipeline(self.config, device=self.device, seed=self.seed, checkpoint=self.checkpoint)
        self.evals_per_block = len(self.pipe.timesteps) + 1
        if self.decode:
            self.attach_decoder(summary)
        for _ in (self.pipe.stream_frames if self.decode else self.pipe.stream)(3, seed=self.seed):
            pass  # allocator, kernel heuristics, lazily built tables
        summary["evals_per_block"] = self.evals_per_block

    def attach_decoder(self, summary: dict):
        """The Wan2.1 VAE at real size, random and seeded, in upstream's fp16 (fp32 on a CPU); the fixed latents of
        the decode check; the FLOPs of a steady decode, counted by torch's FlopCounterMode on one eager decode."""
        from torch.utils.flop_counter import FlopCounterMode

        from ..vae import StreamingDecoder, build_vae, mg2_vae_config

        dtype = torch.float16 if self.device == "cuda" else torch.float32
        vae = build_vae(mg2_vae_config(self.config.name), device=self.device, dtype=dtype, seed=self.seed + 200)
        self.pipe.attach_decoder(StreamingDecoder(vae))
        self.pipe.random_components = (*self.pipe.random_components, "vae")
        c, (h, w) = self.config, self.config.latent_hw
        gen = torch.Generator(device=self.device).manual_seed(self.seed + 2)
        latents = torch.randn(1, c.out_dim, DECODE_CHECK_BLOCKS * self.f, h, w, generator=gen, device=self.device)
        self.decode_blocks = list(latents.split(self.f, dim=2))
        dec = self.pipe.decoder
        dec.reset()
        dec.decode_block(self.decode_blocks[0])
        with FlopCounterMode(display=False) as counter:
            dec.decode_block(self.decode_blocks[1])
        self.decode_flops = counter.get_total_flops()
        summary["vae"] = {"dtype": str(dtype).removeprefix("torch."), "config": mg2_vae_config(self.config.name),
                          "flops_per_steady_block": self.decode_flops}

    def block(self, state):
        """The timed unit's work on one block: the DiT, end to end also its decode."""
        return self.pipe.next_frames(state) if self.decode else self.pipe.next_block(state)

    def apply(self, stage, options: dict):
        self.pipe = apply_stage(self.pipe, stage, options)
        self.state = None

    def apply_function(self, fn):
        self.pipe = fn(self.pipe)
        self.state = None

    # -- the timed unit: a steady block of one long video --------------------------------------------------------

    def prepare(self):
        if self.state is None or self.state.block >= self.state.num_blocks:
            self.state = self.pipe.start(self.num_blocks, seed=self.seed)
            for _ in range(PRELUDE_BLOCKS):
                self.block(self.state)

    def unit_call(self):
        self.block(self.state)

    # -- error: a fixed video, after the window has evicted -------------------------------------------------------

    def outputs(self) -> dict:
        state = self.pipe.start(self.error_blocks, seed=self.seed + 1)
        for _ in range(self.error_blocks):
            x0 = self.pipe.next_block(state)
        v = self.eval_velocity(state)
        self.state = None
        out = {"x0": x0.detach().float().clone(), "velocity": v.detach().float().clone()}
        if self.decode:
            out["frames"] = self.pipe.decode_latents(self.decode_blocks).float()
        return out

    @torch.no_grad()
    def eval_velocity(self, state) -> torch.Tensor:
        """One denoising eval at the last block made (its first timestep, its noise), the model's velocity."""
        start = (state.block - 1) * self.f
        cond = self.pipe.block_conditions(state, start)
        xt = state.noise[:, :, start:start + self.f]
        t = torch.ones([1, self.f], device=self.device, dtype=torch.int64) * self.pipe.timesteps[0]
        return self.pipe.velocity(xt, t, cond, start)

    def errors(self, out, base) -> dict:
        metric = (f"relative L2 of the x0 of block {self.error_blocks - 1} of a fixed video (the window has "
                  "evicted), vs 00_baseline")
        extra = {}
        if self.decode:
            decode = {"metric": f"relative L2 of the frames decoded from a fixed {DECODE_CHECK_BLOCKS}-block latent "
                      "sequence (a first block, then steady ones), vs 00_baseline's reference decode (eager, as "
                      "upstream; fp16 on a GPU)", "value": None if out is None else rel_l2(out["frames"], base["frames"])}
            extra = {"parts": {"decode": decode}}
        if out is None:
            return {"metric": metric, "value": None, "eval_velocity_relative_l2": None, **extra}
        return {"metric": metric, "value": rel_l2(out["x0"], base["x0"]),
                "eval_velocity_relative_l2": rel_l2(out["velocity"], base["velocity"]), **extra}

    # -- FLOPs and floor ----------------------------------------------------------------------------------------

    def eval_flops(self) -> dict:
        return causal_eval_flops(self.config, self.f, self.window_frames)

    def flops(self) -> dict:
        e = self.eval_flops()
        decode = {"decode_flops_per_block": self.decode_flops} if self.decode else {}
        return {"per_unit": self.evals_per_block * e["total"] + (self.decode_flops if self.decode else 0),
                "flops_per_eval": e, **decode}

    def dit_floor_s(self, ceil: dict) -> float:
        return self.evals_per_block * kernel_floor_s(self.eval_flops(), ceil["gemm_tflops"],
                                                     ceil["attention"][ceil["attention_backend"]])

    def decode_floor_s(self, ceil: dict) -> float:
        """The decode's convolution FLOPs at the GEMM ceiling: a lower bound (its norms and copies move bytes that
        this does not count)."""
        return self.decode_flops / (ceil["gemm_tflops"] * 1e12) if self.decode else 0.0

    def floor_s(self, ceil: dict) -> float:
        return self.dit_floor_s(ceil) + self.decode_floor_s(ceil)

    def unit_description(self) -> str:
        dit = (f"one steady-state block: {self.evals_per_block - 1} denoising evals + 1 cache-refresh eval "
               f"({self.f * self.s} query tokens, {self.window_frames * self.s} keys)")
        if not self.decode:
            return dit + ", DiT only (no VAE decode)"
        if self.pipe is not None and self.pipe.decode_overlap:
            return dit + (f" on the main stream while the previous block's VAE decode ({video_frames(self.config, 1)} "
                          "frames) runs on a second stream: one steady period")
        return dit + f", then its VAE decode ({video_frames(self.config, 1)} frames)"

    def extras(self, stage, m: dict, summary: dict) -> dict:
        c, pipe = self.config, self.pipe
        box = {}

        def fresh():
            box["state"] = pipe.start(self.num_blocks, seed=self.seed)

        first = cuda_time_ms(lambda: self.block(box["state"]), setup=fresh, repeats=STEADY_REPEATS)
        self.prepare()
        self.unit_call()
        evals = cuda_time_ms(lambda: self.eval_velocity(self.state), repeats=STEADY_REPEATS)
        self.state = None
        first_flops = causal_eval_flops(c, self.f, self.f)
        clip_kv_once = causal_eval_flops(c, self.f, self.f, cross_kv_cached=False)["total"] - first_flops["total"]
        block_s = m["timing"]["median"] / 1e3
        floor_s = m["kernel_floor_ms"] / 1e3
        frames = video_frames(c, 1)
        graphs = getattr(pipe, "graphs", None)
        e2e = self.end_to_end(m, summary) if self.decode else {}
        return {
            **e2e,
            **({"graph_capture_s": dict(graphs.capture_s)} if graphs is not None else {}),
            **({"cold_start": self.cold_start(stage, summary)} if stage.name in self.cold_start_stages else {}),
            "first_block": {"timing": summarize(first), "keys": self.f * self.s,
                            **({"includes": "its VAE decode (9 frames)"} if self.decode else {}),
                            "flops": self.evals_per_block * first_flops["total"] + clip_kv_once,
                            "video_frames": video_frames(c, 0),
                            "vs_steady_block": statistics.median(first) / m["timing"]["median"]},
            "eval": {"timing": summarize(evals), "flops": self.eval_flops()},
            "evals_per_block": self.evals_per_block,
            "cache_gib": gib(pipe.cache.nbytes()),
            "attention_backend_used": attention_backend_of(pipe.model),
            "video_frames_per_block": frames, "dit_fps": frames / block_s, "floor_fps": frames / floor_s,
        }

    def end_to_end(self, m: dict, summary: dict) -> dict:
        """The DiT alone and the decode alone on a steady block of this stage, and the frames per second."""
        pipe, c = self.pipe, self.config
        self.prepare()
        dit = cuda_time_ms(lambda: pipe.next_block(self.state), repeats=STEADY_REPEATS)
        self.state = None
        dec = pipe.decoder
        dec.reset()
        dec.decode_block(self.decode_blocks[0])  # a video's first block: the cache fills
        decode = cuda_time_ms(lambda: dec.decode_block(self.decode_blocks[1]), repeats=STEADY_REPEATS)
        ceil = summary["ceilings"]
        frames, block_s = video_frames(c, 1), m["timing"]["median"] / 1e3
        dit_ms, decode_ms = statistics.median(dit), statistics.median(decode)
        return {
            "e2e": {"fps": frames / block_s, "fps_counted_as": "video frames per block / (denoise + refresh + decode) "
                    "of one steady block, as upstream's profile print; overlapped: / one steady period",
                    "upstream_claimed_fps": UPSTREAM_CLAIMED_FPS,
                    "vs_upstream_claim": frames / block_s / UPSTREAM_CLAIMED_FPS,
                    "dit_block": summarize(dit), "decode_block": summarize(decode),
                    "sum_of_parts_ms": dit_ms + decode_ms, "overlapped": bool(pipe.decode_overlap),
                    "dit_floor_ms": self.dit_floor_s(ceil) * 1e3, "decode_floor_ms": self.decode_floor_s(ceil) * 1e3,
                    "decode_flops_per_block": self.decode_flops},
        }

    def cold_start(self, stage, summary: dict) -> dict:
        """Process start to block 0 out in a fresh process with the stages applied so far and the options this run
        chose (wanopt.profiling.cold_start)."""
        from ..stages import stages_up_to
        from .cold_start import cold_start

        names = [s.name for s in stages_up_to(stage.name, self.workload.name)]
        options = {n: c["options"] for n, c in summary.get("choices", {}).items() if n in names}
        return cold_start(self.workload.name, names, options, self.seed, self.checkpoint)

    def profile_plan(self):
        pipe, box = self.pipe, {}

        def step(i):
            if i == 0:  # warm-up (discarded by the profiler): a throwaway block, then a fresh video
                box["state"] = pipe.start(self.num_blocks, seed=self.seed)
                self.block(box["state"])
                box["state"] = pipe.start(self.num_blocks, seed=self.seed)
            else:
                self.block(box["state"])

        what = ["first block (empty cache)", "second block (cache filling)", "steady-state block (cache full, eviction)"]
        return 3, step, [{"iteration": i + 1, "block": i, "what": w} for i, w in enumerate(what)]
