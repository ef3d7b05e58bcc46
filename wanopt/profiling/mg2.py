"""The Matrix-Game-2 runner: the timed unit is one steady-state block (the denoising evals + the cache-refresh
eval), DiT only.

Measured besides the block, in the same run: the first block of a video (an empty cache; the cross-attention K/V
computed here), each repeat from a fresh video; one DiT eval in the steady state (the same block position again:
upstream overwrites the same cache slots). The trace holds blocks 0, 1 and 2 of a fresh video (first block,
cache filling, steady state with eviction). The error compares, from a fixed seeded video, the x0 of a block made
after the window has evicted, and one eval's velocity at that point.
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
        for _ in self.pipe.stream(3, seed=self.seed):  # allocator, kernel heuristics, lazily built tables
            pass
        summary["evals_per_block"] = self.evals_per_block

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
                self.pipe.next_block(self.state)

    def unit_call(self):
        self.pipe.next_block(self.state)

    # -- error: a fixed video, after the window has evicted -------------------------------------------------------

    def outputs(self) -> dict:
        state = self.pipe.start(self.error_blocks, seed=self.seed + 1)
        for _ in range(self.error_blocks):
            x0 = self.pipe.next_block(state)
        v = self.eval_velocity(state)
        self.state = None
        return {"x0": x0.detach().float().clone(), "velocity": v.detach().float().clone()}

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
        if out is None:
            return {"metric": metric, "value": None, "eval_velocity_relative_l2": None}
        return {"metric": metric, "value": rel_l2(out["x0"], base["x0"]),
                "eval_velocity_relative_l2": rel_l2(out["velocity"], base["velocity"])}

    # -- FLOPs and floor ----------------------------------------------------------------------------------------

    def eval_flops(self) -> dict:
        return causal_eval_flops(self.config, self.f, self.window_frames)

    def flops(self) -> dict:
        e = self.eval_flops()
        return {"per_unit": self.evals_per_block * e["total"], "flops_per_eval": e}

    def floor_s(self, ceil: dict) -> float:
        return self.evals_per_block * kernel_floor_s(self.eval_flops(), ceil["gemm_tflops"],
                                                     ceil["attention"][ceil["attention_backend"]])

    def unit_description(self) -> str:
        return (f"one steady-state block: {self.evals_per_block - 1} denoising evals + 1 cache-refresh eval "
                f"({self.f * self.s} query tokens, {self.window_frames * self.s} keys), DiT only (no VAE decode)")

    def extras(self, stage, m: dict, summary: dict) -> dict:
        c, pipe = self.config, self.pipe
        box = {}

        def fresh():
            box["state"] = pipe.start(self.num_blocks, seed=self.seed)

        first = cuda_time_ms(lambda: pipe.next_block(box["state"]), setup=fresh, repeats=STEADY_REPEATS)
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
        return {
            **({"graph_capture_s": dict(graphs.capture_s)} if graphs is not None else {}),
            **({"cold_start": self.cold_start(stage, summary)} if stage.name in COLD_START_STAGES else {}),
            "first_block": {"timing": summarize(first), "keys": self.f * self.s,
                            "flops": self.evals_per_block * first_flops["total"] + clip_kv_once,
                            "video_frames": video_frames(c, 0),
                            "vs_steady_block": statistics.median(first) / m["timing"]["median"]},
            "eval": {"timing": summarize(evals), "flops": self.eval_flops()},
            "evals_per_block": self.evals_per_block,
            "cache_gib": gib(pipe.cache.nbytes()),
            "attention_backend_used": attention_backend_of(pipe.model),
            "video_frames_per_block": frames, "dit_fps": frames / block_s, "floor_fps": frames / floor_s,
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
                pipe.next_block(box["state"])
                box["state"] = pipe.start(self.num_blocks, seed=self.seed)
            else:
                pipe.next_block(box["state"])

        what = ["first block (empty cache)", "second block (cache filling)", "steady-state block (cache full, eviction)"]
        return 3, step, [{"iteration": i + 1, "block": i, "what": w} for i, w in enumerate(what)]
