"""The T2V runner: the timed unit is one denoising step (the CFG evals + the scheduler step).

Built once per run: the official pipeline (offload on, random weights at real size or a checkpoint), T5 timed as
the offload path runs it and resident, the VAE decode of the workload's latent timed once. The timed step is a
steady step on the (first) expert: step index 1 (step 0 carries the expert upload with offload). With offload
and two experts, the expert-switch step is timed too and the trace holds a normal step and the switch step.
"""

from __future__ import annotations

import gc

import torch

from ..configs import get_config, num_tokens
from ..measure import cuda_time_ms, rel_l2, summarize, time_once_ms
from ..stages import stage_order
from .flops import kernel_floor_s, wan_eval_flops
from .microbench import measure_ceilings
from .records import gib

PROMPT = "A cat in a tiny astronaut suit walks across the surface of the moon, slow dolly shot, golden rim light"
CFG_EVALS = 2  # every step evaluates the DiT on the prompt and on the negative prompt


def attention_backend_of(model: torch.nn.Module) -> str | None:
    """The kernel the model's attention layers run (what a stage set, or the reference's default)."""
    return next((m.attn_backend for m in model.modules() if hasattr(m, "attn_backend")), None)


class T2VRunner:
    unit = "one denoising step"
    summary_keys = ("projection",)

    def __init__(self, workload, checkpoint=None, seed: int = 0):
        self.workload, self.checkpoint, self.seed = workload, checkpoint, seed
        self.config = get_config(workload.config)
        self.tokens = num_tokens(self.config, workload.size, workload.frame_num)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.pipe = None
        self.box: dict = {}
        order = [s.apply for s in stage_order(workload.name)]
        default = [s.apply for s in stage_order()]
        # an order that batches CFG later than the default (A14B): record whether it would fit earlier
        self.batching_deferred = order != default
        self.batching_attempted = False

    # -- what the harness asks ---------------------------------------------------------------------------------

    def describe(self) -> dict:
        return {"config": self.config.name, "tokens": self.tokens, "peers": {}}

    def shapes(self) -> dict:
        d = self.config.dit
        return {"tokens": self.tokens, "cfg_batch": CFG_EVALS, "dim": d.dim, "ffn_dim": d.ffn_dim,
                "heads": d.num_heads, "head_dim": d.head_dim, "text_len": d.text_len}

    def measure_ceilings(self) -> dict:
        d = self.config.dit
        return measure_ceilings(self.workload.name, d.num_heads, self.tokens, self.tokens, d.head_dim,
                                cross_len=d.text_len)

    def build(self, summary: dict):
        from ..pipelines.t2v import WanT2V

        pipe = WanT2V(self.config, checkpoint_dir=self.checkpoint, device=self.device, offload=True, seed=self.seed)
        self.pipe = pipe
        # T5 as the official offload path runs it (to the GPU and back), then resident
        box = {}
        summary["t5_encode_offload_ms"] = time_once_ms(lambda: box.update(ctx=pipe.encode_prompt(PROMPT)))
        self.context, self.context_null = box["ctx"]
        pipe.text_encoder.to(self.device)
        pipe.offload = False
        pipe.encode_prompt(PROMPT)
        summary["t5_encode_resident_ms"] = summarize(cuda_time_ms(lambda: pipe.encode_prompt(PROMPT), repeats=3))
        pipe.offload = True
        pipe.text_encoder.to("cpu")
        self.timesteps = self.state_at(0).timesteps.tolist()
        summary["timesteps"] = self.timesteps
        self.normal_index = 1
        c = self.config
        self.switch_index = next((i for i, t in enumerate(self.timesteps)
                                  if c.num_experts == 2 and t < c.boundary * c.num_train_timesteps), None)
        summary["vae_decode_ms"] = self.vae_decode_ms()

    def apply(self, stage, options: dict):
        from ..stages import apply_stage

        self.pipe = apply_stage(self.pipe, stage, options)
        if self.batching_deferred and not self.batching_attempted and not self.pipe.offload \
                and not self.pipe.batch_cfg:
            self.batching_attempted = True
            self.reference_batching = self.try_batched_reference()

    def apply_function(self, fn):
        self.pipe = fn(self.pipe)

    def prepare(self):
        self.box["state"] = self.state_at(self.normal_index)

    def unit_call(self):
        self.pipe.denoise_step(self.box["state"])

    def outputs(self) -> dict:
        state = self.state_at(self.normal_index)
        self.pipe.denoise_step(state)
        return {"velocity": state.velocity.detach().clone(), "latents": state.latents.detach().clone()}

    def errors(self, out, base, against: str = "00_baseline") -> dict:
        metric = (f"relative L2 of the guided velocity v_u + g(v_c - v_u) of one step, vs {against} on the same "
                  "inputs")
        if out is None:
            return {"metric": metric, "value": None, "latents_relative_l2": None}
        return {"metric": metric, "value": rel_l2(out["velocity"], base["velocity"]),
                "latents_relative_l2": rel_l2(out["latents"], base["latents"])}

    def fingerprint(self) -> list[float]:
        """A cheap check that every rank of a torchrun world built the same pipeline: sums of a few weights of each
        expert (first, middle, last tensor), of the text contexts and of the step's noise."""
        sums = []
        for model in self.pipe.experts.values():
            params = list(model.parameters())
            sums += [params[i].detach().double().sum().item() for i in (0, len(params) // 2, -1)]
        state = self.state_at(self.normal_index)
        return sums + [t.double().sum().item() for t in (self.context, self.context_null, state.latents)]

    def eval_flops(self) -> dict:
        model = next(iter(self.pipe.experts.values()))
        inner = getattr(model, "model", model)  # GraphedDiT wraps the model
        per_token = bool(getattr(inner, "per_token_time", False)) and type(inner).__name__ == "WanModel"
        return wan_eval_flops(self.config.dit, self.tokens, per_token)

    def flops(self) -> dict:
        e = self.eval_flops()
        return {"per_unit": CFG_EVALS * e["total"], "flops_per_eval": e}

    def floor_s(self, ceil: dict) -> float:
        return CFG_EVALS * kernel_floor_s(self.eval_flops(), ceil["gemm_tflops"],
                                          ceil["attention"][ceil["attention_backend"]])

    def unit_description(self) -> str:
        p = self.pipe
        return (self.workload.step + (" (batched: one forward of batch 2)" if p.batch_cfg else
                                      " (two sequential forwards)")
                + ("; offload on: one expert resident" if p.offload else "; both experts resident")
                + (f"; the sequence sharded over {p.world_size} {'GPUs' if self.device == 'cuda' else 'processes'}"
                   if getattr(p, "world_size", 1) > 1 else ""))

    def extras(self, stage, m: dict, summary: dict) -> dict:
        p = self.pipe
        x = {"step_index": self.normal_index, "timestep": self.timesteps[self.normal_index],
             "eval_ms": m["timing"]["median"] / CFG_EVALS,
             "attention_backend_used": attention_backend_of(next(iter(p.experts.values())))}
        if p.offload:
            x["first_step_with_upload_ms"] = m["warmup_ms"]
        if p.offload and self.switch_index is not None and torch.cuda.is_available():
            def switch_setup():
                p.prepare_expert("high_noise")
                self.box["state"] = self.state_at(self.switch_index)
            n = 2 if m["timing"]["median"] < 20000 else 1
            x["switch_step"] = summarize(cuda_time_ms(self.unit_call, setup=switch_setup, repeats=n))
            p.prepare_expert("high_noise")
        if getattr(self, "reference_batching", None) is not None:
            summary["batched_cfg_on_reference_numerics"] = self.reference_batching
        x["projection"] = self.project_video({**m, **x}, summary)
        return x

    def profile_plan(self):
        p = self.pipe
        if p.offload and self.switch_index is not None:
            start, active, profiled = self.switch_index - 2, 2, ["normal step", "expert-switch step"]
        else:
            start, active, profiled = max(self.normal_index - 1, 0), 1, ["normal step"]
        state = self.state_at(start)
        steps = [{"step_index": start + 1 + i, "what": w, "timestep": self.timesteps[start + 1 + i]}
                 for i, w in enumerate(profiled)]
        return active, lambda i: p.denoise_step(state), steps

    # -- T2V specifics -----------------------------------------------------------------------------------------

    def state_at(self, index: int):
        wl = self.workload
        state = self.pipe.prepare(self.context, self.context_null, size=wl.size, frame_num=wl.frame_num,
                                  seed=self.seed)
        state.step_index = index
        return state

    def vae_decode_ms(self) -> float:
        """Decode the workload's latent once (after a 2-frame warm-up decode), experts offloaded first as upstream."""
        self.pipe.offload_all()
        latents = self.state_at(0).latents
        self.pipe.decode(latents[:, :, :2])
        return time_once_ms(lambda: self.pipe.decode(latents))

    def try_batched_reference(self) -> dict:
        """Where the order batches CFG late: one batched step on the reference numerics with both experts resident,
        to record whether it fits (and its peak memory) or runs out of memory, in this run."""
        pipe = self.pipe
        self.prepare()
        pipe.batch_cfg = True
        on_gpu = torch.cuda.is_available()
        try:
            if on_gpu:
                torch.cuda.reset_peak_memory_stats()
            ms = time_once_ms(self.unit_call)
            result = {"fits": True, "step_ms": ms,
                      "peak_memory_gib": gib(torch.cuda.max_memory_allocated()) if on_gpu else None}
        except torch.OutOfMemoryError as exc:
            result = {"fits": False, "error": str(exc).split(" See documentation")[0][:600]}
        finally:
            pipe.batch_cfg = False
            self.box.clear()
            gc.collect()
            if on_gpu:
                torch.cuda.empty_cache()
        print(f"  batched CFG on the reference numerics: {result}", flush=True)
        return result

    def project_video(self, m: dict, summary: dict) -> dict:
        """A full video from numbers of this run: T5 + all steps (+ offload uploads and the switch) + VAE decode."""
        steps = self.config.sample_steps
        step_ms = m["timing"]["median"]
        offload = self.pipe.offload
        t5 = summary["t5_encode_offload_ms"] if offload else summary["t5_encode_resident_ms"]["median"]
        parts = {"t5_ms": t5, "steps_ms": steps * step_ms, "vae_ms": summary.get("vae_decode_ms")}
        if offload and "first_step_with_upload_ms" in m:
            parts["first_upload_ms"] = m["first_step_with_upload_ms"] - step_ms
        if offload and "switch_step" in m:
            parts["switch_extra_ms"] = m["switch_step"]["median"] - step_ms
        total = sum(v for v in parts.values() if v is not None)
        return {**parts, "total_s": total / 1e3, "steps": steps,
                "formula": "T5 + steps × step (+ first upload + switch overhead with offload) + VAE decode"}
